"""Applying stored ESP events: the rules (issue 5 §3), the campaign numbers (§4), orphans and strays (§5).

Every event goes in through the webhook URLs in its ESP's documented format and is applied by esp_events_apply.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from delivery.models import (
    MailingHourlyStats,
    MailingLinkClicks,
    MailingStats,
    MailingUnsubscribe,
    Message,
    Suppression,
)
from delivery.services.reputation import REPUTATION_ALERT_KEY, REPUTATION_CACHE_KEY
from delivery.unsubscribe import unsubscribe_url
from subscribers.models import Subscriber, Subscription
from tests.factories import (
    CampaignFactory,
    MailingFactory,
    MessageFactory,
    ProviderFactory,
    SubscriberFactory,
    SubscriptionFactory,
)
from webhooks.classification import Effect, event_effect
from webhooks.models import EspEvent
from webhooks.selectors import esp_events_for_message, esp_events_for_recipient, esp_events_orphan_count
from webhooks.services import esp_events_apply, soft_bounce_limit_reached
from webhooks.tests import payloads
from webhooks.tests.test_webhooks import post_postmark, post_sendgrid, post_ses

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
READER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
APPLE_PROXY = "Mozilla/5.0"
COUNTERS = MailingStats.COUNTERS


# Payloads in each ESP's documented format (beyond webhooks.tests.payloads) ---------------------------------------

POSTMARK_TYPE_CODES = {
    "HardBounce": 1,
    "Transient": 2,
    "DnsError": 256,
    "SpamNotification": 512,
    "SoftBounce": 4096,
    "BadEmailAddress": 100000,
    "SpamComplaint": 100001,
    "ManuallyDeactivated": 100002,
    "Blocked": 100006,
    "DMARCPolicy": 100009,
}


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def postmark_bounce(message: Message, bounce_type: str, at: datetime = T0, bounce_id: int = 4323372036) -> dict:
    body = payloads.postmark_bounce(message.to_email, message.pk, bounce_type="HardBounce", bounce_id=bounce_id)
    body.update(Type=bounce_type, TypeCode=POSTMARK_TYPE_CODES[bounce_type], Name=bounce_type, BouncedAt=_iso(at))
    body["RecordType"] = "SpamComplaint" if bounce_type == "SpamComplaint" else "Bounce"
    return body


def postmark_engagement(message: Message, record: str, at: datetime, **fields: object) -> dict:
    """A Postmark Open or Click webhook."""
    body = {
        "RecordType": record,
        "MessageStream": "broadcast",
        "Client": {"Name": "Apple Mail", "Company": "Apple", "Family": "Apple Mail"},
        "OS": {"Name": "iOS 17", "Company": "Apple Computer, Inc.", "Family": "iOS"},
        "Platform": "Mobile",
        "UserAgent": READER,
        "Geo": {"CountryISOCode": "NO", "Country": "Norway"},
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"mailer_msg": str(message.pk)},
        "ReceivedAt": _iso(at),
        "Tag": "news",
        "Recipient": message.to_email,
    }
    if record == "Open":
        body.update(FirstOpen=True, ReadSeconds=5)
    else:
        body.update(ClickLocation="HTML", OriginalLink="https://shop.example/spring")
    body.update(fields)
    return body


def postmark_subscription_change(message: Message, *, suppress: bool, reason: str = "ManualSuppression") -> dict:
    body = {
        "RecordType": "SubscriptionChange",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "ServerID": 123456,
        "MessageStream": "broadcast",
        "ChangedAt": _iso(T0),
        "Recipient": message.to_email,
        "Origin": "Recipient",
        "SuppressSending": suppress,
        "Tag": "news",
        "Metadata": {"mailer_msg": str(message.pk)},
    }
    if suppress:
        body["SuppressionReason"] = reason
    return body


def ses_event(message: Message, event: dict, at: datetime = T0) -> dict:
    """An SNS envelope around an SES event-publishing record (the mail object carries our metadata header)."""
    envelope = payloads.ses_notification("Delivery", message.to_email, message.pk)
    record = json.loads(envelope["Message"])
    del record["notificationType"], record["delivery"]
    record.update(event)
    envelope.update(Message=json.dumps(record), Timestamp=_iso(at))
    return envelope


def sendgrid(message: Message, event: str, at: datetime = T0, **extra: object) -> dict:
    return payloads.sendgrid_event(event, message.to_email, message.pk, timestamp=int(at.timestamp()), **extra)


# Helpers ---------------------------------------------------------------------------------------------------------


def counters(mailing) -> dict[str, int]:
    stats = MailingStats.objects.filter(mailing=mailing).values(*COUNTERS).first() or {}
    return {name: count for name, count in stats.items() if count}


@pytest.fixture
def mailing():
    return MailingFactory(name="Spring news")


def sent(mailing, email: str, **fields) -> Message:
    return MessageFactory(mailing=mailing, to_email=email, status=Message.Status.SENT, sent_at=T0, **fields)


# Status only moves forward; first stamps kept -------------------------------------------------------------------


def test_a_late_delivery_never_overwrites_a_bounce_and_is_counted_once(client, mailing):
    message = sent(mailing, "ann@example.org")
    post_sendgrid(client, [sendgrid(message, "bounce", T0 + timedelta(seconds=5))])
    esp_events_apply()

    post_sendgrid(client, [sendgrid(message, "delivered", T0 + timedelta(seconds=9))])
    post_sendgrid(client, [sendgrid(message, "delivered", T0 + timedelta(seconds=9), sg_event_id="another-id")])
    assert esp_events_apply().applied == 2

    message.refresh_from_db()
    assert (message.status, message.delivered_at) == (Message.Status.BOUNCED, T0 + timedelta(seconds=9))
    assert counters(mailing) == {"delivered": 1, "hard_bounced": 1}


def test_the_first_open_keeps_its_time_whatever_the_order_of_arrival(client, mailing):
    ann = SubscriberFactory(email="ann@example.org")
    message = sent(mailing, ann.email, delivered_at=T0)
    later, earlier = T0 + timedelta(hours=2), T0 + timedelta(hours=1)
    post_postmark(client, postmark_engagement(message, "Open", later))
    esp_events_apply()
    post_postmark(client, postmark_engagement(message, "Open", earlier, FirstOpen=False))
    esp_events_apply()

    message.refresh_from_db()
    ann.refresh_from_db()
    assert message.opened_at == earlier
    assert counters(mailing) == {"unique_opens": 1, "opens": 2}
    assert (ann.open_count, ann.last_open_at) == (1, later)


# Hard and soft bounces ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounce_type", "suppressed", "counter"),
    [
        ("HardBounce", True, "hard_bounced"),
        ("BadEmailAddress", True, "hard_bounced"),
        ("ManuallyDeactivated", True, "hard_bounced"),
        ("SpamNotification", True, "hard_bounced"),
        ("SoftBounce", False, "soft_bounced"),
        ("Transient", False, "soft_bounced"),
        ("Blocked", False, "soft_bounced"),
    ],
)
def test_postmark_bounce_types(client, mailing, bounce_type, suppressed, counter):
    message = sent(mailing, "ann@example.org")

    assert post_postmark(client, postmark_bounce(message, bounce_type)).status_code == 200
    esp_events_apply()

    event = EspEvent.objects.get()
    assert (event.is_hard_bounce, event.is_soft_bounce) == (suppressed, not suppressed)
    assert Suppression.objects.filter(email="ann@example.org", reason="hard_bounce").exists() is suppressed
    message.refresh_from_db()
    assert message.status == Message.Status.BOUNCED
    assert message.last_error == "smtp;550 5.1.1 The email account that you tried to reach does not exist."
    assert counters(mailing) == {counter: 1}


def test_a_postmark_dmarc_failure_is_our_domains_fault_and_changes_nothing_of_the_address(client, mailing):
    message = sent(mailing, "ann@example.org")
    post_postmark(client, postmark_bounce(message, "DMARCPolicy"))

    esp_events_apply()

    event = EspEvent.objects.get()
    assert (event.is_hard_bounce, event.is_soft_bounce, event.outcome) == (False, False, "no change")
    assert not Suppression.objects.exists()
    assert counters(mailing) == {}


@pytest.mark.parametrize(
    ("bounce_type", "effect"),
    [("Permanent", Effect.HARD_BOUNCE), ("Transient", Effect.SOFT_BOUNCE), ("Undetermined", Effect.SOFT_BOUNCE)],
)
def test_ses_bounce_types(client, mailing, bounce_type, effect):
    message = sent(mailing, "ann@example.org")
    post_ses(client, payloads.ses_notification("Bounce", message.to_email, message.pk, bounce_type=bounce_type))

    esp_events_apply()

    assert Suppression.objects.exists() is (effect == Effect.HARD_BOUNCE)
    assert counters(mailing) == {"hard_bounced" if effect == Effect.HARD_BOUNCE else "soft_bounced": 1}


def test_sendgrid_blocks_are_soft_and_bounces_and_drops_of_bounced_addresses_are_hard(client, mailing):
    blocked, bounced, dropped = (sent(mailing, f"{n}@example.org") for n in ("blocked", "bounced", "dropped"))
    post_sendgrid(
        client,
        [
            sendgrid(blocked, "bounce", type="blocked", status="4.7.1", reason="421 4.7.1 try again later"),
            sendgrid(bounced, "bounce"),
            sendgrid(dropped, "dropped", reason="Bounced Address"),
        ],
    )

    esp_events_apply()

    assert set(Suppression.objects.values_list("email", flat=True)) == {"bounced@example.org", "dropped@example.org"}
    assert dict(EspEvent.objects.values_list("recipient", "is_soft_bounce")) == {
        "blocked@example.org": True,
        "bounced@example.org": False,
        "dropped@example.org": False,
    }


def _soft_bounce_three_messages(client, days_apart: list[int]) -> list[Message]:
    messages = []
    for days in days_apart:
        message = sent(MailingFactory(), "ann@example.org")
        at = T0 + timedelta(days=days)
        post_postmark(client, postmark_bounce(message, "SoftBounce", at, bounce_id=1000 + message.pk))
        messages.append(message)
    return messages


def test_three_soft_bounces_within_30_days_suppress_at_the_third(client):
    subscriber = SubscriberFactory(email="ann@example.org")
    _soft_bounce_three_messages(client, [0, 10])
    esp_events_apply()
    assert not Suppression.objects.exists()

    _soft_bounce_three_messages(client, [29])
    esp_events_apply()

    suppression = Suppression.objects.get()
    assert (suppression.email, suppression.reason, suppression.source) == (
        "ann@example.org",
        Suppression.Reason.HARD_BOUNCE,
        "webhook:postmark",
    )
    assert suppression.detail.startswith("3 soft bounces within 30 days")
    subscriber.refresh_from_db()
    assert subscriber.status == Subscriber.Status.CLEANED
    assert (
        EspEvent.objects.order_by("-occurred_at").first().outcome == "message bounced, soft bounce, suppressed after 3"
    )


def test_three_soft_bounces_spread_over_more_than_30_days_do_not_suppress(client):
    _soft_bounce_three_messages(client, [0, 20, 40])

    esp_events_apply()

    assert not Suppression.objects.exists()


def test_soft_bounces_applied_out_of_order_still_suppress_once_three_fall_in_a_window(client):
    first, second, third = _soft_bounce_three_messages(client, [0, 10, 20])
    EspEvent.objects.exclude(mailer_message_id=third.pk).update(applied_at=T0)  # hold the earlier two back
    esp_events_apply()  # the latest first
    EspEvent.objects.exclude(mailer_message_id=third.pk).update(applied_at=None, is_soft_bounce=False)

    esp_events_apply()

    assert Suppression.objects.get().email == "ann@example.org"


def test_one_soft_bounce_reported_twice_counts_once_towards_the_limit(client):
    message = sent(MailingFactory(), "ann@example.org")
    post_postmark(client, postmark_bounce(message, "SoftBounce", bounce_id=1))
    post_postmark(client, postmark_bounce(message, "SoftBounce", bounce_id=2))  # the same bounce, a new record id
    _soft_bounce_three_messages(client, [1])

    esp_events_apply()

    assert EspEvent.objects.filter(is_soft_bounce=True).count() == 3
    assert not Suppression.objects.exists()


def test_the_soft_bounce_limit_and_window_come_from_the_settings(client, settings):
    settings.MAILER_SOFT_BOUNCE_LIMIT = 2
    settings.MAILER_SOFT_BOUNCE_WINDOW_DAYS = 5
    _soft_bounce_three_messages(client, [0, 6])
    esp_events_apply()
    assert not Suppression.objects.exists()

    _soft_bounce_three_messages(client, [9])
    esp_events_apply()

    assert Suppression.objects.get().detail.startswith("2 soft bounces within 5 days")


def test_soft_bounce_windows():
    days = [T0 + timedelta(days=d) for d in (0, 10, 25, 50)]
    window = timedelta(days=30)
    assert soft_bounce_limit_reached(days, days[0], limit=3, window=window)  # the window [0, 30] holds three
    assert soft_bounce_limit_reached(days, days[2], limit=3, window=window)
    assert not soft_bounce_limit_reached(days, days[3], limit=3, window=window)  # [25, 55] holds two
    assert not soft_bounce_limit_reached(days[:2], days[1], limit=3, window=window)


# Complaints and unsubscribes ------------------------------------------------------------------------------------


def test_a_complaint_suppresses_unsubscribes_from_every_list_and_is_counted(client, mailing):
    first = SubscriptionFactory(subscriber__email="ann@example.org")
    second = SubscriptionFactory(subscriber=first.subscriber)
    message = sent(mailing, "ann@example.org")
    post_ses(client, payloads.ses_notification("Delivery", message.to_email, message.pk))
    post_ses(client, payloads.ses_notification("Complaint", message.to_email, message.pk))

    esp_events_apply()

    assert Suppression.objects.get().reason == Suppression.Reason.COMPLAINT
    assert set(Subscription.objects.values_list("pk", "status")) == {
        (first.pk, "unsubscribed"),
        (second.pk, "unsubscribed"),
    }
    assert Subscriber.objects.get().status == Subscriber.Status.CLEANED
    assert counters(mailing) == {"delivered": 1, "complained": 1}


def test_a_sendgrid_unsubscribe_leaves_every_list_and_a_group_unsubscribe_only_the_mailings(client):
    news = SubscriptionFactory(subscriber__email="ann@example.org")
    offers = SubscriptionFactory(subscriber=news.subscriber)
    bob_news = SubscriptionFactory(subscriber__email="bob@example.org", mailing_list=news.mailing_list)
    bob_offers = SubscriptionFactory(subscriber=bob_news.subscriber, mailing_list=offers.mailing_list)
    mailing = MailingFactory(owner_data={"list_ids": [news.mailing_list_id]})
    ann, bob = sent(mailing, "ann@example.org"), sent(mailing, "bob@example.org")

    post_sendgrid(client, [sendgrid(ann, "unsubscribe"), sendgrid(bob, "group_unsubscribe", asm_group_id=42)])
    esp_events_apply()

    statuses = dict(Subscription.objects.values_list("pk", "status"))
    assert statuses == {
        news.pk: "unsubscribed",
        offers.pk: "unsubscribed",
        bob_news.pk: "unsubscribed",
        bob_offers.pk: "active",
    }
    assert counters(mailing) == {"unsubscribed": 2}
    assert not Suppression.objects.exists()


def test_postmark_subscription_changes(client, mailing):
    ann, bob, cy = (SubscriptionFactory(subscriber__email=f"{n}@example.org") for n in ("ann", "bob", "cy"))
    ann_message, bob_message, cy_message = (sent(mailing, f"{n}@example.org") for n in ("ann", "bob", "cy"))

    post_postmark(client, postmark_subscription_change(ann_message, suppress=True))  # the recipient unsubscribed
    post_postmark(client, postmark_subscription_change(bob_message, suppress=False))  # reactivated: no consent
    post_postmark(client, postmark_subscription_change(cy_message, suppress=True, reason="HardBounce"))
    esp_events_apply()

    assert dict(Subscription.objects.values_list("pk", "status")) == {
        ann.pk: "unsubscribed",
        bob.pk: "active",
        cy.pk: "active",
    }
    assert list(Suppression.objects.values_list("email", "reason")) == [("cy@example.org", "hard_bounce")]
    assert Subscriber.objects.get(email="cy@example.org").status == Subscriber.Status.CLEANED
    assert counters(mailing) == {"unsubscribed": 1, "hard_bounced": 1}


def test_an_ses_list_management_unsubscribe_is_applied_though_anymail_calls_it_unknown(client, mailing):
    subscription = SubscriptionFactory(subscriber__email="ann@example.org")
    message = sent(mailing, "ann@example.org")
    preferences = {"unsubscribeAll": True, "topicSubscriptionStatus": []}
    subscription_event = {
        "contactList": "News",
        "timestamp": _iso(T0),
        "source": "UnsubscribeHeader",
        "newTopicPreferences": preferences,
        "oldTopicPreferences": {"unsubscribeAll": False, "topicSubscriptionStatus": []},
    }
    post_ses(client, ses_event(message, {"eventType": "Subscription", "subscription": subscription_event}))

    esp_events_apply()

    assert EspEvent.objects.get().event_type == "unknown"
    subscription.refresh_from_db()
    assert subscription.status == "unsubscribed"
    assert counters(mailing) == {"unsubscribed": 1}


def test_an_unsubscribe_by_link_and_by_the_esp_count_once(client, mailing):
    SubscriptionFactory(subscriber__email="ann@example.org")
    message = sent(mailing, "ann@example.org")

    assert client.post(unsubscribe_url(message.pk)).status_code == 200
    post_sendgrid(client, [sendgrid(message, "unsubscribe")])
    esp_events_apply()

    assert counters(mailing) == {"unsubscribed": 1}
    assert MailingUnsubscribe.objects.get().source == "unsubscribe-link"


# Machine opens --------------------------------------------------------------------------------------------------


def test_machine_opens_are_stored_and_flagged_but_not_engagement(client, mailing):
    people = {n: SubscriberFactory(email=f"{n}@example.org") for n in ("sg", "apple", "scanner", "quick", "reader")}
    messages = {n: sent(mailing, p.email) for n, p in people.items()}
    for message in messages.values():
        post_postmark(client, payloads.postmark_delivery(message.to_email, message.pk))  # delivered at T0-ish
    esp_events_apply()
    delivered_at = Message.objects.get(pk=messages["quick"].pk).delivered_at
    post_sendgrid(client, [sendgrid(messages["sg"], "open", delivered_at + timedelta(hours=1), sg_machine_open=True)])
    post_postmark(
        client,
        postmark_engagement(messages["apple"], "Open", delivered_at + timedelta(hours=1), UserAgent=APPLE_PROXY),
    )
    post_ses(
        client,
        ses_event(
            messages["scanner"],
            {"eventType": "Open", "open": {"timestamp": _iso(T0), "userAgent": "Barracuda Sentinel (EE)"}},
            at=delivered_at + timedelta(hours=1),
        ),
    )
    post_postmark(client, postmark_engagement(messages["quick"], "Open", delivered_at + timedelta(seconds=1)))
    post_postmark(client, postmark_engagement(messages["reader"], "Open", delivered_at + timedelta(minutes=10)))

    esp_events_apply()

    machine = set(EspEvent.objects.filter(is_machine_open=True).values_list("recipient", flat=True))
    assert machine == {"sg@example.org", "apple@example.org", "scanner@example.org", "quick@example.org"}
    assert set(Message.objects.exclude(opened_at=None).values_list("to_email", flat=True)) == {"reader@example.org"}
    assert dict(Subscriber.objects.values_list("email", "open_count")) == {
        "sg@example.org": 0,
        "apple@example.org": 0,
        "scanner@example.org": 0,
        "quick@example.org": 0,
        "reader@example.org": 1,
    }
    assert counters(mailing) == {"delivered": 5, "unique_opens": 1, "opens": 1, "machine_opens": 4}


# Campaign numbers -----------------------------------------------------------------------------------------------


def _campaign_with_events(client):
    """A campaign of five messages and what the ESP said about them, over two hours."""
    campaign = CampaignFactory(mailing=MailingFactory(name="Spring news"))
    mailing = campaign.mailing
    ann, bob, cy, dee, eve = (sent(mailing, f"{n}@example.org") for n in ("ann", "bob", "cy", "dee", "eve"))
    hour = T0 + timedelta(hours=1)
    post_sendgrid(
        client,
        [
            sendgrid(ann, "delivered", T0 + timedelta(seconds=3)),
            sendgrid(bob, "delivered", T0 + timedelta(seconds=3)),
            sendgrid(cy, "delivered", T0 + timedelta(seconds=3)),
            sendgrid(dee, "bounce", T0 + timedelta(seconds=4)),
            sendgrid(eve, "bounce", T0 + timedelta(seconds=4), type="blocked", status="4.7.1", reason="421 later"),
            sendgrid(ann, "open", hour, useragent=READER),
            sendgrid(ann, "open", hour + timedelta(minutes=5), useragent=READER),
            sendgrid(bob, "open", hour, useragent=APPLE_PROXY),
            sendgrid(ann, "click", hour + timedelta(minutes=6), url="https://shop.example/spring", useragent=READER),
            sendgrid(ann, "click", hour + timedelta(minutes=7), url="https://shop.example/spring#top"),
            sendgrid(cy, "click", hour + timedelta(minutes=8), url=unsubscribe_url(cy.pk), useragent=READER),
            sendgrid(cy, "spamreport", hour + timedelta(minutes=9)),
        ],
    )
    esp_events_apply()
    return campaign


def test_campaign_numbers_are_kept_as_counters_with_an_hourly_series_and_clicks_per_link(client, settings):
    campaign = _campaign_with_events(client)
    mailing = campaign.mailing

    assert counters(mailing) == {
        "delivered": 3,
        "hard_bounced": 1,
        "soft_bounced": 1,
        "complained": 1,
        "unique_opens": 1,
        "unique_clicks": 2,
        "opens": 2,
        "clicks": 3,
        "machine_opens": 1,
    }
    hourly = MailingHourlyStats.objects.filter(mailing=mailing).order_by("hour")
    assert [(row.hour, row.delivered, row.hard_bounced, row.opens, row.clicks, row.complained) for row in hourly] == [
        (T0, 3, 1, 0, 0, 0),
        (T0 + timedelta(hours=1), 0, 0, 2, 3, 1),
    ]
    unsubscribe_link = f"{settings.MAILER_BASE_URL}/u/…/"
    assert dict(MailingLinkClicks.objects.filter(mailing=mailing).values_list("url", "clicks")) == {
        "https://shop.example/spring": 2,
        unsubscribe_link: 1,
    }


def test_the_campaign_page_shows_the_numbers_with_rates_without_reading_events(client, admin_client):
    campaign = _campaign_with_events(client)

    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()

    # 5 sent; 3 delivered; opens and clicks over the delivered
    assert '<td>Sent</td><td style="text-align:right">5</td>' in page
    assert '<td>Delivered</td><td style="text-align:right">3</td><td style="text-align:right">60.0 %</td>' in page
    assert '<td>Hard bounced</td><td style="text-align:right">1</td><td style="text-align:right">20.0 %</td>' in page
    assert '<td>Unique opens</td><td style="text-align:right">1</td><td style="text-align:right">33.3 %</td>' in page
    assert '<td>Click-to-open</td><td style="text-align:right">2</td><td style="text-align:right">200.0 %</td>' in page
    assert '<td>Machine opens</td><td style="text-align:right">1</td>' in page
    assert '<tr><td>https://shop.example/spring</td><td style="text-align:right">2</td></tr>' in page
    assert "<td>2026-11-25 10:00</td>" in page


def test_the_campaign_page_reads_no_events(client, admin_client):
    campaign = _campaign_with_events(client)

    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").status_code == 200

    assert [q["sql"] for q in queries.captured_queries if EspEvent._meta.db_table in q["sql"]] == []


# Timelines ------------------------------------------------------------------------------------------------------


def test_a_messages_and_a_subscribers_timelines(client, admin_client, mailing):
    ann = SubscriberFactory(email="ann@example.org")
    first = sent(mailing, "ann@example.org", esp_message_id="pm-1")
    second = sent(MailingFactory(), "ann@example.org")
    # Postmark's open without metadata: found by the ESP's message id and the recipient
    without_metadata = postmark_engagement(first, "Open", T0 + timedelta(hours=1), Metadata={}, MessageID="pm-1")
    post_postmark(client, {**payloads.postmark_delivery(first.to_email, first.pk), "DeliveredAt": _iso(T0)})
    post_postmark(client, without_metadata)
    post_sendgrid(client, [sendgrid(second, "delivered", T0 + timedelta(hours=2))])
    esp_events_apply()

    assert [e.event_type for e in esp_events_for_message(message_id=first.pk)] == ["delivered", "opened"]
    assert [e.event_type for e in esp_events_for_recipient(email="Ann@Example.org")] == [
        "delivered",
        "opened",
        "delivered",
    ]
    message_page = admin_client.get(f"/admin/delivery/message/{first.pk}/change/").content.decode()
    assert "ESP events" in message_page
    assert f"?mailer_message_id={first.pk}" in message_page
    assert message_page.count("<td>postmark</td>") == 2
    subscriber_page = admin_client.get(f"/admin/subscribers/subscriber/{ann.pk}/change/").content.decode()
    assert "?recipient=ann%40example.org" in subscriber_page
    assert "All 3 events" in subscriber_page
    listed = admin_client.get(f"/admin/webhooks/espevent/?mailer_message_id={first.pk}")
    assert listed.status_code == 200
    assert list(listed.context["cl"].result_list) == list(EspEvent.objects.filter(mailer_message_id=first.pk))


# Orphans and strays ---------------------------------------------------------------------------------------------


def test_orphans_and_unknown_events_are_stored_counted_and_never_stop_the_apply(client, admin_client, mailing):
    message = sent(mailing, "ann@example.org")
    body = [
        payloads.sendgrid_event("delivered", "nobody@example.org", 999_999),  # no such message
        payloads.sendgrid_event("bounce", "stranger@example.org", None),  # not ours at all (or forged)
        sendgrid(message, "something_new", extra_field={"x": 1}),  # a type nobody knows yet
        sendgrid(message, "delivered"),
    ]
    assert post_sendgrid(client, body).status_code == 200

    result = esp_events_apply()

    assert (result.applied, result.orphans) == (4, 2)
    assert set(EspEvent.objects.values_list("recipient", "event_type", "outcome")) == {
        ("nobody@example.org", "delivered", "orphan"),
        ("stranger@example.org", "bounced", "orphan"),
        ("ann@example.org", "unknown", "no change"),
        ("ann@example.org", "delivered", "message delivered"),
    }
    assert esp_events_orphan_count() == 2
    assert not Suppression.objects.exists()  # a bounce about mail that is not ours suppresses nobody
    assert EspEvent.objects.get(event_type="unknown").payload["event"] == "something_new"
    message.refresh_from_db()
    assert message.status == Message.Status.DELIVERED
    page = admin_client.get("/admin/webhooks/espevent/").content.decode()
    assert "2 orphans (events for no message of ours); 0 not applied yet" in page


# Replays and idempotency ----------------------------------------------------------------------------------------


def test_replaying_the_same_events_three_times_changes_no_count(client):
    campaign = _campaign_with_events(client)
    mailing = campaign.mailing

    def snapshot():
        return (
            counters(mailing),
            list(MailingHourlyStats.objects.filter(mailing=mailing).order_by("hour").values()),
            sorted(MailingLinkClicks.objects.filter(mailing=mailing).values_list("url", "clicks")),
            sorted(Message.objects.values_list("pk", "status", "delivered_at", "opened_at", "clicked_at")),
            sorted(Suppression.objects.values_list("email", "reason")),
        )

    before = snapshot()
    stored = list(EspEvent.objects.values_list("payload", flat=True))
    for _ in range(3):
        assert post_sendgrid(client, stored).status_code == 200
        assert esp_events_apply().applied == 0
    assert snapshot() == before


def test_applying_a_batch_takes_the_same_number_of_queries_however_many_events(client):
    def queries_to_apply(count: int) -> int:
        mailing = MailingFactory()
        events = []
        for i in range(count):
            message = sent(mailing, f"p{count}-{i}@example.org")
            events += [
                sendgrid(message, "delivered", T0),
                sendgrid(message, "open", T0 + timedelta(hours=1), useragent=READER),
                sendgrid(message, "click", T0 + timedelta(hours=1), url=f"https://shop.example/{i % 3}"),
            ]
        post_sendgrid(client, events)
        with CaptureQueriesContext(connection) as queries:
            assert esp_events_apply().applied == 3 * count
        return len(queries.captured_queries)

    assert queries_to_apply(5) == queries_to_apply(40)


# Provider reputation --------------------------------------------------------------------------------------------


def test_a_provider_crossing_its_bounce_threshold_raises_one_alert(client, caplog, mailoutbox, settings):
    settings.ADMINS = [("Ops", "ops@mailer.example")]
    provider = ProviderFactory(name="pm-main")
    cache.delete(REPUTATION_ALERT_KEY.format(provider.pk))
    mailing = MailingFactory()
    now = datetime.now(tz=UTC)
    messages = [sent(mailing, f"r{i}@example.org", provider=provider) for i in range(100)]
    Message.objects.filter(mailing=mailing).update(sent_at=now - timedelta(hours=1))

    post_postmark(client, postmark_bounce(messages[0], "HardBounce", bounce_id=1))
    post_postmark(client, postmark_bounce(messages[1], "HardBounce", bounce_id=2))
    with caplog.at_level(logging.WARNING, logger="delivery.services.reputation"):
        esp_events_apply()  # 2 of 100: at the 2 % threshold, not above
        assert alerts(caplog) == []
        cache.delete(REPUTATION_CACHE_KEY)  # the minute-old figures routing shares
        post_postmark(client, postmark_bounce(messages[2], "HardBounce", bounce_id=3))
        esp_events_apply()  # 3 of 100
        cache.delete(REPUTATION_CACHE_KEY)
        post_postmark(client, postmark_bounce(messages[3], "HardBounce", bounce_id=4))
        esp_events_apply()  # still above: no second alert

    assert alerts(caplog) == [
        "provider reputation alert: pm-main: bounce rate 3.00% (3 of 100) above 2.00% over the last 24 hours; "
        "routing leaves it out until it is back under"
    ]
    assert [m.subject.endswith("Provider pm-main above its reputation thresholds") for m in mailoutbox] == [True]
    assert [m.to for m in mailoutbox] == [["ops@mailer.example"]]


def alerts(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "delivery.services.reputation"]


# Classification tables ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("esp", "event_type", "esp_event", "effect"),
    [
        ("postmark", "deferred", {"RecordType": "Bounce", "Type": "Transient"}, Effect.SOFT_BOUNCE),
        ("postmark", "deferred", {"RecordType": "Bounce", "Type": "DnsError"}, Effect.NONE),
        ("postmark", "complained", {"RecordType": "Bounce", "Type": "SpamNotification"}, Effect.HARD_BOUNCE),
        ("postmark", "bounced", {"RecordType": "Bounce", "Type": "VirusNotification"}, Effect.NONE),
        ("postmark", "autoresponded", {"RecordType": "Bounce", "Type": "AutoResponder"}, Effect.NONE),
        ("postmark", "unsubscribed", {"RecordType": "Bounce", "Type": "Unsubscribe"}, Effect.UNSUBSCRIBE),
        ("sendgrid", "unsubscribed", {"event": "group_unsubscribe"}, Effect.LIST_UNSUBSCRIBE),
        ("sendgrid", "subscribed", {"event": "group_resubscribe"}, Effect.NONE),
        ("sendgrid", "rejected", {"event": "dropped", "reason": "Unsubscribed Address"}, Effect.FAILED),
        ("amazon_ses", "bounced", {"truncated": True, "head": "{"}, Effect.SOFT_BOUNCE),
        ("sendgrid", "bounced", {"truncated": True, "head": "{"}, Effect.SOFT_BOUNCE),
        ("amazon_ses", "unknown", {"eventType": "DeliveryDelay"}, Effect.NONE),
        ("amazon_ses", "unknown", {"eventType": "Subscription", "subscription": []}, Effect.NONE),
        (
            "amazon_ses",
            "unknown",
            {"eventType": "Subscription", "subscription": {"newTopicPreferences": {"topicSubscriptionStatus": 5}}},
            Effect.NONE,
        ),
        ("postmark", "bounced", {"RecordType": "Bounce", "Type": ["odd"]}, Effect.SOFT_BOUNCE),
    ],
)
def test_event_effects(esp, event_type, esp_event, effect):
    assert event_effect(esp=esp, event_type=event_type, esp_event=esp_event) == effect


def test_a_payload_cut_short_keeps_the_hard_bounce_flag_stored_with_it():
    cut = {"truncated": True, "head": "{"}
    assert event_effect(esp="sendgrid", event_type="bounced", esp_event=cut, is_hard=True) == Effect.HARD_BOUNCE
