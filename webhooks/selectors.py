"""Reads of the ESP event inbox: a message's and a person's timeline, and the counts the admin shows."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from webhooks.models import EspEvent

TIMELINE_LENGTH = 100


def _latest_first_reversed(query: QuerySet[EspEvent], limit: int) -> list[EspEvent]:
    """The `limit` latest events, oldest first (a timeline reads forward; a long one shows its recent end)."""
    return list(reversed(query.order_by("-occurred_at", "-pk")[:limit]))


def esp_events_for_message(*, message_id: int, limit: int = TIMELINE_LENGTH) -> list[EspEvent]:
    """What the ESPs reported about one message, oldest first: the events naming it in their metadata, and, once
    applied, those found by the ESP's message id and the recipient (the apply records the message it found)."""
    return _latest_first_reversed(EspEvent.objects.filter(mailer_message_id=message_id), limit)


def esp_events_for_recipient(*, email: str, limit: int = TIMELINE_LENGTH) -> list[EspEvent]:
    """What the ESPs reported about one address, across all its messages, oldest first."""
    return _latest_first_reversed(EspEvent.objects.filter(recipient=email.strip().lower()), limit)


def esp_events_count_for_message(*, message_id: int) -> int:
    return EspEvent.objects.filter(mailer_message_id=message_id).count()


def esp_events_count_for_recipient(*, email: str) -> int:
    return EspEvent.objects.filter(recipient=email.strip().lower()).count()


def esp_events_orphan_count(*, since: datetime | None = None) -> int:
    """Events applied without a message of ours (unknown message ids, mail not sent by Mailer): few, and counted
    from their own small index."""
    query = EspEvent.objects.filter(is_orphan=True)
    if since is not None:
        query = query.filter(occurred_at__gte=since)
    return query.count()


def esp_events_unapplied_count() -> int:
    """Events stored and not applied yet (waiting for a worker, or for their message's send to be recorded)."""
    return EspEvent.objects.filter(applied_at=None).count()
