import base64
import json

import pytest
from django.conf import settings

from delivery.models import Message, Suppression
from subscribers.models import Subscriber, Subscription
from tests.factories import MessageFactory, SubscriptionFactory
from webhooks.models import EspEvent
from webhooks.services import esp_events_apply
from webhooks.tests import payloads, signed_payloads

pytestmark = pytest.mark.django_db


def _auth(secret: str | None = None) -> dict:
    secret = secret or settings.MAILER_WEBHOOK_SECRETS[0]
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(secret.encode()).decode()}


def post_sendgrid(client, events, **auth):
    return client.post("/webhooks/sendgrid/tracking/", json.dumps(events), "application/json", **(auth or _auth()))


def post_postmark(client, event, **auth):
    return client.post("/webhooks/postmark/tracking/", json.dumps(event), "application/json", **(auth or _auth()))


def post_ses(client, envelope, **auth):
    envelope = signed_payloads.sns_signed(envelope)  # as SNS signs it, with this run's trusted test key
    return client.post(
        "/webhooks/amazon_ses/tracking/",
        json.dumps(envelope),
        "text/plain; charset=UTF-8",
        HTTP_X_AMZ_SNS_MESSAGE_TYPE=envelope["Type"],
        HTTP_X_AMZ_SNS_MESSAGE_ID=envelope["MessageId"],
        **(auth or _auth()),
    )


@pytest.fixture
def message():
    return MessageFactory(to_email="ann@example.org", status=Message.Status.SENT)


@pytest.mark.parametrize("auth", [{}, _auth("mailer:wrong"), {"HTTP_AUTHORIZATION": "Bearer x"}])
def test_a_webhook_without_the_right_basic_auth_gets_401_and_stores_nothing(client, message, auth):
    body = json.dumps([payloads.sendgrid_event("delivered", message.to_email, message.pk)])

    response = client.post("/webhooks/sendgrid/tracking/", body, "application/json", **auth)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")
    assert not EspEvent.objects.exists()


def test_both_secrets_are_accepted_while_one_is_rotated_out(client, message):
    old = settings.MAILER_WEBHOOK_SECRETS[1]

    response = post_sendgrid(client, [payloads.sendgrid_event("delivered", message.to_email, message.pk)], **_auth(old))

    assert response.status_code == 200
    assert EspEvent.objects.count() == 1


@pytest.mark.parametrize("body", ["{not json", "", '"a string"'])
def test_a_malformed_body_gets_400_and_stores_nothing(client, body):
    response = client.post("/webhooks/postmark/tracking/", body, "application/json", **_auth())

    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]
    assert not EspEvent.objects.exists()


def test_the_same_event_posted_twice_is_stored_once(client, message):
    event = payloads.sendgrid_event("delivered", message.to_email, message.pk, sg_event_id="sg-fixed-1")

    assert post_sendgrid(client, [event]).status_code == 200
    assert post_sendgrid(client, [event, event]).status_code == 200

    assert EspEvent.objects.count() == 1
    stored = EspEvent.objects.get()
    assert (stored.esp, stored.event_type, stored.recipient, stored.mailer_message_id) == (
        "sendgrid",
        "delivered",
        "ann@example.org",
        message.pk,
    )


def test_sendgrid_delivery_then_bounce_is_applied_and_suppresses(client, message):
    subscription = SubscriptionFactory(subscriber__email=message.to_email)
    events = [
        payloads.sendgrid_event("delivered", message.to_email, message.pk),
        payloads.sendgrid_event("bounce", message.to_email, message.pk),
    ]
    post_sendgrid(client, events)

    assert esp_events_apply().applied == 2

    message.refresh_from_db()
    assert message.status == Message.Status.BOUNCED
    assert Suppression.objects.get(email=message.to_email).reason == Suppression.Reason.HARD_BOUNCE
    subscription.subscriber.refresh_from_db()
    assert subscription.subscriber.status == Subscriber.Status.CLEANED


def test_a_late_delivery_never_overwrites_a_bounce(client, message):
    post_postmark(client, payloads.postmark_bounce(message.to_email, message.pk))
    esp_events_apply()
    post_postmark(client, payloads.postmark_delivery(message.to_email, message.pk))
    esp_events_apply()

    message.refresh_from_db()
    assert message.status == Message.Status.BOUNCED


def test_postmark_soft_bounce_does_not_suppress(client, message):
    post_postmark(client, payloads.postmark_bounce(message.to_email, message.pk, bounce_type="SoftBounce"))
    esp_events_apply()

    assert not Suppression.objects.exists()


def test_postmark_complaint_suppresses_and_unsubscribes_from_every_list(client, message):
    first = SubscriptionFactory(subscriber__email=message.to_email)
    second = SubscriptionFactory(subscriber=first.subscriber)
    post_postmark(client, payloads.postmark_bounce(message.to_email, message.pk, bounce_type="SpamComplaint"))

    esp_events_apply()

    message.refresh_from_db()
    assert message.status == Message.Status.COMPLAINED
    assert Suppression.objects.get(email=message.to_email).reason == Suppression.Reason.COMPLAINT
    assert {s.status for s in Subscription.objects.filter(pk__in=[first.pk, second.pk])} == {"unsubscribed"}


def test_ses_permanent_bounce_suppresses_but_transient_does_not(client):
    hard = MessageFactory(to_email="hard@example.org", status=Message.Status.SENT)
    soft = MessageFactory(to_email="soft@example.org", status=Message.Status.SENT)

    assert post_ses(client, payloads.ses_notification("Bounce", hard.to_email, hard.pk)).status_code == 200
    assert post_ses(client, payloads.ses_notification("Bounce", soft.to_email, soft.pk, bounce_type="Transient"))
    esp_events_apply()

    assert list(Suppression.objects.values_list("email", flat=True)) == ["hard@example.org"]
    hard.refresh_from_db()
    soft.refresh_from_db()
    assert (hard.status, soft.status) == (Message.Status.BOUNCED, Message.Status.BOUNCED)


def test_ses_delivery_and_complaint_find_the_message_by_our_metadata(client, message):
    post_ses(client, payloads.ses_notification("Delivery", message.to_email, message.pk))
    post_ses(client, payloads.ses_notification("Complaint", message.to_email, message.pk))

    assert esp_events_apply().applied == 2

    message.refresh_from_db()
    assert message.status == Message.Status.COMPLAINED
    assert message.delivered_at is not None
    assert Suppression.objects.filter(email=message.to_email, reason="complaint").exists()


def test_an_ses_notification_without_the_sns_headers_is_refused(client, message):
    envelope = payloads.ses_notification("Bounce", message.to_email, message.pk)

    response = client.post("/webhooks/amazon_ses/tracking/", json.dumps(envelope), "text/plain", **_auth())

    assert response.status_code == 400
    assert not EspEvent.objects.exists()


def test_an_event_for_an_unknown_message_is_stored_as_an_orphan_and_changes_nothing(client):
    post_sendgrid(client, [payloads.sendgrid_event("delivered", "nobody@example.org", 999_999)])

    assert esp_events_apply().applied == 1

    assert EspEvent.objects.get().outcome == "orphan"
    assert not Suppression.objects.exists()


def test_applying_twice_changes_nothing_more(client, message):
    post_sendgrid(client, [payloads.sendgrid_event("bounce", message.to_email, message.pk)])

    assert esp_events_apply().applied == 1
    assert esp_events_apply().applied == 0
    assert Suppression.objects.count() == 1


def test_an_event_waits_while_the_send_is_not_recorded_yet(client):
    pending = MessageFactory(to_email="early@example.org", status=Message.Status.SENDING)
    post_sendgrid(client, [payloads.sendgrid_event("delivered", pending.to_email, pending.pk)])

    result = esp_events_apply()
    assert (result.applied, result.waiting) == (0, 1)

    Message.objects.filter(pk=pending.pk).update(status=Message.Status.SENT)
    assert esp_events_apply().applied == 1
    pending.refresh_from_db()
    assert pending.status == Message.Status.DELIVERED


def test_an_oversized_body_gets_413_and_stores_nothing(client, message):
    event = payloads.sendgrid_event("delivered", message.to_email, message.pk, padding="x" * (6 * 1024 * 1024))

    response = post_sendgrid(client, [event])

    assert response.status_code == 413
    assert "byte limit" in response.json()["error"]["message"]
    assert not EspEvent.objects.exists()


def test_a_postmark_event_without_metadata_finds_its_message_by_esp_id_and_recipient(client):
    """Postmark's older open events carry no Metadata: the ESP's message id and the recipient still match."""
    message = MessageFactory(to_email="ann@example.org", status=Message.Status.SENT, esp_message_id="pm-123")
    post_postmark(client, payloads.postmark_delivery(message.to_email, None, message_id="pm-123"))

    assert esp_events_apply().applied == 1

    message.refresh_from_db()
    assert message.status == Message.Status.DELIVERED
