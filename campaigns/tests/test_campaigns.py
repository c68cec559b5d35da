from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.exceptions import CampaignNotSendable
from campaigns.models import Campaign
from campaigns.services import (
    Audience,
    audience_materialize,
    campaign_cancel,
    campaign_pause,
    campaign_resume,
    campaign_schedule,
    campaign_send,
    campaigns_dispatch_due,
)
from delivery.models import Message
from delivery.services import mailing_create, mailing_send_chunk, mailings_pump
from subscribers.engagement import anchor_after
from subscribers.models import Segment, Subscriber, Subscription
from tests.factories import (
    CampaignFactory,
    MailingListFactory,
    SubscriberFactory,
    SubscriptionFactory,
    SuppressionFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def audience():
    """Two lists; five people of whom exactly two may receive mail."""
    news, other = MailingListFactory(), MailingListFactory()
    ok = SubscriptionFactory(mailing_list=news, subscriber=SubscriberFactory(attributes={"city": "Oslo"}))
    on_both = SubscriptionFactory(mailing_list=news)
    SubscriptionFactory(mailing_list=other, subscriber=on_both.subscriber)
    SubscriptionFactory(mailing_list=news, status=Subscription.Status.UNSUBSCRIBED)
    SubscriptionFactory(mailing_list=news, subscriber=SubscriberFactory(status=Subscriber.Status.CLEANED))
    suppressed = SubscriptionFactory(mailing_list=news)
    SuppressionFactory(email=suppressed.subscriber.email)
    return {
        "lists": [news, other],
        "recipients": {ok.subscriber.email, on_both.subscriber.email},
        "ok": ok,
        "suppressed": suppressed.subscriber.email,
    }


def test_fan_out_creates_one_message_per_eligible_recipient_once(audience):
    mailing = mailing_create(subject_template="s", html_template="h", text_template="t", from_email="a@b.example")
    list_ids = [lst.pk for lst in audience["lists"]]

    first = audience_materialize(mailing=mailing, audience=Audience(list_ids=list_ids))
    second = audience_materialize(mailing=mailing, audience=Audience(list_ids=list_ids))

    assert first == 3
    assert second == 0
    queued = Message.objects.filter(status=Message.Status.QUEUED)
    assert set(queued.values_list("to_email", flat=True)) == audience["recipients"]
    suppressed = Message.objects.get(status=Message.Status.SUPPRESSED)
    assert suppressed.to_email == audience["suppressed"]
    message = Message.objects.get(to_email=audience["ok"].subscriber.email)
    assert message.context == {
        "email": audience["ok"].subscriber.email,
        "name": audience["ok"].subscriber.name,
        "attributes": {"city": "Oslo"},
    }
    assert message.status == Message.Status.QUEUED


def test_send_now_freezes_the_content_and_builds_the_audience(audience, django_capture_on_commit_callbacks):
    campaign = CampaignFactory()
    campaign.lists.set(audience["lists"])

    with django_capture_on_commit_callbacks() as callbacks:
        campaign = campaign_send(campaign=campaign)

    assert campaign.status == Campaign.Status.SENDING
    assert campaign.mailing.subject_template == campaign.template.subject
    assert campaign.mailing.owner_data == {
        "campaign_id": campaign.pk,
        "list_ids": [lst.pk for lst in audience["lists"]],
    }
    assert campaign.mailing.messages.filter(status=Message.Status.QUEUED).count() == 2
    assert len(callbacks) == 1  # the sending tasks are started once the transaction commits

    campaign.template.subject = "Changed"
    campaign.template.save()
    campaign.mailing.refresh_from_db()
    assert campaign.mailing.subject_template == "Hello {{ name }}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"template": None}, "has no template"),
        ({"lists": []}, "targets no list"),
        ({"from_email": ""}, "has no sender address"),
    ],
)
def test_a_campaign_that_cannot_go_out_says_why_and_stays_a_draft(audience, change, message):
    campaign = CampaignFactory()
    campaign.lists.set(change.pop("lists", audience["lists"]))
    for field, value in change.items():
        setattr(campaign, field, value)
    campaign.save()

    with pytest.raises(CampaignNotSendable, match=message):
        campaign_send(campaign=campaign)

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert campaign.mailing is None
    assert not Message.objects.exists()


def test_a_campaign_without_recipients_is_refused():
    campaign = CampaignFactory()
    empty = MailingListFactory()
    SubscriptionFactory(mailing_list=empty, status=Subscription.Status.UNSUBSCRIBED)
    campaign.lists.set([empty])

    with pytest.raises(CampaignNotSendable, match="has no recipients"):
        campaign_send(campaign=campaign)


def test_a_schedule_in_the_past_is_refused(audience):
    campaign = CampaignFactory()
    campaign.lists.set(audience["lists"])

    with pytest.raises(CampaignNotSendable, match="is in the past"):
        campaign_schedule(campaign=campaign, at=timezone.now() - timedelta(minutes=1))

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


def test_a_scheduled_campaign_starts_when_due_and_only_once(audience, django_capture_on_commit_callbacks):
    campaign = CampaignFactory()
    campaign.lists.set(audience["lists"])
    campaign_schedule(campaign=campaign, at=timezone.now() + timedelta(hours=1))

    assert campaigns_dispatch_due() == {"started": 0, "finished": 0}

    Campaign.objects.filter(pk=campaign.pk).update(scheduled_at=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks():
        assert campaigns_dispatch_due()["started"] == 1
        assert campaigns_dispatch_due()["started"] == 0

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING
    assert campaign.mailing.messages.filter(status=Message.Status.QUEUED).count() == 2


def test_a_sending_campaign_is_marked_sent_when_nothing_is_pending(audience, django_capture_on_commit_callbacks):
    campaign = CampaignFactory()
    campaign.lists.set(audience["lists"])
    with django_capture_on_commit_callbacks():
        campaign = campaign_send(campaign=campaign)
    campaign.mailing.messages.update(status=Message.Status.SENT)

    assert campaigns_dispatch_due()["finished"] == 1

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    assert campaign.finished_at is not None


def test_cancel_stops_queued_messages(audience, django_capture_on_commit_callbacks):
    campaign = CampaignFactory()
    campaign.lists.set(audience["lists"])
    with django_capture_on_commit_callbacks():
        campaign = campaign_send(campaign=campaign)

    campaign_cancel(campaign=campaign)

    assert set(campaign.mailing.messages.values_list("status", flat=True)) == {
        Message.Status.CANCELLED,
        Message.Status.SUPPRESSED,
    }
    with pytest.raises(CampaignNotSendable):
        campaign_send(campaign=campaign)


def test_a_campaign_aimed_at_a_segment_minus_an_exclusion_list_reaches_exactly_those(
    audience, django_capture_on_commit_callbacks
):
    news, other = audience["lists"]
    staff = MailingListFactory(slug="staff")
    oslo_staff = SubscriptionFactory(mailing_list=news, subscriber=SubscriberFactory(attributes={"city": "oslo"}))
    SubscriptionFactory(mailing_list=staff, subscriber=oslo_staff.subscriber)
    segment = Segment.objects.create(name="Oslo", rules={"field": "attribute.city", "op": "eq", "value": "Oslo"})
    campaign = CampaignFactory(segment=segment)
    campaign.lists.set([news])
    campaign.exclude_lists.set([staff])

    with django_capture_on_commit_callbacks():
        campaign = campaign_send(campaign=campaign)

    messages = Message.objects.filter(mailing=campaign.mailing)
    assert list(messages.values_list("to_email", "status")) == [(audience["ok"].subscriber.email, "queued")]
    assert campaign.mailing.owner_data["list_ids"] == [news.pk]


def test_a_campaign_whose_segment_matches_nobody_is_refused_and_stays_a_draft(audience):
    segment = Segment.objects.create(name="Nobody", rules={"field": "domain", "op": "eq", "value": "nowhere.example"})
    campaign = CampaignFactory(name="Empty aim", segment=segment)

    with pytest.raises(CampaignNotSendable) as caught:
        campaign_send(campaign=campaign)

    assert caught.value.message == (
        "Campaign 'Empty aim' has no recipients: no active, unsuppressed subscriber with a confirmed subscription "
        "matches its lists, segment and exclusions."
    )
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert not Message.objects.exists()


def test_a_campaign_whose_segment_went_bad_is_refused_naming_the_rule(audience):
    segment = Segment.objects.create(name="Gone", rules={"field": "list", "op": "in", "value": ["deleted-list"]})
    campaign = CampaignFactory(name="Stale", segment=segment)

    with pytest.raises(CampaignNotSendable) as caught:
        campaign_send(campaign=campaign)

    assert caught.value.message == (
        "Campaign 'Stale': its segment is not valid. Segment rule rules.value: no list with slug 'deleted-list'."
    )


def test_the_most_engaged_subscribers_are_queued_first():
    news = MailingListFactory()
    now = timezone.now()
    scores = {"never@example.org": None, "low@example.org": 5, "high@example.org": 90, "mid@example.org": 40}
    for email, points in scores.items():
        anchor = None if points is None else anchor_after(None, points=points, at=now)
        SubscriptionFactory(mailing_list=news, subscriber=SubscriberFactory(email=email, score_anchor=anchor))
    mailing = mailing_create(subject_template="s", html_template="h", text_template="t", from_email="a@b.example")

    audience_materialize(mailing=mailing, audience=Audience(list_ids=[news.pk]))

    assert list(Message.objects.order_by("pk").values_list("to_email", flat=True)) == [
        "high@example.org",
        "mid@example.org",
        "low@example.org",
        "never@example.org",
    ]


def test_a_subscriber_pending_confirmation_gets_no_message(audience):
    news = audience["lists"][0]
    SubscriptionFactory(mailing_list=news, status=Subscription.Status.PENDING)
    mailing = mailing_create(subject_template="s", html_template="h", text_template="t", from_email="a@b.example")

    audience_materialize(mailing=mailing, audience=Audience(list_ids=[news.pk]))

    assert set(Message.objects.values_list("to_email", flat=True)) == audience["recipients"] | {audience["suppressed"]}


def test_pause_takes_effect_at_the_next_chunk_and_resume_sends_the_rest_once(
    sandbox, django_capture_on_commit_callbacks
):
    news = MailingListFactory()
    for _ in range(10):
        SubscriptionFactory(mailing_list=news)
    campaign = CampaignFactory()
    campaign.lists.set([news])
    with django_capture_on_commit_callbacks():
        campaign = campaign_send(campaign=campaign)
    mailing_id = campaign.mailing_id

    assert mailing_send_chunk(mailing_id=mailing_id, chunk_size=4).sent == 4
    campaign = campaign_pause(campaign=campaign)
    assert campaign.status == Campaign.Status.PAUSED
    assert mailing_send_chunk(mailing_id=mailing_id, chunk_size=4).claimed == 0
    assert mailings_pump() == []
    assert len(sandbox.messages) == 4

    with django_capture_on_commit_callbacks() as callbacks:
        campaign = campaign_resume(campaign=campaign)
    assert campaign.status == Campaign.Status.SENDING
    assert len(callbacks) == 1  # sending starts again once this commits
    while mailing_send_chunk(mailing_id=mailing_id, chunk_size=4).claimed:
        pass

    received = [m.to[0] for m in sandbox.messages]
    assert len(received) == len(set(received)) == 10


def test_only_a_sending_campaign_can_be_paused_and_only_a_paused_one_resumed():
    campaign = CampaignFactory(name="Draft")

    with pytest.raises(CampaignNotSendable) as paused:
        campaign_pause(campaign=campaign)
    with pytest.raises(CampaignNotSendable) as resumed:
        campaign_resume(campaign=campaign)

    assert paused.value.message == "Campaign 'Draft' is draft; only a sending campaign can be paused."
    assert resumed.value.message == "Campaign 'Draft' is draft; only a paused campaign can be resumed."


@pytest.mark.parametrize("sender", ["News <news@>", "not an address", "News <news@mailer..example>"])
def test_a_campaign_with_an_invalid_sender_is_refused_and_nothing_is_created(audience, sender):
    campaign = CampaignFactory(name="Bad sender", from_email=sender)
    campaign.lists.set(audience["lists"])

    with pytest.raises(CampaignNotSendable) as caught:
        campaign_send(campaign=campaign)

    assert caught.value.message == f"Campaign 'Bad sender': the sender {sender!r} is not a valid address."
    assert not Message.objects.exists()
