"""webhooks: the ESPs' reports — stored durably and idempotently in the EspEvent inbox, then applied to
delivery (message status, suppression) and subscribers (cleaning, unsubscribes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from anymail.signals import AnymailTrackingEvent
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from delivery.models import Message, Suppression
from delivery.selectors import suppression_is_erased
from delivery.services import message_status_apply, suppression_add
from subscribers.models import Subscriber
from subscribers.services import engagement_event_record, subscriber_clean, subscriber_unsubscribe
from webhooks.classification import dedupe_key, is_hard_bounce
from webhooks.models import EspEvent
from webhooks.privacy import esp_events_erase

logger = logging.getLogger(__name__)

PAYLOAD_MAX_BYTES = 16_384
# An event for a message whose send is not recorded yet waits, so that the record cannot overwrite it;
# after this long it is applied anyway.
PENDING_MESSAGE_GRACE = timedelta(minutes=30)

EVENT_STATUS = {
    "delivered": Message.Status.DELIVERED,
    "bounced": Message.Status.BOUNCED,
    "complained": Message.Status.COMPLAINED,
    "rejected": Message.Status.FAILED,
    "failed": Message.Status.FAILED,
    "opened": "opened",
    "clicked": "clicked",
}
ENGAGEMENT_KIND = {"opened": "open", "clicked": "click"}


def _payload(esp_event: Any) -> dict[str, Any]:
    try:
        text = json.dumps(esp_event, default=str)
    except (TypeError, ValueError):
        text = json.dumps(str(esp_event))
    if len(text) > PAYLOAD_MAX_BYTES:
        return {"truncated": True, "head": text[:PAYLOAD_MAX_BYTES]}
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def esp_event_record(*, esp: str, event: AnymailTrackingEvent) -> None:
    """Store one tracking event; the same event stored twice is kept once (the insert skips a known key)."""
    esp_event = event.esp_event if isinstance(event.esp_event, dict) else {}
    occurred_at = event.timestamp or timezone.now()
    recipient = (event.recipient or "").strip().lower()
    metadata = event.metadata or {}
    row = EspEvent(
        esp=esp,
        dedupe_key=dedupe_key(
            esp, event.event_id, event.event_type, recipient, event.message_id, occurred_at.isoformat(), esp_event
        ),
        event_type=event.event_type or "unknown",
        recipient=recipient[:254],
        esp_message_id=str(event.message_id or "")[:255],
        mailer_message_id=_int_or_none(metadata.get("mailer_msg")),
        is_hard_bounce=is_hard_bounce(esp, event.event_type, esp_event, event.reject_reason),
        occurred_at=occurred_at,
        description=(event.description or "")[:2000],
        mta_response=(event.mta_response or "")[:2000],
        click_url=(event.click_url or "")[:2000],
        user_agent=(event.user_agent or "")[:1000],
        payload=_payload(event.esp_event),
    )
    EspEvent.objects.bulk_create([row], ignore_conflicts=True)
    transaction.on_commit(esp_events_apply_soon)


APPLY_REQUESTED_KEY = "webhooks:apply-requested"
# Should the queued task be lost, the flag lapses after this long; beat's periodic apply covers the gap.
APPLY_REQUESTED_TTL = 15


def esp_events_apply_soon() -> None:
    """Ask a worker to apply stored events: one task in the queue at a time, however many events arrive.

    The flag is cleared by the task before it reads (esp_events_apply_task), so an event stored after that
    read always finds the flag gone and queues the next run: no event is left waiting for the beat.
    """
    from webhooks.tasks import esp_events_apply_task

    if cache.add(APPLY_REQUESTED_KEY, 1, timeout=APPLY_REQUESTED_TTL):
        esp_events_apply_task.delay()


def _find_message(event: EspEvent) -> Message | None:
    if event.mailer_message_id is not None:
        message = Message.objects.filter(pk=event.mailer_message_id).first()
        if message is not None and (not event.recipient or message.to_email == event.recipient):
            return message
    if event.esp_message_id:
        return Message.objects.filter(esp_message_id=event.esp_message_id, to_email=event.recipient).first()
    return None


def esp_event_apply(event: EspEvent) -> str:
    """Apply one stored event; returns what was done. Applying the same event twice changes nothing."""
    message = _find_message(event)
    if message is not None and message.status in Message.PENDING_STATUSES:
        if timezone.now() - event.received_at < PENDING_MESSAGE_GRACE:
            return ""  # try again later, once the send is recorded
    if message is None and event.recipient and suppression_is_erased(email=event.recipient):
        # A late report about someone erased since: their messages no longer carry the address, and this
        # event must not keep it either. Their suppression (by hash) already covers any bounce or complaint.
        esp_events_erase(email=event.recipient)
        return "erased"
    outcome = []
    status = EVENT_STATUS.get(event.event_type)
    if message is not None and event.event_type in ENGAGEMENT_KIND:
        kind = ENGAGEMENT_KIND[event.event_type]
        first = getattr(message, "opened_at" if kind == "open" else "clicked_at") is None
        if engagement_event_record(
            email=message.to_email, kind=kind, occurred_at=event.occurred_at, is_first_for_message=first
        ):
            outcome.append(f"engagement {kind}")
    if message is not None and status is not None:
        if message_status_apply(
            message=message, status=status, occurred_at=event.occurred_at, error=event.mta_response or event.description
        ):
            outcome.append(f"message {status}")
    elif message is None:
        outcome.append("orphan")
    if event.recipient:
        if event.is_hard_bounce:
            suppression_add(
                email=event.recipient,
                reason=Suppression.Reason.HARD_BOUNCE,
                source=f"webhook:{event.esp}",
                detail=event.mta_response or event.description,
            )
            subscriber_clean(email=event.recipient, reason=Suppression.Reason.HARD_BOUNCE)
            outcome.append("suppressed")
        elif event.event_type == "complained":
            suppression_add(
                email=event.recipient,
                reason=Suppression.Reason.COMPLAINT,
                source=f"webhook:{event.esp}",
                detail=event.description,
            )
            subscriber_clean(email=event.recipient, reason=Suppression.Reason.COMPLAINT)
            outcome.append("suppressed")
        elif event.event_type == "unsubscribed":
            subscriber = Subscriber.objects.filter(email=event.recipient).first()
            if subscriber is not None:
                subscriber_unsubscribe(subscriber=subscriber, list_ids=None, source=f"webhook:{event.esp}")
            outcome.append("unsubscribed")
    return ", ".join(outcome) or "no change"


@dataclass
class ApplyResult:
    applied: int = 0
    waiting: int = 0  # events whose message's send is not recorded yet; apply again shortly


def esp_events_apply(*, limit: int = 1000) -> ApplyResult:
    """Apply stored events in order of occurrence. Safe in several workers at once."""
    result = ApplyResult()
    with transaction.atomic():
        query = EspEvent.objects.filter(applied_at=None).order_by("occurred_at", "pk")
        if connection.features.has_select_for_update_skip_locked:
            query = query.select_for_update(skip_locked=True)
        now = timezone.now()
        for event in query[:limit]:
            outcome = esp_event_apply(event)
            if not outcome:
                result.waiting += 1
                continue
            event.applied_at = now
            event.outcome = outcome[:100]
            event.save(update_fields=["applied_at", "outcome"])
            result.applied += 1
    return result
