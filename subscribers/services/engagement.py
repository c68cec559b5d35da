"""Engagement: per-subscriber counters and the decayed 0-100 score (subscribers.engagement holds the formula).

Opens and clicks arrive as ESP events (the webhooks app calls engagement_event_record as it applies them);
sends are counted once per campaign, set-wise, when the campaign finishes (engagement_sent_record).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.utils import timezone

from core.addresses import normalize_email
from core.bulk import rows_update
from delivery.models import Message
from subscribers.engagement import POINTS, anchor_after
from subscribers.models import Subscriber

# Messages that left for the recipient's mailbox, whatever the ESP reported afterwards.
SENT_STATUSES = (Message.Status.SENT, Message.Status.DELIVERED, Message.Status.BOUNCED, Message.Status.COMPLAINED)


@dataclass(frozen=True)
class EngagementEvent:
    """An open or a click ("open" / "click") of one message, by whoever has that address."""

    email: str
    kind: str
    occurred_at: datetime
    is_first_for_message: bool


_FIELDS = ("sent_since_open", "last_open_at", "last_click_at", "open_count", "click_count", "score_anchor")


@dataclass(slots=True)
class _Engagement:
    """A subscriber's engagement fields, as read and written here (a batch reads thousands: no model instances)."""

    id: int
    email: str
    sent_since_open: int
    last_open_at: datetime | None
    last_click_at: datetime | None
    open_count: int
    click_count: int
    score_anchor: float | None


def _engagement_apply(subscriber: _Engagement, event: EngagementEvent) -> None:
    # Either kind shows the mail was read: a click with images blocked is still a reader.
    subscriber.sent_since_open = 0
    stamp = "last_open_at" if event.kind == "open" else "last_click_at"
    latest = getattr(subscriber, stamp)
    if latest is None or event.occurred_at > latest:
        setattr(subscriber, stamp, event.occurred_at)
    if event.is_first_for_message:
        counter = "open_count" if event.kind == "open" else "click_count"
        setattr(subscriber, counter, getattr(subscriber, counter) + 1)
        subscriber.score_anchor = anchor_after(subscriber.score_anchor, points=POINTS[event.kind], at=event.occurred_at)


@transaction.atomic
def engagement_events_record(*, events: Sequence[EngagementEvent]) -> set[str]:
    """Count opens and clicks, in the order given, for the subscribers with those addresses; returns the
    (normalized) addresses that belong to a subscriber. Two statements, however many events.

    Counters and points go by message (the first open of a message counts, reopening it does not), so the
    score measures interest in what was sent rather than how often one mail was looked at; the last-open and
    last-click stamps move to the latest event whatever its order of arrival. Give the events in the order they
    happened: each one's points are added to the score as it stood then.
    """
    for event in events:
        if event.kind not in POINTS:
            raise ValueError(f"unknown engagement kind {event.kind!r}")
    emails = {normalize_email(event.email) for event in events}
    if not emails:
        return set()
    rows = Subscriber.objects.select_for_update().filter(email__in=emails).order_by("pk")
    subscribers = {row[1]: _Engagement(*row) for row in rows.values_list("pk", "email", *_FIELDS)}
    for event in events:
        subscriber = subscribers.get(normalize_email(event.email))
        if subscriber is not None:
            _engagement_apply(subscriber, event)
    rows_update(model=Subscriber, objects=list(subscribers.values()), fields=_FIELDS, touch="updated_at")
    return set(subscribers)


def engagement_event_record(*, email: str, kind: str, occurred_at: datetime, is_first_for_message: bool) -> bool:
    """One open or click (engagement_events_record has the rules). Returns whether a subscriber was found."""
    event = EngagementEvent(email=email, kind=kind, occurred_at=occurred_at, is_first_for_message=is_first_for_message)
    return bool(engagement_events_record(events=[event]))


def engagement_sent_record(*, mailing_id: int) -> int:
    """Count one send for every subscriber the mailing reached; call it once, when the mailing is finished.

    `sent_since_open` goes up only for those who have not opened or clicked this very mailing yet: events
    can be applied before the campaign is closed, and an early open must not be undone. Returns the number
    of subscribers updated.
    """
    reached = Message.objects.filter(mailing_id=mailing_id, status__in=SENT_STATUSES)
    engaged = Exists(
        reached.filter(to_email=OuterRef("email")).filter(Q(opened_at__isnull=False) | Q(clicked_at__isnull=False))
    )
    now = timezone.now()
    return Subscriber.objects.filter(email__in=reached.values("to_email")).update(
        sent_count=F("sent_count") + 1,
        last_sent_at=Value(now),
        sent_since_open=Case(When(engaged, then=Value(0)), default=F("sent_since_open") + 1),
        updated_at=now,
    )
