"""Applying stored ESP events: events/s by one process, and replays that must change no count.

    python bench/apply_events.py [--events 100000] [--batch 5000] [--sample 2000] [--replays 3] [--seed 7]

What it does, in one process, against DATABASE_URL (var/bench.sqlite3 if unset):
1. Empties what an earlier run left (its mailing, messages, subscribers, suppressions, events, counters), then
   creates one campaign Mailing with one Message per recipient (`sent`, with its ESP message id, through one of
   three providers: 60 % SendGrid, 30 % Postmark, 10 % Amazon SES) and a Subscriber on a list for each.
2. Writes --events webhook events in each ESP's own JSON format: a delivery for every message (1 % bounce
   instead: 0.7 % hard, 0.3 % soft or blocked), 0.1 % complaints, opens for 20 % (a tenth of them machine opens:
   SendGrid's `sg_machine_open`, Apple's privacy proxy elsewhere), a second open for a quarter of the openers,
   clicks on one of three links for 5 %; 2 % of the events posted twice as they were (the same dedupe key) and
   0.5 % of SendGrid deliveries reported again under a new `sg_event_id` (a new key: counted once all the same).
3. Parses each with anymail's own tracking view for that ESP and stores it with the inbox's `esp_event_add` (the
   "apply soon" task request is switched off: nothing is applied behind the bench's back).
4. Baseline 1, same run: the apply this replaced — one event at a time with the single-item services — on the
   first --sample events, rolled back.
5. Baseline 2, same run, same rows: the bare writes a set-wise apply cannot do without — per batch, select the
   events for update, UPDATE their messages' status, UPDATE their applied_at — each batch rolled back. Each of the
   two timed phases starts after VACUUM ANALYZE of its tables and a CHECKPOINT (settle()).
6. Applies everything with `esp_events_apply(limit=--batch)` until nothing is left: events/s and both ratios.
7. Stores and applies the very same events --replays more times and checks that no count moved: the mailing's
   counters, hourly series and link clicks, the messages' statuses and first-event stamps, suppressions,
   subscribers' engagement counters and statuses, subscriptions. It also checks the counters against the rows.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from anymail.signals import AnymailTrackingEvent
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django_env import ROOT  # noqa: F401  (sets Django up)

import webhooks.services as webhook_services  # noqa: E402
from core.bulk import rows_update  # noqa: E402
from delivery.models import (  # noqa: E402
    Mailing,
    MailingHourlyStats,
    MailingLinkClicks,
    MailingStats,
    MailingUnsubscribe,
    Message,
    Provider,
    Suppression,
)
from delivery.services.mailings import message_status_apply  # noqa: E402
from delivery.services.suppression import suppression_add  # noqa: E402
from subscribers.models import MailingList, Subscriber, Subscription  # noqa: E402
from subscribers.services import subscriber_clean  # noqa: E402
from subscribers.services.engagement import engagement_event_record  # noqa: E402
from webhooks.inbox import esp_event_add  # noqa: E402
from webhooks.models import EspEvent  # noqa: E402
from webhooks.services import APPLY_BATCH, esp_events_apply  # noqa: E402

MAILING_NAME = "bench-apply-events"
ADDRESS = "apply-{}@bench.example"
LINKS = ["https://shop.example/spring", "https://shop.example/sale?utm_source=mailer", "https://blog.example/post/42"]
HUMAN_AGENT = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
)
APPLE_PROXY_AGENT = "Mozilla/5.0"
SENDGRID, POSTMARK, SES = "sendgrid", "postmark", "amazon_ses"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# One webhook event in each ESP's own format -------------------------------------------------------------------


def sendgrid_event(message: Message, kind: str, at: datetime, rng: random.Random, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": message.to_email,
        "timestamp": int(at.timestamp()),
        "smtp-id": f"<{message.esp_message_id}@bench.sendgrid>",
        "event": kind,
        "category": ["bench"],
        "sg_event_id": f"sg-{rng.getrandbits(64):016x}",
        "sg_message_id": f"{message.esp_message_id}.filter0001.0",
        "anymail_id": message.esp_message_id,
        "mailer_msg": str(message.pk),
    }
    if kind == "delivered":
        body["response"] = "250 2.0.0 OK"
    body.update(extra)
    return body


def postmark_event(message: Message, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "MessageID": message.esp_message_id,
        "ServerID": 23,
        "MessageStream": "broadcast",
        "Metadata": {"mailer_msg": str(message.pk)},
        "Tag": "bench",
        **record,
    }


def ses_notification(message: Message, record: dict[str, Any], at: datetime, rng: random.Random) -> dict[str, Any]:
    ses_event = {
        **record,
        "mail": {
            "timestamp": _iso(at - timedelta(seconds=5)),
            "source": "news@bench.example",
            "sendingAccountId": "123456789012",
            "messageId": message.esp_message_id,
            "destination": [message.to_email],
            "headersTruncated": False,
            "headers": [
                {"name": "To", "value": message.to_email},
                {"name": "X-Metadata", "value": json.dumps({"mailer_msg": str(message.pk)})},
            ],
        },
    }
    return {
        "Type": "Notification",
        "MessageId": str(uuid.UUID(int=rng.getrandbits(128))),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:mailer-ses-events",
        "Message": json.dumps(ses_event),
        "Timestamp": _iso(at),
        "SignatureVersion": "1",
    }


def message_events(message: Message, esp: str, rng: random.Random) -> Iterator[dict[str, Any]]:
    """What the ESP reports about one message, in its own format; raw bodies (SES: SNS envelopes)."""
    sent = message.sent_at or datetime.now(tz=UTC)
    draw = rng.random()
    if draw < 0.010:
        hard = draw < 0.007
        at = sent + timedelta(seconds=4)
        if esp == SENDGRID:
            yield sendgrid_event(
                message,
                "bounce",
                at,
                rng,
                type="bounce" if hard else "blocked",
                status="5.1.1" if hard else "4.7.1",
                reason="550 5.1.1 user unknown" if hard else "421 4.7.1 try again later",
            )
        elif esp == POSTMARK:
            yield postmark_event(
                message,
                {
                    "RecordType": "Bounce",
                    "ID": rng.getrandbits(40),
                    "Type": "HardBounce" if hard else "SoftBounce",
                    "TypeCode": 1 if hard else 4096,
                    "Email": message.to_email,
                    "BouncedAt": _iso(at),
                    "Details": "smtp;550 5.1.1 user unknown" if hard else "smtp;452 4.2.2 mailbox full",
                    "Inactive": hard,
                },
            )
        else:
            bounce = {
                "bounceType": "Permanent" if hard else "Transient",
                "bounceSubType": "General" if hard else "MailboxFull",
                "bouncedRecipients": [{"emailAddress": message.to_email, "status": "5.1.1" if hard else "4.2.2"}],
                "timestamp": _iso(at),
                "feedbackId": f"fb-{rng.getrandbits(48):x}",
            }
            yield ses_notification(message, {"eventType": "Bounce", "bounce": bounce}, at, rng)
        return

    delivered_at = sent + timedelta(seconds=3)
    if esp == SENDGRID:
        yield sendgrid_event(message, "delivered", delivered_at, rng)
    elif esp == POSTMARK:
        yield postmark_event(
            message, {"RecordType": "Delivery", "Recipient": message.to_email, "DeliveredAt": _iso(delivered_at)}
        )
    else:
        delivery = {"timestamp": _iso(delivered_at), "recipients": [message.to_email], "smtpResponse": "250 ok"}
        yield ses_notification(message, {"eventType": "Delivery", "delivery": delivery}, delivered_at, rng)

    if rng.random() < 0.001:
        at = delivered_at + timedelta(minutes=10)
        if esp == SENDGRID:
            yield sendgrid_event(message, "spamreport", at, rng)
        elif esp == POSTMARK:
            record = {
                "RecordType": "SpamComplaint",
                "ID": rng.getrandbits(40),
                "Type": "SpamComplaint",
                "TypeCode": 100001,
                "Email": message.to_email,
                "BouncedAt": _iso(at),
            }
            yield postmark_event(message, record)
        else:
            complaint = {"complainedRecipients": [{"emailAddress": message.to_email}], "timestamp": _iso(at)}
            yield ses_notification(message, {"eventType": "Complaint", "complaint": complaint}, at, rng)

    if rng.random() >= 0.2:
        return
    machine = rng.random() < 0.1
    opens = [delivered_at + timedelta(seconds=rng.randint(60, 3600))]
    if rng.random() < 0.25:
        opens.append(opens[0] + timedelta(seconds=rng.randint(60, 3600)))
    for at in opens:
        agent = APPLE_PROXY_AGENT if machine else HUMAN_AGENT
        if esp == SENDGRID:
            yield sendgrid_event(message, "open", at, rng, useragent=agent, sg_machine_open=machine)
        elif esp == POSTMARK:
            record = {
                "RecordType": "Open",
                "Recipient": message.to_email,
                "FirstOpen": at == opens[0],
                "ReceivedAt": _iso(at),
                "UserAgent": agent,
                "Platform": "Unknown" if machine else "Mobile",
            }
            yield postmark_event(message, record)
        else:
            opened = {"timestamp": _iso(at), "userAgent": agent, "ipAddress": "192.0.2.1"}
            yield ses_notification(message, {"eventType": "Open", "open": opened}, at, rng)
    if machine or rng.random() >= 0.25:
        return
    at, url = opens[0] + timedelta(seconds=30), rng.choice(LINKS)
    if esp == SENDGRID:
        yield sendgrid_event(message, "click", at, rng, url=url, useragent=HUMAN_AGENT)
    elif esp == POSTMARK:
        record = {"RecordType": "Click", "Recipient": message.to_email, "ReceivedAt": _iso(at), "OriginalLink": url}
        yield postmark_event(message, {**record, "UserAgent": HUMAN_AGENT, "ClickLocation": "HTML"})
    else:
        click = {"timestamp": _iso(at), "userAgent": HUMAN_AGENT, "ipAddress": "192.0.2.1", "link": url}
        yield ses_notification(message, {"eventType": "Click", "click": click}, at, rng)


# Setting up -----------------------------------------------------------------------------------------------------


def bench_data_clear() -> None:
    addresses = Message.objects.filter(mailing__name=MAILING_NAME).values("to_email")
    EspEvent.objects.filter(Q(recipient__endswith="@bench.example") | Q(recipient="")).delete()
    Suppression.objects.filter(email__endswith="@bench.example").delete()
    Subscriber.objects.filter(email__in=addresses).delete()
    Subscriber.objects.filter(email__endswith="@bench.example").delete()
    Mailing.objects.filter(name=MAILING_NAME).delete()  # its messages, counters and hourly rows go with it


def bench_data_create(messages: int, rng: random.Random) -> tuple[Mailing, list[tuple[Message, str]]]:
    providers = {
        kind: Provider.objects.get_or_create(name=f"bench-apply-{kind}", defaults={"kind": kind})[0]
        for kind in (SENDGRID, POSTMARK, SES)
    }
    news, _ = MailingList.objects.get_or_create(slug="bench-apply", defaults={"name": "Bench apply"})
    mailing = Mailing.objects.create(
        name=MAILING_NAME,
        subject_template="News",
        html_template="<p>News</p>",
        from_email="news@bench.example",
        owner_data={"list_ids": [news.pk]},
    )
    start = datetime.now(tz=UTC) - timedelta(hours=3)
    rows, kinds = [], []
    for i in range(messages):
        kind = SENDGRID if i % 10 < 6 else POSTMARK if i % 10 < 9 else SES
        kinds.append(kind)
        rows.append(
            Message(
                mailing=mailing,
                to_email=ADDRESS.format(i),
                status=Message.Status.SENT,
                provider=providers[kind],
                esp_message_id=str(uuid.UUID(int=rng.getrandbits(128))),
                sent_at=start + timedelta(seconds=i * 7200 / messages),  # sends spread over two hours
            )
        )
    created = Message.objects.bulk_create(rows, batch_size=5000)
    subscribers = Subscriber.objects.bulk_create(
        [Subscriber(email=ADDRESS.format(i), name=f"Reader {i}") for i in range(messages)], batch_size=5000
    )
    Subscription.objects.bulk_create(
        [Subscription(subscriber=s, mailing_list=news, source="bench") for s in subscribers], batch_size=5000
    )
    return mailing, list(zip(created, kinds, strict=True))


def bodies_generate(
    pairs: list[tuple[Message, str]], events: int, rng: random.Random
) -> list[tuple[str, dict[str, Any]]]:
    bodies: list[tuple[str, dict[str, Any]]] = []
    for message, esp in pairs:
        for body in message_events(message, esp, rng):
            bodies.append((esp, body))
            if rng.random() < 0.02:
                bodies.append((esp, body))  # posted twice as it was: the same dedupe key
            if esp == SENDGRID and body["event"] == "delivered" and rng.random() < 0.005:
                # reported again under a new event id: another key, the same delivery
                bodies.append((esp, {**body, "sg_event_id": f"sg-{rng.getrandbits(64):016x}"}))
        if len(bodies) >= events:
            break
    return bodies[:events]


def tracking_events(bodies: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, AnymailTrackingEvent]]:
    """anymail's own parsing of each body, as its webhook views do it."""
    from anymail.webhooks.amazon_ses import AmazonSESTrackingWebhookView
    from anymail.webhooks.postmark import PostmarkTrackingWebhookView
    from anymail.webhooks.sendgrid import SendGridTrackingWebhookView

    views = {
        SENDGRID: SendGridTrackingWebhookView(),
        POSTMARK: PostmarkTrackingWebhookView(),
        SES: AmazonSESTrackingWebhookView(),
    }
    parsed: list[tuple[str, AnymailTrackingEvent]] = []
    for esp, body in bodies:
        view = views[esp]
        if esp == SES:
            parsed += [(esp, e) for e in view.esp_to_anymail_events(json.loads(body["Message"]), body)]
        else:
            parsed.append((esp, view.esp_to_anymail_event(body)))
    return parsed


def events_store(events: list[tuple[str, AnymailTrackingEvent]], chunk: int = 1000) -> float:
    """Through the receiver's own function, a webhook POST's worth per transaction; returns the seconds taken."""
    started = time.perf_counter()
    for first in range(0, len(events), chunk):
        with transaction.atomic():
            for esp, event in events[first : first + chunk]:
                esp_event_add(esp=esp, event=event)
    return time.perf_counter() - started


# Measuring ------------------------------------------------------------------------------------------------------


class _Row:
    """A row written by rows_update: its id and the fields being written."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def baseline_bare_updates(batch: int) -> tuple[int, float]:
    """The floor: per batch, what a set-wise apply cannot do without — select the events for update (skipping
    locked ones, as the apply does), write their messages' status and their applied_at (one statement each, with
    the same writer as the apply) — each batch rolled back, so that the apply finds every row as stored (the next
    batch starts after the last one's key). Returns (events, seconds)."""
    status_of = {"delivered": "delivered", "bounced": "bounced", "complained": "complained"}
    events = 0
    after: tuple[datetime, int] | None = None
    started = time.perf_counter()
    while True:
        with transaction.atomic():
            query = EspEvent.objects.select_for_update(skip_locked=connection.vendor == "postgresql").filter(
                applied_at=None
            )
            if after is not None:
                query = query.filter(Q(occurred_at__gt=after[0]) | Q(occurred_at=after[0], pk__gt=after[1]))
            rows = list(
                query.order_by("occurred_at", "pk").values_list(
                    "pk", "occurred_at", "event_type", "mailer_message_id", "payload"
                )[:batch]
            )
            if not rows:
                break
            statuses = {mid: status_of[kind] for _, _, kind, mid, _ in rows if mid and kind in status_of}
            now = datetime.now(tz=UTC)
            rows_update(model=Message, objects=[_Row(id=k, status=v) for k, v in statuses.items()], fields=["status"])
            rows_update(
                model=EspEvent, objects=[_Row(id=row[0], applied_at=now) for row in rows], fields=["applied_at"]
            )
            events += len(rows)
            after = (rows[-1][1], rows[-1][0])
            transaction.set_rollback(True)
    return events, time.perf_counter() - started


OLD_STATUS = {
    "delivered": Message.Status.DELIVERED,
    "bounced": Message.Status.BOUNCED,
    "complained": Message.Status.COMPLAINED,
    "rejected": Message.Status.FAILED,
    "failed": Message.Status.FAILED,
    "opened": "opened",
    "clicked": "clicked",
}


def baseline_per_event(sample: int) -> tuple[int, float]:
    """The apply this replaced, one event at a time with the single-item services (find the message, apply its
    status, count the engagement, suppress and clean, mark the event), on the first `sample` events, rolled back.
    Returns (events, seconds)."""
    started = time.perf_counter()
    with transaction.atomic():
        events = list(EspEvent.objects.filter(applied_at=None).order_by("occurred_at", "pk")[:sample])
        for event in events:
            message = Message.objects.filter(pk=event.mailer_message_id).first()
            kind = {"opened": "open", "clicked": "click"}.get(event.event_type)
            if message is not None and kind is not None:
                first = getattr(message, f"{event.event_type}_at") is None
                engagement_event_record(
                    email=message.to_email, kind=kind, occurred_at=event.occurred_at, is_first_for_message=first
                )
            status = OLD_STATUS.get(event.event_type)
            if message is not None and status is not None:
                message_status_apply(message=message, status=status, occurred_at=event.occurred_at)
            reason = (
                Suppression.Reason.HARD_BOUNCE
                if event.is_hard_bounce
                else Suppression.Reason.COMPLAINT
                if event.event_type == "complained"
                else None
            )
            if reason is not None:
                suppression_add(email=event.recipient, reason=reason, source="bench")
                subscriber_clean(email=event.recipient, reason=reason)
            event.applied_at, event.outcome = datetime.now(tz=UTC), "applied"
            event.save(update_fields=["applied_at", "outcome"])
        transaction.set_rollback(True)
    return len(events), time.perf_counter() - started


def settle() -> None:
    """PostgreSQL: before a timed phase, vacuum and analyze the tables it works on (else autovacuum, woken by the
    rows just written, competes with the phase) and write everything out, so that each phase starts from a fresh
    checkpoint (the first change to each page after one logs the whole page: a phase that ran into a checkpoint
    would pay more)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for model in (EspEvent, Message, Subscriber, Subscription):
                cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
            cursor.execute("CHECKPOINT")


def apply_all(batch: int) -> tuple[int, int, float]:
    """esp_events_apply until nothing is left: (events applied, calls, seconds)."""
    applied = calls = 0
    started = time.perf_counter()
    while True:
        result = esp_events_apply(limit=batch)
        calls += 1
        applied += result.applied
        if result.applied == 0:
            break
    return applied, calls, time.perf_counter() - started


def counts_snapshot(mailing: Mailing) -> dict[str, Any]:
    messages = Message.objects.filter(mailing=mailing)
    subscribers = Subscriber.objects.filter(email__endswith="@bench.example")
    stats = MailingStats.objects.filter(mailing=mailing).values().first() or {}
    hourly = MailingHourlyStats.objects.filter(mailing=mailing).order_by("hour")
    return {
        "counters": {k: v for k, v in stats.items() if k not in ("mailing_id", "updated_at")},
        "hourly": list(hourly.values_list("hour", "delivered", "unique_opens", "unique_clicks", "hard_bounced")),
        "links": sorted(MailingLinkClicks.objects.filter(mailing=mailing).values_list("url", "clicks")),
        "unsubscribes": MailingUnsubscribe.objects.filter(mailing=mailing).count(),
        "statuses": dict(messages.values_list("status").annotate(n=Count("pk")).values_list("status", "n")),
        "stamps": messages.aggregate(
            delivered=Count("delivered_at"), opened=Count("opened_at"), clicked=Count("clicked_at")
        ),
        "suppressions": dict(
            Suppression.objects.filter(email__endswith="@bench.example")
            .values_list("reason")
            .annotate(n=Count("pk"))
            .values_list("reason", "n")
        ),
        "subscribers": subscribers.aggregate(
            opens=Sum("open_count"), clicks=Sum("click_count"), cleaned=Count("pk", filter=Q(status="cleaned"))
        ),
        "subscriptions": dict(
            Subscription.objects.filter(subscriber__in=subscribers)
            .values_list("status")
            .annotate(n=Count("pk"))
            .values_list("status", "n")
        ),
        "events": EspEvent.objects.filter(recipient__endswith="@bench.example").aggregate(
            stored=Count("pk"), unapplied=Count("pk", filter=Q(applied_at=None))
        ),
    }


def counters_check(snapshot: dict[str, Any]) -> list[str]:
    """The counters must agree with the rows they count."""
    counters, stamps = snapshot["counters"], snapshot["stamps"]
    problems = []
    for counter, stamp in (("delivered", "delivered"), ("unique_opens", "opened"), ("unique_clicks", "clicked")):
        if counters.get(counter, 0) != stamps[stamp]:
            problems.append(f"{counter} {counters.get(counter, 0)} != messages with {stamp}_at {stamps[stamp]}")
    sums = [sum(row[i] for row in snapshot["hourly"]) for i in range(1, 5)]
    expected = [counters.get(k, 0) for k in ("delivered", "unique_opens", "unique_clicks", "hard_bounced")]
    if sums != expected:
        problems.append(f"hourly series sums {sums} != counters {expected}")
    if sum(clicks for _, clicks in snapshot["links"]) != counters.get("clicks", 0):
        problems.append("clicks per link do not add up to the clicks counter")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=APPLY_BATCH, help="events per esp_events_apply call")
    parser.add_argument("--sample", type=int, default=2000, help="events applied one at a time, for the ratio")
    parser.add_argument("--replays", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    call_command("migrate", verbosity=0)
    # The receiver asks a worker to apply after each store; here the bench applies, and measures it.
    webhook_services.esp_events_apply_soon = lambda: None  # type: ignore[assignment]

    bench_data_clear()
    messages = max(1, int(args.events / 1.33))
    mailing, pairs = bench_data_create(messages, rng)
    bodies = bodies_generate(pairs, args.events, rng)
    events = tracking_events(bodies)
    store_seconds = events_store(events)
    stored = EspEvent.objects.filter(applied_at=None).count()
    print(f"database: {connection.vendor}; {len(pairs):,} messages; {len(bodies):,} webhook bodies")
    print(f"stored: {len(events):,} events -> {stored:,} rows after dedupe, in {store_seconds:.1f} s")

    old_events, old_seconds = baseline_per_event(args.sample)
    old_rate = old_events / old_seconds
    print(f"baseline 1, one event at a time (the apply this replaced), first {old_events:,} events, rolled back:")
    print(f"  {old_seconds:.2f} s = {old_rate:,.0f} events/s")
    settle()
    base_events, base_seconds = baseline_bare_updates(args.batch)
    base_rate = base_events / base_seconds
    print("baseline 2, bare writes (select for update + UPDATE messages' status + UPDATE applied_at), rolled back:")
    print(f"  {base_events:,} events in {base_seconds:.2f} s = {base_rate:,.0f} events/s")

    settle()
    applied, calls, seconds = apply_all(args.batch)
    rate = applied / seconds
    print(f"esp_events_apply(limit={args.batch}): {applied:,} events in {seconds:.2f} s ({calls} calls)")
    print(f"  = {rate:,.0f} events/s; {rate / old_rate:.1f} x baseline 1; {rate / base_rate:.2f} x baseline 2")
    print(f"  goal >= 5,000 events/s: {'met' if rate >= 5000 else 'NOT met'}")

    first = counts_snapshot(mailing)
    print("counts:", json.dumps({k: first[k] for k in ("counters", "statuses", "suppressions", "subscribers")}))
    print(f"hourly rows: {len(first['hourly'])}; link clicks: {first['links']}")
    problems = counters_check(first)
    print("counters agree with the rows" if not problems else "COUNTERS DISAGREE: " + "; ".join(problems))

    unchanged = True
    for replay in range(1, args.replays + 1):
        store_seconds = events_store(events)
        again, _, apply_seconds = apply_all(args.batch)
        same = counts_snapshot(mailing) == first
        unchanged &= same and again == 0
        print(
            f"replay {replay}: the same {len(events):,} events stored again ({store_seconds:.1f} s), "
            f"{again} applied ({apply_seconds:.2f} s); every count {'unchanged' if same else 'CHANGED'}"
        )
    print(f"replays: {'every count unchanged' if unchanged else 'COUNTS CHANGED'}")


if __name__ == "__main__":
    main()
