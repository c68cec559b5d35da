"""webhooks: the ESPs' reports — stored durably and idempotently in the EspEvent inbox, then applied to
delivery (message status, suppression, the mailings' numbers, provider reputation) and subscribers (engagement,
cleaning, unsubscribes).

Applying works a batch at a time (esp_events_apply): the batch's events are read and locked in one query, their
messages in another, every rule is worked out in memory in the order the events happened, and what it changes is
written set-wise (one statement per table, a few for the suppression list) in the same transaction that marks the
events applied. An event is applied once: a repeat of it is never stored (its dedupe key), and a stored event is
skipped once applied_at is set. docs/WEBHOOKS.md ("What each event does") lists the rules.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from core.addresses import address_hash
from core.bulk import rows_read, rows_update
from delivery.models import Mailing, Message, Suppression
from delivery.services.mailings import message_report_apply, messages_reports_save
from delivery.services.reputation import providers_reputation_watch
from delivery.services.stats import MailingStatsDelta, Unsubscribe, mailing_stats_add, message_unsubscribes_record
from delivery.services.suppression import SuppressionRequest, suppressions_add
from subscribers.models import Subscriber
from subscribers.services import subscriber_unsubscribe
from subscribers.services.engagement import EngagementEvent, engagement_events_record
from subscribers.services.subscriptions import subscribers_clean
from webhooks.classification import Effect, event_effect, is_machine_open
from webhooks.models import EspEvent
from webhooks.privacy import esp_events_erase

logger = logging.getLogger(__name__)

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


# An event for a message whose send is not recorded yet waits, so that the record cannot overwrite it;
# after this long it is applied anyway.
PENDING_MESSAGE_GRACE = timedelta(minutes=30)

# The message status an effect moves towards (forward only: delivery.services.mailings.STATUS_RANK).
EFFECT_STATUS: dict[Effect, str] = {
    Effect.DELIVERED: Message.Status.DELIVERED,
    Effect.HARD_BOUNCE: Message.Status.BOUNCED,
    Effect.SOFT_BOUNCE: Message.Status.BOUNCED,
    Effect.COMPLAINT: Message.Status.COMPLAINED,
    Effect.FAILED: Message.Status.FAILED,
    Effect.OPEN: "opened",
    Effect.CLICK: "clicked",
}
# The mailing counter that goes up when an effect moves its message's status (once per message).
STATUS_MOVE_COUNTER: dict[Effect, str] = {
    Effect.HARD_BOUNCE: "hard_bounced",
    Effect.SOFT_BOUNCE: "soft_bounced",
    Effect.COMPLAINT: "complained",
}
# Effects whose ESP text (the SMTP response or the ESP's description) is kept as the message's last error.
ERROR_EFFECTS = {Effect.HARD_BOUNCE, Effect.SOFT_BOUNCE, Effect.COMPLAINT, Effect.FAILED}
# The EspEvent fields an apply writes.
APPLIED_FIELDS = (
    "applied_at",
    "outcome",
    "is_hard_bounce",
    "is_soft_bounce",
    "is_machine_open",
    "is_orphan",
    "mailer_message_id",
)


@dataclass(slots=True)
class _Event:
    """A stored event as the apply reads and writes it: a batch is thousands of them, and a model instance each
    would cost more than the rest of the apply."""

    id: int
    esp: str
    event_type: str
    recipient: str
    esp_message_id: str
    mailer_message_id: int | None
    is_hard_bounce: bool
    occurred_at: datetime
    received_at: datetime
    description: str
    mta_response: str
    click_url: str
    user_agent: str
    payload: Any
    is_soft_bounce: bool = False
    is_machine_open: bool = False
    is_orphan: bool = False
    applied_at: datetime | None = None
    outcome: str = ""

    READ: ClassVar[tuple[str, ...]] = (
        "id",
        "esp",
        "event_type",
        "recipient",
        "esp_message_id",
        "mailer_message_id",
        "is_hard_bounce",
        "occurred_at",
        "received_at",
        "description",
        "mta_response",
        "click_url",
        "user_agent",
        "payload",
    )


@dataclass(slots=True)
class _Message:
    """What the apply reads and may change of a message (delivery.services.mailings.REPORT_FIELDS)."""

    id: int
    mailing_id: int
    to_email: str
    esp_message_id: str
    status: str
    delivered_at: datetime | None
    opened_at: datetime | None
    clicked_at: datetime | None
    last_error: str

    READ: ClassVar[tuple[str, ...]] = (
        "id",
        "mailing_id",
        "to_email",
        "esp_message_id",
        "status",
        "delivered_at",
        "opened_at",
        "clicked_at",
        "last_error",
    )


@dataclass
class ApplyResult:
    applied: int = 0
    waiting: int = 0  # events whose message's send is not recorded yet; apply again shortly
    orphans: int = 0  # applied without a message of ours (stored and counted: esp_events_orphan_count)


def soft_bounce_limit_reached(times: list[datetime], at: datetime, *, limit: int, window: timedelta) -> bool:
    """Whether `limit` of the (sorted) soft-bounce times fall within one `window` that contains `at`.

    Not only the window ending at `at`: events arrive out of order, and the bounce applied last may be the
    first of the three.
    """
    low, high = bisect_left(times, at - window), bisect_right(times, at)
    for first in range(low, high):
        if bisect_right(times, times[first] + window) - first >= limit:
            return True
    return False


class _BatchApply:
    """One batch of events being applied: worked out in memory in order of occurrence, then written set-wise."""

    def __init__(self, events: list[_Event], now: datetime) -> None:
        self.events = events
        self.now = now
        self.message_of: dict[int, _Message | None] = {}
        self.changed: dict[int, _Message] = {}
        self.delta = MailingStatsDelta()
        self.engagement: list[EngagementEvent] = []
        self.suppressions: list[SuppressionRequest] = []
        self.cleans: dict[str, str] = {}  # address -> reason (a complaint outranks a bounce)
        self.leaves: list[tuple[str, int | None, str]] = []  # (address, mailing whose lists only, or None, source)
        self.unsubscribes: list[Unsubscribe] = []
        self.soft_bounces: list[_Event] = []
        self.outcomes: dict[int, list[str]] = defaultdict(list)
        self.applied: list[_Event] = []
        self.waiting = 0
        self.reputation_moved = False

    # Reading -----------------------------------------------------------------------------------------------------

    def messages_find(self) -> None:
        """Each event's message: by our id from the metadata (when the recipient matches), else by the ESP's
        message id and the recipient. Locked, so that two workers never write the same message from stale reads."""
        ids = {e.mailer_message_id for e in self.events if e.mailer_message_id is not None}
        by_id = {row[0]: _Message(*row) for row in rows_read(model=Message, ids=ids, fields=_Message.READ, lock=True)}
        unresolved = []
        for event in self.events:
            message = by_id.get(event.mailer_message_id) if event.mailer_message_id is not None else None
            if message is not None and event.recipient and message.to_email != event.recipient:
                message = None
            self.message_of[event.id] = message
            if message is None and event.esp_message_id:
                unresolved.append(event)
        if not unresolved:
            return
        query = Message.objects.filter(esp_message_id__in={e.esp_message_id for e in unresolved}).order_by("pk")
        if connection.features.has_select_for_update:
            query = query.select_for_update()
        by_esp_id = {(row[3], row[2]): _Message(*row) for row in query.values_list(*_Message.READ)}
        for event in unresolved:
            found = by_esp_id.get((event.esp_message_id, event.recipient))
            if found is not None:
                # one object per message, whichever way it was found
                self.message_of[event.id] = by_id.setdefault(found.id, found)

    def erased_addresses(self) -> set[str]:
        """Addresses of orphan events whose owner had them erased (the suppression list keeps only the hash)."""
        addresses = {e.recipient for e in self.events if e.recipient and self.message_of[e.id] is None}
        if not addresses:
            return set()
        by_hash = {address_hash(address): address for address in addresses}
        erased = Suppression.objects.filter(email_hash__in=list(by_hash), email=None).values_list(
            "email_hash", flat=True
        )
        return {by_hash[key] for key in erased}

    # Working out -------------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.messages_find()
        erased = self.erased_addresses()
        for address in sorted(erased):
            # A late report about someone erased since: their messages no longer carry the address, and this event
            # must not keep it either. Their suppression (by hash) already covers any bounce or complaint.
            esp_events_erase(email=address)
        for event in self.events:
            message = self.message_of[event.id]
            if message is not None and message.status in Message.PENDING_STATUSES:
                if self.now - event.received_at < PENDING_MESSAGE_GRACE:
                    self.waiting += 1  # try again later, once the send is recorded
                    continue
            self.applied.append(event)
            if message is None and event.recipient in erased:
                event.is_orphan = True
                self.outcomes[event.id].append("erased")
                continue
            self.event_apply(event, message)
        self.soft_bounces_judge()

    def event_apply(self, event: _Event, message: _Message | None) -> None:
        effect = event_effect(
            esp=event.esp, event_type=event.event_type, esp_event=event.payload, is_hard=event.is_hard_bounce
        )
        event.is_hard_bounce = effect == Effect.HARD_BOUNCE
        event.is_soft_bounce = effect == Effect.SOFT_BOUNCE
        outcome = self.outcomes[event.id]
        if message is None:
            event.is_orphan = True
            outcome.append("orphan")
        else:
            event.mailer_message_id = message.id
        if effect == Effect.OPEN:
            delivered = message.delivered_at if message is not None else None
            event.is_machine_open = is_machine_open(
                esp=event.esp,
                esp_event=event.payload,
                user_agent=event.user_agent,
                seconds_after_delivery=(event.occurred_at - delivered).total_seconds() if delivered else None,
                window=settings.MAILER_MACHINE_OPEN_SECONDS,
            )
        if message is not None:
            self.message_apply(event, effect, message, outcome)
            if event.recipient:
                self.address_apply(event, effect, message, outcome)
        # An orphan changes no status, suppression or count: a report about mail that is not ours (or forged)
        # must not suppress or unsubscribe anyone. It is stored and counted as an orphan, nothing more.

    def message_apply(self, event: _Event, effect: Effect, message: _Message, outcome: list[str]) -> None:
        mailing_id, at = message.mailing_id, event.occurred_at
        if event.is_machine_open:
            self.delta.add(mailing_id=mailing_id, counter="machine_opens", at=at)
            outcome.append("machine open")
            return
        if effect in (Effect.UNSUBSCRIBE, Effect.LIST_UNSUBSCRIBE):
            self.unsubscribes.append(Unsubscribe(message.id, mailing_id, at, f"webhook:{event.esp}"))
            return
        status = EFFECT_STATUS.get(effect)
        if status is None:
            return
        first_delivery, first_open, first_click = message.delivered_at, message.opened_at, message.clicked_at
        error = (event.mta_response or event.description) if effect in ERROR_EFFECTS else ""
        fields = message_report_apply(message, status=status, occurred_at=at, error=error)
        if fields:
            self.changed[message.id] = message
        if "status" in fields:
            outcome.append(f"message {status}")
            if effect in STATUS_MOVE_COUNTER:
                self.delta.add(mailing_id=mailing_id, counter=STATUS_MOVE_COUNTER[effect], at=at)
                self.reputation_moved = True
        if effect == Effect.DELIVERED and first_delivery is None:
            self.delta.add(mailing_id=mailing_id, counter="delivered", at=at)
            if "status" not in fields:
                outcome.append("delivery counted")
        elif effect in (Effect.OPEN, Effect.CLICK):
            kind = "open" if effect == Effect.OPEN else "click"
            first = (first_open if effect == Effect.OPEN else first_click) is None
            self.delta.add(mailing_id=mailing_id, counter=f"{kind}s", at=at)
            if first:
                self.delta.add(mailing_id=mailing_id, counter=f"unique_{kind}s", at=at)
            if effect == Effect.CLICK and event.click_url:
                self.delta.link_click(mailing_id=mailing_id, url=event.click_url)
            self.engagement.append(
                EngagementEvent(email=message.to_email, kind=kind, occurred_at=at, is_first_for_message=first)
            )
            outcome.append(f"{'first ' if first else ''}{kind}")

    def address_apply(self, event: _Event, effect: Effect, message: _Message, outcome: list[str]) -> None:
        address, source = event.recipient, f"webhook:{event.esp}"
        if effect in (Effect.HARD_BOUNCE, Effect.COMPLAINT):
            reason = Suppression.Reason.HARD_BOUNCE if effect == Effect.HARD_BOUNCE else Suppression.Reason.COMPLAINT
            detail = event.mta_response or event.description
            self.suppressions.append(SuppressionRequest(email=address, reason=reason, source=source, detail=detail))
            if self.cleans.get(address) != Suppression.Reason.COMPLAINT:
                self.cleans[address] = reason
            outcome.append("suppressed")
        elif effect == Effect.SOFT_BOUNCE:
            self.soft_bounces.append(event)
        elif effect == Effect.UNSUBSCRIBE:
            self.leaves.append((address, None, source))
            outcome.append("unsubscribed")
        elif effect == Effect.LIST_UNSUBSCRIBE:
            self.leaves.append((address, message.mailing_id, source))
            outcome.append("unsubscribed from the mailing's lists")

    def soft_bounces_judge(self) -> None:
        """Suppress an address once MAILER_SOFT_BOUNCE_LIMIT of its messages soft-bounced within the window.

        Counted by message, not by event: an ESP that reports one bounce twice (SES notifications and event
        publishing, a SendGrid retry under a new event id) does not bring the address closer to the limit.
        """
        if not self.soft_bounces:
            return
        limit, window = settings.MAILER_SOFT_BOUNCE_LIMIT, timedelta(days=settings.MAILER_SOFT_BOUNCE_WINDOW_DAYS)
        times = [e.occurred_at for e in self.soft_bounces]
        earlier = EspEvent.objects.filter(
            recipient__in={e.recipient for e in self.soft_bounces},
            is_soft_bounce=True,
            is_orphan=False,
            applied_at__isnull=False,
            occurred_at__gte=min(times) - window,
            occurred_at__lte=max(times) + window,
        ).values_list("recipient", "occurred_at", "mailer_message_id", "esp_message_id", "pk")
        first_bounce: dict[str, dict[tuple[str, Any], datetime]] = defaultdict(dict)

        def note(address: str, at: datetime, message_id: int | None, esp_message_id: str, pk: int) -> None:
            key = ("m", message_id) if message_id else ("e", esp_message_id) if esp_message_id else ("p", pk)
            known = first_bounce[address].get(key)
            first_bounce[address][key] = at if known is None else min(known, at)

        for address, at, message_id, esp_message_id, pk in earlier:
            note(address, at, message_id, esp_message_id, pk)
        for event in self.soft_bounces:
            note(event.recipient, event.occurred_at, event.mailer_message_id, event.esp_message_id, event.id)
        suppressed: set[str] = set()
        for event in self.soft_bounces:
            address = event.recipient
            bounces = sorted(first_bounce[address].values())
            outcome = self.outcomes[event.id]
            if address in suppressed:
                outcome.append("soft bounce")
                continue
            if soft_bounce_limit_reached(bounces, event.occurred_at, limit=limit, window=window):
                suppressed.add(address)
                detail = f"{limit} soft bounces within {window.days} days; the last: {event.mta_response}"
                self.suppressions.append(
                    SuppressionRequest(
                        email=address,
                        reason=Suppression.Reason.HARD_BOUNCE,
                        source=f"webhook:{event.esp}",
                        detail=detail,
                    )
                )
                self.cleans.setdefault(address, Suppression.Reason.HARD_BOUNCE)
                outcome.append(f"soft bounce, suppressed after {limit}")
            else:
                outcome.append("soft bounce")

    # Writing -----------------------------------------------------------------------------------------------------

    def save(self) -> None:
        messages_reports_save(messages=list(self.changed.values()))
        if self.engagement:
            engagement_events_record(events=self.engagement)
        self.leaves_save()
        if self.suppressions:
            suppressions_add(requests=self.suppressions)
        if self.cleans:
            subscribers_clean(reasons=self.cleans)
        if self.unsubscribes:
            message_unsubscribes_record(unsubscribes=self.unsubscribes, delta=self.delta)
        mailing_stats_add(delta=self.delta)
        for event in self.applied:
            event.applied_at = self.now
            event.outcome = (", ".join(self.outcomes[event.id]) or "no change")[:100]
        rows_update(model=EspEvent, objects=self.applied, fields=APPLIED_FIELDS)

    def leaves_save(self) -> None:
        """ESP unsubscribes: from every list, or a mailing's lists only (a group or topic opt-out); an address that
        is no subscriber (a one-off mailing) is suppressed instead, as the unsubscribe link does."""
        if not self.leaves:
            return
        subscribers = {s.email: s for s in Subscriber.objects.filter(email__in={a for a, _, _ in self.leaves})}
        mailing_ids = {m for _, m, _ in self.leaves if m is not None}
        lists_of = {
            pk: (data.get("list_ids") or None) if isinstance(data, dict) else None
            for pk, data in Mailing.objects.filter(pk__in=mailing_ids).values_list("pk", "owner_data")
        }
        for address, mailing_id, source in self.leaves:
            list_ids = lists_of.get(mailing_id) if mailing_id is not None else None
            subscriber = subscribers.get(address)
            if subscriber is not None:
                subscriber_unsubscribe(subscriber=subscriber, list_ids=list_ids, source=source)
            elif list_ids is None:
                self.suppressions.append(
                    SuppressionRequest(email=address, reason=Suppression.Reason.UNSUBSCRIBE, source=source)
                )


# Events applied per transaction. Larger batches write each message once for several of its events (a delivery
# and the opens that follow) and spread each statement's fixed cost: 5,000 applied about 1.5 x faster than 1,000
# (docs/BENCHMARKS.md), while a batch's locks are held for about a second.
APPLY_BATCH = 5000


def esp_events_apply(*, limit: int = APPLY_BATCH) -> ApplyResult:
    """Apply up to `limit` stored events, in order of occurrence, in one transaction. Safe in several workers at
    once: each takes events the others have not locked, and locks their messages. After the commit, when bounces or
    complaints moved messages, the providers' 24-hour rates are checked for an alert (network I/O: mail to the
    admins, so never inside the transaction)."""
    with transaction.atomic():
        query = EspEvent.objects.filter(applied_at=None).order_by("occurred_at", "pk")
        if connection.features.has_select_for_update_skip_locked:
            query = query.select_for_update(skip_locked=True)
        batch = _BatchApply([_Event(*row) for row in query.values_list(*_Event.READ)[:limit]], timezone.now())
        if not batch.events:
            return ApplyResult()
        batch.run()
        batch.save()
    if batch.reputation_moved:
        providers_reputation_watch()
    return ApplyResult(
        applied=len(batch.applied), waiting=batch.waiting, orphans=sum(e.is_orphan for e in batch.applied)
    )
