"""Engagement: per-subscriber counters and the decayed 0-100 score (subscribers.engagement holds the formula).

Opens and clicks arrive as ESP events (the webhooks app calls engagement_event_record as it applies them);
sends are counted once per campaign, set-wise, when the campaign finishes (engagement_sent_record).
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.utils import timezone

from core.addresses import normalize_email
from delivery.models import Message
from subscribers.engagement import POINTS, anchor_after
from subscribers.models import Subscriber

# Messages that left for the recipient's mailbox, whatever the ESP reported afterwards.
SENT_STATUSES = (Message.Status.SENT, Message.Status.DELIVERED, Message.Status.BOUNCED, Message.Status.COMPLAINED)


@transaction.atomic
def engagement_event_record(*, email: str, kind: str, occurred_at: datetime, is_first_for_message: bool) -> bool:
    """Count an open or a click ("open" / "click") of one message by the subscriber with that address.

    Counters and points go by message (the first open of a message counts, reopening it does not), so the
    score measures interest in what was sent rather than how often one mail was looked at; the last-open and
    last-click stamps move to the latest event whatever its order of arrival. Returns whether a subscriber
    was found.
    """
    if kind not in POINTS:
        raise ValueError(f"unknown engagement kind {kind!r}")
    subscriber = Subscriber.objects.select_for_update().filter(email=normalize_email(email)).first()
    if subscriber is None:
        return False
    fields = ["sent_since_open", "updated_at"]
    # Either kind shows the mail was read: a click with images blocked is still a reader.
    subscriber.sent_since_open = 0
    stamp = "last_open_at" if kind == "open" else "last_click_at"
    latest = getattr(subscriber, stamp)
    if latest is None or occurred_at > latest:
        setattr(subscriber, stamp, occurred_at)
        fields.append(stamp)
    if is_first_for_message:
        counter = "open_count" if kind == "open" else "click_count"
        setattr(subscriber, counter, getattr(subscriber, counter) + 1)
        subscriber.score_anchor = anchor_after(subscriber.score_anchor, points=POINTS[kind], at=occurred_at)
        fields += [counter, "score_anchor"]
    subscriber.save(update_fields=fields)
    return True


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
