"""The inbox through the webhook URLs: each POST is stored by one INSERT, all of it or nothing; bad input gets a 4xx
and stores nothing; strays (unknown event types, unknown messages) are stored as such; a replay stores nothing new.
Payloads are in each ESP's documented format (payloads.py); SES comes signed as SNS signs it (signed_payloads.py).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from anymail.signals import AnymailTrackingEvent, tracking
from django.conf import settings
from django.db import OperationalError, connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from delivery.models import Message, Suppression
from tests.factories import MessageFactory
from webhooks import inbox
from webhooks.models import EspEvent
from webhooks.services import esp_events_apply, esp_events_apply_soon
from webhooks.tests import payloads, signed_payloads

pytestmark = pytest.mark.django_db

SENDGRID = "/webhooks/sendgrid/tracking/"
POSTMARK = "/webhooks/postmark/tracking/"
SES = "/webhooks/amazon_ses/tracking/"


def _auth() -> dict[str, str]:
    secret = settings.MAILER_WEBHOOK_SECRETS[0]
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(secret.encode()).decode()}


def post_sendgrid(client: Client, events: list[dict], content_type: str = "application/json"):
    return client.post(SENDGRID, json.dumps(events), content_type, **_auth())


def post_postmark(client: Client, event: dict, content_type: str = "application/json"):
    return client.post(POSTMARK, json.dumps(event), content_type, **_auth())


def post_ses(client: Client, envelope: dict, content_type: str = "text/plain; charset=UTF-8"):
    signed = signed_payloads.sns_signed(envelope)
    return client.post(
        SES,
        json.dumps(signed),
        content_type,
        HTTP_X_AMZ_SNS_MESSAGE_TYPE=signed["Type"],
        HTTP_X_AMZ_SNS_MESSAGE_ID=signed["MessageId"],
        **_auth(),
    )


def _stored() -> list[tuple]:
    return list(EspEvent.objects.order_by("pk").values_list("esp", "event_type", "recipient", "mailer_message_id"))


@pytest.fixture
def message() -> Message:
    return MessageFactory(to_email="ann@example.org", status=Message.Status.SENT, esp_message_id="esp-ann-1")


@pytest.fixture
def earlier_event(message: Message) -> EspEvent:
    """An event stored by an earlier POST: a failed POST must leave it as it was."""
    event = payloads.sendgrid_event("delivered", message.to_email, message.pk, sg_event_id="sg-earlier")
    response = post_sendgrid(Client(), [event])
    assert response.status_code == 200
    return EspEvent.objects.get()


# --- one POST, one statement, one apply request


def test_a_sendgrid_post_of_1000_events_is_stored_by_one_insert_and_asks_for_one_apply_run(
    client, message, django_capture_on_commit_callbacks
):
    events = [payloads.sendgrid_event("open", message.to_email, message.pk, sg_event_id=f"sg-{i}") for i in range(1000)]

    with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks() as callbacks:
        response = post_sendgrid(client, events)

    assert response.status_code == 200
    inserts = [q["sql"] for q in queries.captured_queries if "webhooks_espevent" in q["sql"]]
    assert len(inserts) == 1
    assert inserts[0].startswith('INSERT INTO "webhooks_espevent"')
    assert EspEvent.objects.filter(event_type="opened", mailer_message_id=message.pk).count() == 1000
    assert callbacks == [esp_events_apply_soon]


def test_the_events_of_a_post_are_stored_in_the_order_the_esp_sent_them(client, message):
    kinds = ["delivered", "open", "click", "bounce"]
    events = [payloads.sendgrid_event(kind, message.to_email, message.pk) for kind in kinds]

    assert post_sendgrid(client, events).status_code == 200

    assert list(EspEvent.objects.order_by("pk").values_list("event_type", flat=True)) == [
        "delivered",
        "opened",
        "clicked",
        "bounced",
    ]


def test_each_esp_event_keeps_its_normalized_fields_and_dedupe_key(client, message):
    sendgrid_bounce = payloads.sendgrid_event("bounce", "Ann@Example.org", message.pk, sg_event_id="sg-bounce-1")
    postmark_click = {
        "RecordType": "Click",
        "MessageStream": "outbound",
        "ClickLocation": "HTML",
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X 10"},
        "Platform": "WebMail",
        "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) Chrome/35.0.1916.153",
        "OriginalLink": "https://mailer.example/articles/1",
        "Geo": {},
        "MessageID": "esp-ann-1",
        "Recipient": "ann@example.org",
        "ReceivedAt": "2026-11-25T16:40:00Z",
        "Tag": "",
        "Metadata": {"mailer_msg": str(message.pk)},
    }
    ses_bounce = payloads.ses_notification("Bounce", message.to_email, message.pk)

    assert post_sendgrid(client, [sendgrid_bounce]).status_code == 200
    assert post_postmark(client, postmark_click).status_code == 200
    assert post_ses(client, ses_bounce).status_code == 200

    fields = [
        "esp",
        "dedupe_key",
        "event_type",
        "recipient",
        "esp_message_id",
        "mailer_message_id",
        "is_hard_bounce",
        "occurred_at",
        "description",
        "mta_response",
        "click_url",
        "user_agent",
        "applied_at",
        "outcome",
    ]
    stored = [dict(zip(fields, row, strict=True)) for row in EspEvent.objects.order_by("pk").values_list(*fields)]
    assert stored[0] == {
        "esp": "sendgrid",
        "dedupe_key": "sg:sg-bounce-1",
        "event_type": "bounced",
        "recipient": "ann@example.org",
        "esp_message_id": "e4e8f1a2-1111-4a9d-9a3b-3f3a3f3a3f3a",
        "mailer_message_id": message.pk,
        "is_hard_bounce": True,
        "occurred_at": datetime.fromtimestamp(1764072000, tz=UTC),
        "description": "",
        "mta_response": "550 5.1.1 The email account does not exist",
        "click_url": "",
        "user_agent": "",
        "applied_at": None,
        "outcome": "",
    }
    assert stored[1]["dedupe_key"].startswith("h:") and len(stored[1]["dedupe_key"]) == 66  # no id: a hash
    assert {k: v for k, v in stored[1].items() if k != "dedupe_key"} == {
        "esp": "postmark",
        "event_type": "clicked",
        "recipient": "ann@example.org",
        "esp_message_id": "esp-ann-1",
        "mailer_message_id": message.pk,
        "is_hard_bounce": False,
        "occurred_at": datetime(2026, 11, 25, 16, 40, tzinfo=UTC),
        "description": "",
        "mta_response": "",
        "click_url": "https://mailer.example/articles/1",
        "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) Chrome/35.0.1916.153",
        "applied_at": None,
        "outcome": "",
    }
    ses = stored[2]
    assert ses["dedupe_key"] == f"ses:{ses_bounce['MessageId']}:ann@example.org:bounced"  # the SNS MessageId
    assert (ses["esp"], ses["event_type"], ses["recipient"], ses["mailer_message_id"], ses["is_hard_bounce"]) == (
        "amazon_ses",
        "bounced",
        "ann@example.org",
        message.pk,
        True,
    )
    assert (ses["esp_message_id"], ses["mta_response"]) == (
        "0100018c-ses-message-id-000000",
        "smtp; 550 5.1.1 user unknown",
    )
    assert EspEvent.objects.get(esp="sendgrid").payload == sendgrid_bounce
    assert EspEvent.objects.get(esp="postmark").payload == postmark_click


def test_the_tracking_signal_outside_a_webhook_post_stores_the_event_at_once(message):
    event = AnymailTrackingEvent(
        event_type="delivered",
        timestamp=datetime(2026, 11, 25, 17, 0, tzinfo=UTC),
        event_id="pm-1",
        recipient=message.to_email,
        message_id="esp-ann-1",
        metadata={"mailer_msg": str(message.pk)},
        esp_event={"RecordType": "Delivery"},
    )

    tracking.send(sender=object, event=event, esp_name="Postmark")

    assert _stored() == [("postmark", "delivered", "ann@example.org", message.pk)]


def test_inside_a_batch_the_signal_only_collects_until_the_batch_is_stored(message):
    event = AnymailTrackingEvent(event_type="opened", recipient=message.to_email, esp_event={"RecordType": "Open"})

    with inbox.inbox_batch() as rows:
        tracking.send(sender=object, event=event, esp_name="Postmark")
        assert not EspEvent.objects.exists()
        assert inbox.esp_events_store(rows=rows) == 1

    assert _stored() == [("postmark", "opened", "ann@example.org", None)]


# --- all or nothing


def test_a_post_whose_storing_fails_half_way_stores_nothing_and_answers_503(
    client, message, earlier_event, monkeypatch, django_capture_on_commit_callbacks
):
    store = inbox.esp_events_store

    def store_half_then_fail(*, rows):
        assert store(rows=rows[: len(rows) // 2]) == len(rows) // 2
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("webhooks.middleware.esp_events_store", store_half_then_fail)
    events = [payloads.sendgrid_event("open", message.to_email, message.pk) for _ in range(10)]

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_sendgrid(client, events)

    assert response.status_code == 503
    assert response.json()["error"]["message"] == (
        "The events could not be stored; none of this POST was kept. Post it again."
    )
    assert list(EspEvent.objects.values_list("pk", "dedupe_key")) == [(earlier_event.pk, "sg:sg-earlier")]
    assert callbacks == []


def test_a_post_whose_receiver_fails_on_an_event_stores_none_of_it_and_answers_500(message, earlier_event, monkeypatch):
    row = inbox.esp_event_row
    calls = []

    def row_failing_on_the_third(*, esp, event):
        calls.append(event)
        if len(calls) == 3:
            raise ValueError("an event this code cannot read")
        return row(esp=esp, event=event)

    monkeypatch.setattr(inbox, "esp_event_row", row_failing_on_the_third)
    events = [payloads.sendgrid_event("delivered", message.to_email, message.pk) for _ in range(5)]

    response = post_sendgrid(Client(raise_request_exception=False), events)

    assert response.status_code == 500
    assert len(calls) == 3
    assert list(EspEvent.objects.values_list("pk", flat=True)) == [earlier_event.pk]


def test_a_replayed_post_stores_nothing_new_and_asks_for_no_apply_run(
    client, message, django_capture_on_commit_callbacks
):
    sendgrid = [payloads.sendgrid_event(kind, message.to_email, message.pk) for kind in ("delivered", "open", "click")]
    postmark = payloads.postmark_bounce(message.to_email, message.pk)
    ses = payloads.ses_notification("Delivery", message.to_email, message.pk)
    assert post_sendgrid(client, sendgrid).status_code == 200
    assert post_postmark(client, postmark).status_code == 200
    assert post_ses(client, ses).status_code == 200
    before = list(EspEvent.objects.order_by("pk").values_list("pk", "dedupe_key", "received_at"))

    with django_capture_on_commit_callbacks() as callbacks:
        answers = [
            post_sendgrid(client, sendgrid).status_code,
            post_sendgrid(client, sendgrid[::-1]).status_code,
            post_postmark(client, postmark).status_code,
            post_ses(client, ses).status_code,
        ]

    assert answers == [200, 200, 200, 200]
    assert len(before) == 5
    assert list(EspEvent.objects.order_by("pk").values_list("pk", "dedupe_key", "received_at")) == before
    assert callbacks == []


def test_the_same_event_twice_in_one_post_is_stored_once(client, message):
    event = payloads.sendgrid_event("click", message.to_email, message.pk, url="https://mailer.example/a")

    assert post_sendgrid(client, [event, event, event]).status_code == 200

    assert _stored() == [("sendgrid", "clicked", "ann@example.org", message.pk)]


# --- bad input: a 4xx, and nothing stored


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        (SENDGRID, '[{"event": "delivered", "email": "ann@example.org"', "application/json"),
        (SENDGRID, b'[{"event": "delivered", "email": "ann\xff@example.org"}]', "application/json"),
        (SENDGRID, b"\xff\xfe[]", "application/json"),
        (POSTMARK, '{"RecordType": "Delivery",}', "application/json"),
        (POSTMARK, "RecordType=Delivery", "application/json"),
        (POSTMARK, "42", "application/json"),
        (SES, "<Notification/>", "text/plain; charset=UTF-8"),
    ],
    ids=["cut-short", "not-utf8", "utf16-bom", "trailing-comma", "form-encoded", "a-number", "xml"],
)
def test_a_body_that_is_not_a_json_object_or_array_gets_400_and_stores_nothing(
    client, earlier_event, path, body, content_type
):
    response = client.post(path, body, content_type, **_auth())

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "webhook_rejected"
    assert "JSON" in response.json()["error"]["message"]
    assert list(EspEvent.objects.values_list("pk", flat=True)) == [earlier_event.pk]


@pytest.mark.parametrize(
    ("path", "content_type", "expected"),
    [
        (SENDGRID, "application/x-www-form-urlencoded", "application/json"),
        (POSTMARK, "multipart/form-data; boundary=xyz", "application/json"),
        (POSTMARK, "text/plain", "application/json"),
        (SES, "application/xml", "text/plain or application/json"),
    ],
)
def test_a_body_of_a_type_the_esp_does_not_send_gets_415_and_stores_nothing(
    client, message, earlier_event, path, content_type, expected
):
    body = json.dumps([payloads.sendgrid_event("delivered", message.to_email, message.pk)])

    response = client.post(path, body, content_type, **_auth())

    assert response.status_code == 415
    media_type = content_type.split(";")[0]
    assert response.json()["error"]["message"] == f"Webhook body must be {expected}, not {media_type}."
    assert list(EspEvent.objects.values_list("pk", flat=True)) == [earlier_event.pk]


def test_sns_json_bodies_are_accepted_as_application_json_too(client, message):
    response = post_ses(client, payloads.ses_notification("Delivery", message.to_email, message.pk), "application/json")

    assert response.status_code == 200
    assert _stored() == [("amazon_ses", "delivered", "ann@example.org", message.pk)]


@pytest.mark.parametrize("path", [SENDGRID, POSTMARK, SES])
def test_an_oversized_body_gets_413_and_stores_nothing(client, earlier_event, path):
    body = json.dumps({"RecordType": "Delivery", "Details": "x" * (5 * 1024 * 1024)})

    response = client.post(path, body, "application/json", **_auth())

    assert response.status_code == 413
    assert response.json()["error"]["message"] == (
        f"Webhook body of {len(body)} bytes is over the {5 * 1024 * 1024} byte limit."
    )
    assert list(EspEvent.objects.values_list("pk", flat=True)) == [earlier_event.pk]


# --- strays: stored as such, changing nothing else


def test_unknown_event_types_of_each_esp_are_stored_as_unknown_and_change_nothing(client, message):
    sendgrid = payloads.sendgrid_event("account_status_change", message.to_email, message.pk, type="compliance_suspend")
    postmark = payloads.postmark_bounce(message.to_email, message.pk) | {"Type": "Unknown", "TypeCode": 1}
    ses = payloads.ses_notification("Delivery", message.to_email, message.pk)
    ses_message = json.loads(ses["Message"])
    ses_message.pop("notificationType")
    ses_message.pop("delivery")
    ses_message["eventType"] = "DeliveryDelay"
    ses_message["deliveryDelay"] = {
        "timestamp": "2026-11-25T18:10:00.000Z",
        "delayType": "TransientCommunicationFailure",
        "expirationTime": "2026-11-26T18:00:00.000Z",
        "delayedRecipients": [{"emailAddress": message.to_email, "status": "4.4.1", "diagnosticCode": "smtp; 421"}],
    }
    ses["Message"] = json.dumps(ses_message)

    answers = [post_sendgrid(client, [sendgrid]).status_code, post_postmark(client, postmark).status_code]
    answers.append(post_ses(client, ses).status_code)
    result = esp_events_apply()

    assert answers == [200, 200, 200]
    assert _stored() == [
        ("sendgrid", "unknown", "ann@example.org", message.pk),
        ("postmark", "unknown", "ann@example.org", message.pk),
        ("amazon_ses", "unknown", "ann@example.org", message.pk),
    ]
    assert EspEvent.objects.get(esp="sendgrid").payload["event"] == "account_status_change"
    assert EspEvent.objects.get(esp="amazon_ses").payload["eventType"] == "DeliveryDelay"
    assert result.applied == 3
    assert set(EspEvent.objects.values_list("outcome", flat=True)) == {"no change"}
    message.refresh_from_db()
    assert (message.status, message.delivered_at, message.opened_at) == (Message.Status.SENT, None, None)
    assert not Suppression.objects.exists()


def test_events_for_unknown_messages_are_stored_beside_known_ones_and_applied_as_orphans(client, message):
    events = [
        payloads.sendgrid_event("delivered", "stranger@example.org", 987_654),
        payloads.sendgrid_event("delivered", message.to_email, message.pk),
        payloads.sendgrid_event("open", "nobody@example.org", None),
    ]

    assert post_sendgrid(client, events).status_code == 200
    assert esp_events_apply().applied == 3

    assert list(EspEvent.objects.order_by("pk").values_list("recipient", "mailer_message_id", "outcome")) == [
        ("stranger@example.org", 987_654, "orphan"),
        ("ann@example.org", message.pk, "message delivered"),
        ("nobody@example.org", None, "orphan"),
    ]
    message.refresh_from_db()
    assert message.status == Message.Status.DELIVERED
    assert list(Message.objects.values_list("pk", flat=True)) == [message.pk]
    assert not Suppression.objects.exists()


# --- what an event carries that the database could refuse


def test_a_nul_character_in_an_event_is_dropped_instead_of_failing_the_post(client, message):
    event = payloads.sendgrid_event("bounce", message.to_email, message.pk, reason="550 no\x00such user")

    assert post_sendgrid(client, [event]).status_code == 200

    stored = EspEvent.objects.get()
    assert (stored.mta_response, stored.payload["reason"]) == ("550 nosuch user", "550 nosuch user")


def test_an_event_over_the_payload_cap_keeps_the_head_of_its_json(client, message):
    event = payloads.sendgrid_event("delivered", message.to_email, message.pk, response="250 " + "x" * 20_000)

    assert post_sendgrid(client, [event]).status_code == 200

    payload = EspEvent.objects.get().payload
    assert payload["truncated"] is True
    assert len(payload["head"]) == inbox.PAYLOAD_MAX_CHARS
    assert payload["head"] == json.dumps(event)[: inbox.PAYLOAD_MAX_CHARS]


def test_a_very_long_dedupe_key_is_shortened_and_stays_distinct(message):
    long_address = "a" * 240 + "@example.org"
    keys = {
        inbox.esp_event_row(
            esp="amazon_ses",
            event=AnymailTrackingEvent(event_type=kind, event_id="sns-1", recipient=long_address, esp_event={}),
        ).dedupe_key
        for kind in ("delivered", "bounced")
    }

    assert len(keys) == 2
    assert {len(key) for key in keys} == {255}


def test_a_message_id_in_the_metadata_too_large_for_a_bigint_is_kept_as_no_id(client, message):
    event = payloads.sendgrid_event("delivered", message.to_email, None) | {"mailer_msg": "9" * 20}

    assert post_sendgrid(client, [event]).status_code == 200

    assert _stored() == [("sendgrid", "delivered", "ann@example.org", None)]
