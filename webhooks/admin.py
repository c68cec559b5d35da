from django.contrib import admin

from webhooks.models import EspEvent


@admin.register(EspEvent)
class EspEventAdmin(admin.ModelAdmin):
    list_display = ["occurred_at", "esp", "event_type", "recipient", "is_hard_bounce", "applied_at", "outcome"]
    list_filter = ["esp", "event_type", "is_hard_bounce", ("applied_at", admin.EmptyFieldListFilter)]
    search_fields = ["recipient", "esp_message_id", "dedupe_key"]
    readonly_fields = [f.name for f in EspEvent._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False
