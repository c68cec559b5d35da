"""The ESP event inbox in the admin, and the event timelines on the Message and Subscriber pages.

Neither delivery nor subscribers may know about webhooks, so their admin pages cannot show events themselves. This
module, which may import both, registers their admins again with one more read-only field: the timeline of what
the ESPs reported (the latest events, oldest first, and a link to all of them in the event list, filtered).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from delivery.admin import MessageAdmin
from delivery.models import Message
from subscribers.admin import SubscriberAdmin
from subscribers.models import Subscriber
from webhooks.models import EspEvent
from webhooks.selectors import (
    esp_events_count_for_message,
    esp_events_count_for_recipient,
    esp_events_for_message,
    esp_events_for_recipient,
    esp_events_orphan_count,
    esp_events_unapplied_count,
)


@admin.register(EspEvent)
class EspEventAdmin(admin.ModelAdmin):
    list_display = [
        "occurred_at",
        "esp",
        "event_type",
        "recipient",
        "is_hard_bounce",
        "is_soft_bounce",
        "is_machine_open",
        "is_orphan",
        "applied_at",
        "outcome",
    ]
    list_filter = [
        "esp",
        "event_type",
        "is_orphan",
        "is_hard_bounce",
        "is_soft_bounce",
        "is_machine_open",
        ("applied_at", admin.EmptyFieldListFilter),
    ]
    search_fields = ["recipient", "esp_message_id", "dedupe_key"]
    readonly_fields = [f.name for f in EspEvent._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        orphans, waiting = esp_events_orphan_count(), esp_events_unapplied_count()
        subtitle = f"{orphans:,} orphans (events for no message of ours); {waiting:,} not applied yet"
        return super().changelist_view(request, {**(extra_context or {}), "subtitle": subtitle})


def _timeline(events: Sequence[EspEvent], total: int, filter_query: dict[str, Any]) -> str:
    if not events:
        return "No ESP events."
    flags = {
        "is_hard_bounce": "hard bounce",
        "is_soft_bounce": "soft bounce",
        "is_machine_open": "machine open",
        "is_orphan": "orphan",
    }
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                f"{event.occurred_at:%Y-%m-%d %H:%M:%S}",
                event.esp,
                reverse("admin:webhooks_espevent_change", args=[event.pk]),
                event.event_type,
                ", ".join(label for flag, label in flags.items() if getattr(event, flag)),
                event.outcome or "not applied yet",
                (event.click_url or event.mta_response or event.description)[:120],
            )
            for event in events
        ),
    )
    everything = reverse("admin:webhooks_espevent_changelist") + "?" + urlencode(filter_query)
    return format_html(
        '<table class="mailer-timeline"><thead><tr><th>When (UTC)</th><th>ESP</th><th>Event</th><th>Flags</th>'
        "<th>Outcome</th><th>Detail</th></tr></thead><tbody>{}</tbody></table>"
        '<p><a href="{}">All {} events</a> (this shows the latest {}).</p>',
        rows,
        everything,
        total,
        len(events),
    )


class MessageWithEventsAdmin(MessageAdmin):
    readonly_fields = [*MessageAdmin.readonly_fields, "esp_events"]

    @admin.display(description="ESP events")
    def esp_events(self, obj: Message) -> str:
        return _timeline(
            esp_events_for_message(message_id=obj.pk),
            esp_events_count_for_message(message_id=obj.pk),
            {"mailer_message_id": obj.pk},
        )


class SubscriberWithEventsAdmin(SubscriberAdmin):
    readonly_fields = [*SubscriberAdmin.readonly_fields, "esp_events"]

    @admin.display(description="ESP events")
    def esp_events(self, obj: Subscriber) -> str:
        if obj.pk is None:
            return "—"
        return _timeline(
            esp_events_for_recipient(email=obj.email),
            esp_events_count_for_recipient(email=obj.email),
            {"recipient": obj.email},
        )


for model, model_admin in ((Message, MessageWithEventsAdmin), (Subscriber, SubscriberWithEventsAdmin)):
    admin.site.unregister(model)
    admin.site.register(model, model_admin)
