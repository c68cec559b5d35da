from collections.abc import Iterator

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.http import content_disposition_header

from subscribers.models import MailingList, Subscriber, Subscription
from subscribers.services import subscribers_export_csv


def _csv_download(blocks: Iterator[str], name: str) -> StreamingHttpResponse:
    """Streamed as the export produces it: memory stays flat whatever the number of rows."""
    filename = f"subscribers-{name}-{timezone.now():%Y%m%d}.csv"
    return StreamingHttpResponse(
        blocks,
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": content_disposition_header(as_attachment=True, filename=filename)},
    )


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    extra = 0
    raw_id_fields = ["subscriber"]
    fields = ["mailing_list", "subscriber", "status", "source", "unsubscribed_at", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(Subscriber)
class SubscriberAdmin(admin.ModelAdmin):
    list_display = ["email", "name", "status", "created_at"]
    list_filter = ["status", "lists"]
    search_fields = ["email", "name"]
    inlines = [SubscriptionInline]
    show_full_result_count = False
    actions = ["export_selected_csv"]

    @admin.action(description="Export selected as CSV")
    def export_selected_csv(self, request, queryset):
        return _csv_download(subscribers_export_csv(subscribers=queryset), "selected")


@admin.register(MailingList)
class MailingListAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "active_count", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    actions = ["export_subscribers_csv"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(_active=Count("subscriptions", filter=Q(subscriptions__status=Subscription.Status.ACTIVE)))
        )

    @admin.display(description="Active subscribers", ordering="_active")
    def active_count(self, obj: MailingList) -> int:
        return obj._active

    @admin.action(description="Export subscribers as CSV")
    def export_subscribers_csv(self, request, queryset):
        lists = list(queryset[:2])
        if len(lists) != 1:
            self.message_user(request, "Choose exactly one list to export.", messages.ERROR)
            return None
        return _csv_download(subscribers_export_csv(mailing_list=lists[0]), lists[0].slug)


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["subscriber", "mailing_list", "status", "source", "created_at"]
    list_filter = ["status", "mailing_list"]
    search_fields = ["subscriber__email"]
    raw_id_fields = ["subscriber"]
    list_select_related = ["subscriber", "mailing_list"]
