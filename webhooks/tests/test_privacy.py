"""The ESP event inbox's part in a subscriber's privacy export and erasure (webhooks.privacy)."""

import pytest

from core.addresses import address_hash
from delivery.models import Message, Suppression
from subscribers import personal_data
from subscribers.models import Subscriber
from subscribers.services import subscriber_erase
from tests.factories import MessageFactory, SubscriberFactory
from webhooks.models import EspEvent
from webhooks.privacy import esp_events_erase, esp_events_export
from webhooks.services import esp_events_apply
from webhooks.tests import payloads
from webhooks.tests.test_webhooks import post_sendgrid, post_ses

pytestmark = pytest.mark.django_db


def test_the_events_are_registered_for_the_subscribers_privacy_requests():
    assert [(c.name, c.exporter, c.eraser) for c in personal_data.contributors()] == [
        ("events", esp_events_export, esp_events_erase)
    ]


def test_erasure_blanks_what_an_event_says_about_the_person_and_keeps_the_event(client):
    ann = MessageFactory(to_email="ann@example.org", status=Message.Status.SENT)
    bob = MessageFactory(to_email="bob@example.org", status=Message.Status.SENT)
    post_ses(client, payloads.ses_notification("Bounce", ann.to_email, ann.pk))
    post_sendgrid(
        client,
        [
            payloads.sendgrid_event("click", ann.to_email, ann.pk, url="https://x.example/", useragent="Mail/1.0"),
            payloads.sendgrid_event("open", bob.to_email, bob.pk, useragent="Mail/1.0"),
        ],
    )
    ses_key = EspEvent.objects.get(esp="amazon_ses").dedupe_key
    bob_before = EspEvent.objects.values().get(recipient=bob.to_email)
    assert [(e["type"], e["url"], e["user_agent"], e["esp"]) for e in esp_events_export(email=ann.to_email)] == [
        ("clicked", "https://x.example/", "Mail/1.0", "sendgrid"),
        ("bounced", "", "", "amazon_ses"),
    ]

    erased = esp_events_erase(email="Ann@Example.org")

    assert erased == 2
    assert list(
        EspEvent.objects.filter(mailer_message_id=ann.pk)
        .order_by("esp")
        .values_list(
            "esp", "event_type", "recipient", "user_agent", "click_url", "mta_response", "description", "payload"
        )
    ) == [
        ("amazon_ses", "bounced", "", "", "", "", "", {}),
        ("sendgrid", "clicked", "", "", "", "", "", {}),
    ]
    assert EspEvent.objects.get(esp="amazon_ses").dedupe_key == ses_key.replace(
        "ann@example.org", address_hash("ann@example.org")
    )
    assert EspEvent.objects.values().get(recipient=bob.to_email) == bob_before


def test_a_late_event_about_an_erased_person_keeps_no_address(client):
    message = MessageFactory(to_email="ann@example.org", status=Message.Status.SENT)
    SubscriberFactory(email="ann@example.org")
    subscriber_erase(subscriber=Subscriber.objects.get(), source="test")

    post_sendgrid(client, [payloads.sendgrid_event("bounce", "ann@example.org", message.pk)])
    esp_events_apply()

    event = EspEvent.objects.get()
    assert (event.recipient, event.outcome, event.payload) == ("", "erased", {})
    suppression = Suppression.objects.get()
    assert (suppression.email, suppression.email_hash) == (None, address_hash("ann@example.org"))
    assert not Subscriber.objects.exists()
