"""The admin doors call the same services as the API will; errors come back as admin messages."""

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign
from campaigns.services.demo import DEMO_SIZE, SIMULATOR_ADDRESSES, demo_data_ensure
from delivery.models import Message
from subscribers.models import Segment, Subscriber
from subscribers.selectors import segment_count
from tests.factories import CampaignFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_send_now_from_the_admin_starts_the_campaign_and_the_page_shows_counts(
    admin_client, django_capture_on_commit_callbacks
):
    subscription = SubscriptionFactory()
    campaign = CampaignFactory(name="Spring")
    campaign.lists.set([subscription.mailing_list])

    with django_capture_on_commit_callbacks():
        response = admin_client.post(
            "/admin/campaigns/campaign/", {"action": "send_now", "_selected_action": [campaign.pk]}, follow=True
        )

    assert _messages(response) == ["Spring: sending started."]
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING
    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert '<td>Queued</td><td style="text-align:right">1</td>' in page


def test_an_unsendable_campaign_gets_a_clear_admin_error(admin_client):
    campaign = CampaignFactory(name="Empty")

    response = admin_client.post(
        "/admin/campaigns/campaign/", {"action": "send_now", "_selected_action": [campaign.pk]}, follow=True
    )

    assert _messages(response) == ["Campaign 'Empty' targets no list and no segment."]
    assert not Message.objects.exists()


def test_schedule_from_the_admin(admin_client):
    subscription = SubscriptionFactory()
    campaign = CampaignFactory(name="Later")
    campaign.lists.set([subscription.mailing_list])
    response = admin_client.post(
        "/admin/campaigns/campaign/", {"action": "schedule", "_selected_action": [campaign.pk]}
    )
    assert response.status_code == 302
    at = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")

    response = admin_client.post(response["Location"], {"scheduled_at": at}, follow=True)

    assert _messages(response)[0].startswith("Later: scheduled for")
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SCHEDULED


def test_a_schedule_in_the_past_from_the_admin_is_refused(admin_client):
    subscription = SubscriptionFactory()
    campaign = CampaignFactory(name="Past")
    campaign.lists.set([subscription.mailing_list])
    at = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")

    response = admin_client.post(
        f"/admin/campaigns/campaign/schedule/?ids={campaign.pk}", {"scheduled_at": at}, follow=True
    )

    assert "is in the past" in _messages(response)[0]
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


@pytest.mark.parametrize(
    "path",
    [
        "/admin/campaigns/campaign/",
        "/admin/campaigns/template/",
        "/admin/subscribers/subscriber/",
        "/admin/subscribers/mailinglist/",
        "/admin/subscribers/subscription/",
        "/admin/delivery/message/",
        "/admin/delivery/mailing/",
        "/admin/delivery/suppression/",
        "/admin/delivery/provider/",
        "/admin/webhooks/espevent/",
    ],
)
def test_every_admin_list_page_renders(admin_client, path):
    demo_data_ensure(size=20)

    assert admin_client.get(path).status_code == 200
    assert admin_client.get(path, {"q": "demo"}).status_code == 200


def test_demo_data_is_made_once():
    first = demo_data_ensure()
    second = demo_data_ensure()

    assert first.subscribers_created == DEMO_SIZE
    assert second.subscribers_created == 0
    assert Subscriber.objects.count() == DEMO_SIZE
    assert set(SIMULATOR_ADDRESSES) <= set(Subscriber.objects.values_list("email", flat=True))
    assert first.mailing_list.subscriptions.count() == DEMO_SIZE
    assert second.campaign.pk == first.campaign.pk
    # the example segments are valid rules that pick part of the list
    pro = Segment.objects.get(name="Demo: pro plan in Oslo or Lisbon")
    assert 0 < segment_count(segment=pro) < DEMO_SIZE
    assert segment_count(segment=Segment.objects.get(name="Demo: opened in the last 30 days")) == 0


def test_the_campaign_page_shows_how_many_the_audience_reaches_now(admin_client):
    subscription = SubscriptionFactory()
    SubscriptionFactory(mailing_list=subscription.mailing_list)
    campaign = CampaignFactory(name="Aim")
    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert "No list or segment chosen yet." in page

    campaign.lists.set([subscription.mailing_list])
    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert '<div class="readonly">2</div>' in page
