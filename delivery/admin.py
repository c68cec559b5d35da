from django.contrib import admin

from delivery.models import Mailing, Message, Provider, Suppression


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "is_enabled", "priority", "updated_at"]
    list_filter = ["kind", "is_enabled"]
    list_editable = ["is_enabled", "priority"]
    search_fields = ["name"]


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    list_display = ["email", "reason", "source", "created_at"]
    list_filter = ["reason", "source"]
    search_fields = ["email"]
    date_hierarchy = "created_at"


@admin.register(Mailing)
class MailingAdmin(admin.ModelAdmin):
    list_display = ["__str__", "kind", "from_email", "provider", "created_at"]
    list_filter = ["kind", "provider"]
    search_fields = ["name", "subject_template", "from_email"]
    readonly_fields = [f.name for f in Mailing._meta.fields]

    def has_add_permission(self, request) -> bool:  # mailings are frozen by whoever sends them, not typed in
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["to_email", "mailing", "status", "provider", "attempts", "sent_at", "delivered_at", "last_error"]
    list_filter = ["status", "provider", "mailing__kind"]
    search_fields = ["to_email", "esp_message_id"]
    list_select_related = ["mailing", "provider"]
    raw_id_fields = ["mailing"]
    readonly_fields = [f.name for f in Message._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:  # messages are made by mailings, not by hand
        return False
