"""What the ESP event inbox holds about one person, for the subscribers app's privacy export and erasure.

Registered as the "events" contributor in WebhooksConfig.ready() (subscribers.personal_data explains why).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet, Value
from django.db.models.functions import Replace

from core.addresses import address_hash, normalize_email
from delivery.models import Message
from webhooks.models import EspEvent


def _events(address: str) -> QuerySet[EspEvent]:
    """Events naming the address, and events without a recipient about a message to it."""
    message_ids = Message.objects.filter(to_email=address).values("pk")
    return EspEvent.objects.filter(Q(recipient=address) | Q(recipient="", mailer_message_id__in=message_ids))


def esp_events_export(*, email: str) -> list[dict[str, Any]]:
    """The person's events, oldest first, with every field the erasure blanks except the raw payload, which
    repeats them in the ESP's own format."""
    events = _events(normalize_email(email)).order_by("occurred_at", "pk")
    return [
        {
            "type": event.event_type,
            "occurred_at": event.occurred_at.isoformat(),
            "esp": event.esp,
            "url": event.click_url,
            "user_agent": event.user_agent,
            "description": event.description,
            "mta_response": event.mta_response,
        }
        for event in events
    ]


def esp_events_erase(*, email: str) -> int:
    """Blank what an event says about the person; the event itself stays (type, time, ESP, outcome), so that
    delivery figures and provider reputation keep counting it.

    SES dedupe keys contain the recipient: it is replaced by its hash, which keeps each key unique.
    """
    address = normalize_email(email)
    return _events(address).update(
        recipient="",
        user_agent="",
        click_url="",
        mta_response="",
        description="",
        payload={},
        dedupe_key=Replace("dedupe_key", Value(address), Value(address_hash(address))),
    )
