import pytest
from django.test import Client

from delivery.models import Mailing, Suppression
from delivery.unsubscribe import unsubscribe_token_make
from subscribers.models import Subscriber, Subscription
from tests.factories import MailingFactory, MessageFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent():
    """Ann is on two lists; a campaign went to the first one."""
    news = SubscriptionFactory(subscriber__email="ann@example.org")
    other = SubscriptionFactory(subscriber=news.subscriber)
    mailing = MailingFactory(owner_data={"list_ids": [news.mailing_list_id]})
    message = MessageFactory(mailing=mailing, to_email="ann@example.org")
    return {"news": news, "other": other, "message": message, "url": f"/u/{unsubscribe_token_make(message.pk)}/"}


def test_get_shows_a_confirmation_and_changes_nothing(sent):
    response = Client().get(sent["url"])

    assert response.status_code == 200
    assert "ann@example.org" in response.content.decode()
    assert '<form method="post"' in response.content.decode()
    sent["news"].refresh_from_db()
    assert sent["news"].status == Subscription.Status.ACTIVE


def test_one_click_post_unsubscribes_from_the_mailings_lists_without_cookie_or_csrf(sent):
    client = Client(enforce_csrf_checks=True)

    response = client.post(sent["url"], {"List-Unsubscribe": "One-Click"})

    assert response.status_code == 200
    assert "You are unsubscribed" in response.content.decode()
    sent["news"].refresh_from_db()
    sent["other"].refresh_from_db()
    assert sent["news"].status == Subscription.Status.UNSUBSCRIBED
    assert sent["other"].status == Subscription.Status.ACTIVE
    assert client.post(sent["url"]).status_code == 200  # a repeated POST is harmless


def test_a_mailing_that_named_no_list_unsubscribes_from_everything(sent):
    Mailing.objects.filter(pk=sent["message"].mailing_id).update(owner_data={})

    Client().post(sent["url"])

    subscriber = Subscriber.objects.get(email="ann@example.org")
    assert subscriber.status == Subscriber.Status.UNSUBSCRIBED
    assert set(subscriber.subscriptions.values_list("status", flat=True)) == {"unsubscribed"}


def test_an_address_that_is_no_subscriber_is_suppressed():
    message = MessageFactory(to_email="walk-in@example.org")

    Client().post(f"/u/{unsubscribe_token_make(message.pk)}/")

    assert Suppression.objects.get(email="walk-in@example.org").reason == Suppression.Reason.UNSUBSCRIBE


@pytest.mark.parametrize("token", ["garbage", "1:forged-signature"])
def test_an_altered_link_is_refused_and_changes_nothing(sent, token):
    response = Client().post(f"/u/{token}/")

    assert response.status_code == 404
    assert "not valid" in response.content.decode()
    sent["news"].refresh_from_db()
    assert sent["news"].status == Subscription.Status.ACTIVE
