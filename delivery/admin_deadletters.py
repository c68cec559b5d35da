"""Admin for the dead-letter list and the attempt log: actions call the same services as `manage.py deadletters`."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import truncatechars

from core.exceptions import ApplicationError
from delivery.models import DeadLetter, Mailing, Message, SendAttempt
from delivery.services import deadletters_discard, deadletters_retry


class SendAttemptInline(admin.TabularInline):
    """Each try at handing the message to a provider, oldest first. A record: nobody edits it."""

    model = SendAttempt
    fields = ["started_at", "finished_at", "provider", "outcome", "error", "esp_message_id"]
    readonly_fields = fields
    ordering = ["started_at", "pk"]
    extra = 0
    can_delete = False
    verbose_name = "send attempt"
    verbose_name_plural = "send attempts"

    def get_queryset(self, request: HttpRequest) -> QuerySet[SendAttempt]:
        return super().get_queryset(request).select_related("provider")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class DeadLetterMailingFilter(admin.SimpleListFilter):
    """Only the mailings that have dead letters: a filter listing every mailing ever sent would be useless."""

    title = "mailing"
    parameter_name = "mailing"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        ids = DeadLetter.objects.order_by("-mailing_id").values_list("mailing_id", flat=True).distinct()[:50]
        return [(str(m.pk), str(m)) for m in Mailing.objects.filter(pk__in=list(ids)).order_by("-pk")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(mailing_id=value) if value and value.isdigit() else queryset


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["to_email", "mailing", "provider", "attempts", "last_error_short", "updated_at"]
    list_filter = [DeadLetterMailingFilter, "provider"]
    search_fields = ["to_email"]
    list_select_related = ["mailing", "provider"]
    ordering = ["-updated_at", "-pk"]
    readonly_fields = [f.name for f in Message._meta.fields]
    inlines = [SendAttemptInline]
    actions = ["retry", "discard"]
    show_full_result_count = False

    @admin.display(description="last error")
    def last_error_short(self, obj: Message) -> str:
        return truncatechars(obj.last_error, 120)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # nothing vanishes: "Discard" ends a message `failed` and keeps it

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # The list and its actions need the change permission; one message's page is a read-only record.
        return obj is None and super().has_change_permission(request)

    @admin.action(description="Retry: back to the queue with fresh attempts", permissions=["change"])
    def retry(self, request: HttpRequest, queryset: QuerySet) -> None:
        try:
            result = deadletters_retry(message_ids=list(queryset.values_list("pk", flat=True)))
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        mailings = len(result.mailing_ids)
        text = f"{result.requeued} message(s) back in the queue; sending started for {mailings} mailing(s)."
        if result.suppressed:
            text += f" {result.suppressed} ended suppressed instead: their address is on the suppression list."
        self.message_user(request, text, messages.SUCCESS)

    @admin.action(description="Discard: end them failed", permissions=["change"])
    def discard(self, request: HttpRequest, queryset: QuerySet) -> None:
        try:
            count = deadletters_discard(message_ids=list(queryset.values_list("pk", flat=True)))
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        self.message_user(request, f"{count} message(s) discarded; they stay in the list of messages as failed.")
