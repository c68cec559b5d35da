"""Engagement: counters and the decayed score, kept current by applied ESP events and finished campaigns."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from campaigns.models import Campaign
from campaigns.services import campaign_finish
from delivery.models import Message
from subscribers.engagement import HALF_LIFE_DAYS, anchor_after, anchor_threshold, score_at, score_now
from subscribers.models import Subscriber
from subscribers.segments import segment_subscribers
from subscribers.services import engagement_sent_record
from tests.factories import CampaignFactory, MailingFactory, MessageFactory, SubscriberFactory
from webhooks.services import esp_events_apply
from webhooks.tests import payloads
from webhooks.tests.test_webhooks import post_sendgrid

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
# A person's Apple Mail; a bare "Mozilla/5.0" is Apple's privacy proxy, whose opens are not engagement.
READER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"


def test_the_score_halves_every_half_life_and_is_capped():
    anchor = anchor_after(None, points=40, at=T0)
    assert score_at(anchor, T0) == pytest.approx(40)
    assert score_at(anchor, T0 + timedelta(days=HALF_LIFE_DAYS)) == pytest.approx(20)
    assert score_now(anchor, T0 + timedelta(days=2 * HALF_LIFE_DAYS)) == 10
    # points add to what is left after decay, and the total stops at 100
    later = anchor_after(anchor, points=25, at=T0 + timedelta(days=HALF_LIFE_DAYS))
    assert score_at(later, T0 + timedelta(days=HALF_LIFE_DAYS)) == pytest.approx(45)
    assert score_at(anchor_after(later, points=500, at=T0), T0) == 100
    assert score_now(None) == 0


def test_the_threshold_is_the_anchor_of_that_score_at_that_time():
    at = T0 + timedelta(days=10)
    assert anchor_threshold(0, at) is None
    assert score_at(anchor_threshold(55, at), at) == pytest.approx(55)
    assert math.isfinite(anchor_threshold(1, at))


def _sendgrid(client, event, message, when, **extra):
    body = payloads.sendgrid_event(event, message.to_email, message.pk, timestamp=int(when.timestamp()), **extra)
    assert post_sendgrid(client, [body]).status_code == 200


def test_opens_and_clicks_from_the_esp_count_once_per_message_and_raise_the_score(client):
    ann = SubscriberFactory(email="ann@example.org")
    first, second = (MessageFactory(to_email="ann@example.org", status=Message.Status.DELIVERED) for _ in range(2))
    now = datetime.now(tz=UTC)
    opened_at = now - timedelta(hours=2)

    _sendgrid(client, "open", first, opened_at, useragent=READER)
    _sendgrid(client, "open", first, opened_at + timedelta(minutes=5), useragent=READER)  # reopened
    _sendgrid(client, "click", first, opened_at + timedelta(minutes=6), url="https://shop.example/a")
    _sendgrid(client, "open", second, opened_at + timedelta(hours=1), useragent=READER)
    esp_events_apply()

    ann.refresh_from_db()
    assert (ann.open_count, ann.click_count, ann.sent_since_open) == (2, 1, 0)
    assert ann.last_open_at == (opened_at + timedelta(hours=1)).replace(microsecond=0)
    assert ann.last_click_at == (opened_at + timedelta(minutes=6)).replace(microsecond=0)
    assert ann.engagement_score == 45  # 10 + 25 + 10, a couple of hours of decay rounds away

    esp_events_apply()  # nothing left to apply: nothing changes
    _sendgrid(client, "open", first, opened_at, useragent=READER)  # the very same event again
    esp_events_apply()
    ann.refresh_from_db()
    assert (ann.open_count, ann.click_count, ann.engagement_score) == (2, 1, 45)


def test_an_open_by_someone_who_is_not_a_subscriber_changes_no_subscriber(client):
    message = MessageFactory(to_email="stranger@example.org", status=Message.Status.DELIVERED)
    SubscriberFactory(email="ann@example.org")
    _sendgrid(client, "open", message, datetime.now(tz=UTC))
    esp_events_apply()
    assert Subscriber.objects.get().open_count == 0
    assert Message.objects.get().opened_at is not None


def test_a_finished_campaign_counts_one_send_for_each_recipient_it_reached():
    ann, bob, cy, dee = (SubscriberFactory(email=f"{n}@example.org") for n in ("ann", "bob", "cy", "dee"))
    Subscriber.objects.filter(pk=bob.pk).update(sent_since_open=4, sent_count=4)
    mailing = MailingFactory()
    MessageFactory(mailing=mailing, to_email="ann@example.org", status=Message.Status.DELIVERED)
    MessageFactory(
        mailing=mailing, to_email="bob@example.org", status=Message.Status.DELIVERED, opened_at=datetime.now(tz=UTC)
    )  # opened before the campaign was closed
    MessageFactory(mailing=mailing, to_email="cy@example.org", status=Message.Status.BOUNCED)
    MessageFactory(mailing=mailing, to_email="dee@example.org", status=Message.Status.SUPPRESSED)
    campaign = CampaignFactory(status=Campaign.Status.SENDING, mailing=mailing)

    assert campaign_finish(campaign_id=campaign.pk, mailing_id=mailing.pk) == 1
    assert campaign_finish(campaign_id=campaign.pk, mailing_id=mailing.pk) == 0  # counted once

    counts = dict(Subscriber.objects.values_list("email", "sent_count"))
    assert counts == {"ann@example.org": 1, "bob@example.org": 5, "cy@example.org": 1, "dee@example.org": 0}
    streaks = dict(Subscriber.objects.values_list("email", "sent_since_open"))
    assert streaks == {"ann@example.org": 1, "bob@example.org": 0, "cy@example.org": 1, "dee@example.org": 0}
    assert Subscriber.objects.get(email="ann@example.org").last_sent_at is not None
    assert Subscriber.objects.get(email="dee@example.org").last_sent_at is None


def test_engagement_feeds_segments(client):
    ann = SubscriberFactory(email="ann@example.org")
    SubscriberFactory(email="bob@example.org")
    message = MessageFactory(to_email="ann@example.org", status=Message.Status.DELIVERED)
    _sendgrid(client, "click", message, datetime.now(tz=UTC) - timedelta(days=1), url="https://shop.example/")
    esp_events_apply()

    def emails(rule):
        return list(segment_subscribers(rule).values_list("email", flat=True))

    assert emails({"field": "clicked", "op": "within_days", "value": 7}) == [ann.email]
    assert emails({"field": "score", "op": "gte", "value": 24}) == [ann.email]
    assert emails({"field": "score", "op": "gte", "value": 26}) == []
    assert emails({"field": "opened", "op": "never"}) == ["ann@example.org", "bob@example.org"]
    assert engagement_sent_record(mailing_id=message.mailing_id) == 1
