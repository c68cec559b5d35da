"""Webhook security beyond basic auth: SendGrid's signed events with a timestamp window, SNS signatures, certificate
URLs and topics for SES, and Postmark's source-IP allow-list. Every refusal is a 4xx that stores and changes nothing.

Keys and certificates are made on this machine (webhooks/tests/signed_payloads.py); the SNS certificate "fetch" is
the tests' fetcher, and SNS's ConfirmSubscription API is a loopback server: nothing leaves the machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from django.conf import settings
from django.core.cache import cache

from delivery.models import Message, Suppression
from delivery.sandbox import ses_events
from tests.factories import MessageFactory
from webhooks.models import EspEvent
from webhooks.services import esp_events_apply
from webhooks.sns import CACHE_KEY_PREFIX, MAX_CERT_BYTES, SnsCertificateUnavailable, sns_certificate_download
from webhooks.tests import payloads, signed_payloads
from webhooks.tests.conftest import SES_TOPIC_ARN

pytestmark = pytest.mark.django_db

FOREIGN_TOPIC_ARN = "arn:aws:sns:us-east-1:666666666666:someone-elses-topic"
POSTMARK_IPS = ["3.134.147.250", "50.31.156.0/24"]


def _auth() -> dict[str, str]:
    secret = settings.MAILER_WEBHOOK_SECRETS[0]
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(secret.encode()).decode()}


def post_sendgrid(client, body: bytes, **headers: str):
    return client.post("/webhooks/sendgrid/tracking/", body, "application/json", **_auth(), **headers)


def post_ses(client, envelope: dict[str, Any]):
    return client.post(
        "/webhooks/amazon_ses/tracking/",
        json.dumps(envelope),
        "text/plain; charset=UTF-8",
        HTTP_X_AMZ_SNS_MESSAGE_TYPE=envelope["Type"],
        HTTP_X_AMZ_SNS_MESSAGE_ID=envelope["MessageId"],
        **_auth(),
    )


def post_postmark(client, event: dict[str, Any], **meta: str):
    return client.post("/webhooks/postmark/tracking/", json.dumps(event), "application/json", **_auth(), **meta)


def assert_nothing_stored_or_changed(message: Message) -> None:
    assert EspEvent.objects.count() == 0
    assert esp_events_apply().applied == 0
    message.refresh_from_db()
    assert message.status == Message.Status.SENT
    assert Suppression.objects.count() == 0


@pytest.fixture
def message() -> Message:
    return MessageFactory(to_email="ann@example.org", status=Message.Status.SENT)


# --- SendGrid signed event webhook


@pytest.fixture
def sendgrid_key(settings) -> None:
    settings.ANYMAIL = {
        **settings.ANYMAIL,
        "SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY": signed_payloads.sendgrid_verification_key(),
    }


def _sendgrid_bounce(message: Message) -> bytes:
    return json.dumps([payloads.sendgrid_event("bounce", message.to_email, message.pk)]).encode()


@pytest.mark.parametrize("age_seconds", [0, 9 * 60])
def test_a_signed_sendgrid_post_within_the_window_is_stored_and_applied(client, message, sendgrid_key, age_seconds):
    # Given a bounce signed with SendGrid's key, now or 9 minutes ago.
    body = _sendgrid_bounce(message)
    headers = signed_payloads.sendgrid_signed_headers(body, timestamp=int(time.time()) - age_seconds)

    # When SendGrid posts it.
    response = post_sendgrid(client, body, **headers)

    # Then it is stored, and applying it bounces the message and suppresses the address.
    assert response.status_code == 200
    assert EspEvent.objects.count() == 1
    assert esp_events_apply().applied == 1
    message.refresh_from_db()
    assert message.status == Message.Status.BOUNCED
    assert list(Suppression.objects.values_list("email", "reason")) == [(message.to_email, "hard_bounce")]


def test_a_replayed_signed_sendgrid_post_within_the_window_changes_nothing_more(client, message, sendgrid_key):
    body = _sendgrid_bounce(message)
    headers = signed_payloads.sendgrid_signed_headers(body)
    assert post_sendgrid(client, body, **headers).status_code == 200

    assert post_sendgrid(client, body, **headers).status_code == 200

    assert EspEvent.objects.count() == 1


def _tampered(body: bytes) -> tuple[bytes, dict[str, str]]:
    headers = signed_payloads.sendgrid_signed_headers(body)
    return body.replace(b"bounce", b"delivered"), headers


def _stale(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, signed_payloads.sendgrid_signed_headers(body, timestamp=int(time.time()) - 11 * 60)


def _future(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, signed_payloads.sendgrid_signed_headers(body, timestamp=int(time.time()) + 6 * 60)


def _unsigned(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, {}


def _not_base64(body: bytes) -> tuple[bytes, dict[str, str]]:
    headers = signed_payloads.sendgrid_signed_headers(body)
    return body, {**headers, "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE": "%%% not base64 %%%"}


@pytest.mark.parametrize(
    ("forge", "code", "words"),
    [
        (_tampered, "signature_invalid", "incorrect signature"),
        (_not_base64, "signature_invalid", "incorrect signature"),
        (_unsigned, "signature_invalid", "X-Twilio-Email-Event-Webhook-Signature header missing"),
        (_stale, "timestamp_too_old", "over the 600 s window"),
        (_future, "timestamp_in_future", "over the 300 s allowed clock skew"),
    ],
    ids=["bad-signature", "signature-not-base64", "missing-signature", "stale-11-minutes", "6-minutes-ahead"],
)
def test_a_forged_or_stale_sendgrid_post_is_refused_and_changes_nothing(
    client, message, sendgrid_key, forge, code, words
):
    body, headers = forge(_sendgrid_bounce(message))

    response = post_sendgrid(client, body, **headers)

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == code
    assert words in error["message"]
    assert_nothing_stored_or_changed(message)


def test_without_a_verification_key_sendgrid_posts_need_only_basic_auth(client, message):
    assert "SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY" not in settings.ANYMAIL

    response = post_sendgrid(client, _sendgrid_bounce(message))

    assert response.status_code == 200
    assert EspEvent.objects.count() == 1


# --- Amazon SES through SNS


@pytest.fixture
def no_sandbox_trust(settings) -> None:
    settings.MAILER_SNS_TRUST_SANDBOX = False


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_sns_notification_is_stored_and_applied(client, message, no_sandbox_trust, version):
    envelope = signed_payloads.sns_signed(
        payloads.ses_notification("Bounce", message.to_email, message.pk), version=version
    )

    response = post_ses(client, envelope)

    assert response.status_code == 200
    assert EspEvent.objects.count() == 1
    assert esp_events_apply().applied == 1
    message.refresh_from_db()
    assert message.status == Message.Status.BOUNCED
    assert list(Suppression.objects.values_list("email", "reason")) == [(message.to_email, "hard_bounce")]


def _served_elsewhere(url: str) -> dict[str, Any]:
    """A notification whose signature verifies with the certificate the attacker serves at `url`."""
    attacker = signed_payloads.sns_signer_new(published=False)
    signed_payloads.SERVED_CERTS[url] = attacker.cert_pem
    return {"signer": attacker, "cert_url": url}


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-abc123.pem",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://attacker.com/sns.us-east-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://sns.s3-eu-west-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://sns.us-east-1.amazonaws.com@attacker.com/SimpleNotificationService-abc123.pem",
        "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-abc123.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc123.pem?.pem",
        "https://sns.us-east-1.amazonaws.com/uploads/evil.pem",
        "https://SNS.us-east-1.amazonaws.com/SimpleNotificationService-abc123.pem",
    ],
    ids=[
        "host-suffix",
        "http",
        "foreign-host-sns-in-path",
        "s3-bucket-named-sns",
        "userinfo-trick",
        "userinfo",
        "other-port",
        "query",
        "other-path",
        "upper-case-host",
    ],
)
def test_a_certificate_url_off_the_sns_domain_is_refused_without_fetching(client, message, no_sandbox_trust, cert_url):
    # Given a notification that verifies with the certificate at a URL the attacker chose.
    envelope = signed_payloads.sns_signed(
        payloads.ses_notification("Bounce", message.to_email, message.pk), **_served_elsewhere(cert_url)
    )

    response = post_ses(client, envelope)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "sns_certificate_url_untrusted"
    assert signed_payloads.CERT_FETCHES == []
    assert_nothing_stored_or_changed(message)


def _bad_signature(envelope: dict[str, Any]) -> dict[str, Any]:
    signed = signed_payloads.sns_signed(envelope)
    signed["Message"] = signed["Message"].replace("Permanent", "Transient")
    return signed


def _other_key_same_url(envelope: dict[str, Any]) -> dict[str, Any]:
    attacker = signed_payloads.sns_signer_new(published=False)
    return signed_payloads.sns_signed(envelope, signer=attacker, cert_url=signed_payloads.sns_signer().cert_url)


def _foreign_topic(envelope: dict[str, Any]) -> dict[str, Any]:
    return signed_payloads.sns_signed({**envelope, "TopicArn": FOREIGN_TOPIC_ARN})


def _version_3(envelope: dict[str, Any]) -> dict[str, Any]:
    return {**signed_payloads.sns_signed(envelope, version="2"), "SignatureVersion": "3"}


def _no_version(envelope: dict[str, Any]) -> dict[str, Any]:
    signed = signed_payloads.sns_signed(envelope)
    del signed["SignatureVersion"]
    return signed


def _certificate_not_on_the_host(envelope: dict[str, Any]) -> dict[str, Any]:
    attacker = signed_payloads.sns_signer_new(published=False)
    return signed_payloads.sns_signed(envelope, signer=attacker)


def _signature_not_base64(envelope: dict[str, Any]) -> dict[str, Any]:
    return {**signed_payloads.sns_signed(envelope), "Signature": "not base64!"}


@pytest.mark.parametrize(
    ("forge", "code"),
    [
        (_bad_signature, "sns_signature_invalid"),
        (_other_key_same_url, "sns_signature_invalid"),
        (_signature_not_base64, "sns_signature_invalid"),
        (_foreign_topic, "sns_topic_not_allowed"),
        (_version_3, "sns_signature_version_unsupported"),
        (_no_version, "sns_signature_version_unsupported"),
        (_certificate_not_on_the_host, "sns_certificate_unavailable"),
    ],
    ids=[
        "tampered-message",
        "other-key-same-cert-url",
        "signature-not-base64",
        "foreign-topic",
        "signature-version-3",
        "no-signature-version",
        "certificate-404",
    ],
)
def test_a_forged_sns_notification_is_refused_and_changes_nothing(client, message, no_sandbox_trust, forge, code):
    envelope = forge(payloads.ses_notification("Bounce", message.to_email, message.pk))

    response = post_ses(client, envelope)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == code
    assert_nothing_stored_or_changed(message)


def test_a_malformed_sns_post_gets_400_not_a_server_error(client, message, no_sandbox_trust):
    unknown_type = signed_payloads.sns_signed(payloads.ses_notification("Bounce", message.to_email, message.pk))
    unknown_type["Type"] = "Advertisement"

    responses = [
        client.post("/webhooks/amazon_ses/tracking/", "[]", "text/plain", **_auth()),
        post_ses(client, unknown_type),
    ]

    assert [(r.status_code, r.json()["error"]["code"]) for r in responses] == [
        (400, "sns_message_invalid"),
        (400, "sns_message_invalid"),
    ]
    assert_nothing_stored_or_changed(message)


def test_with_no_topic_allowed_every_ses_post_is_refused(client, message, no_sandbox_trust, settings):
    settings.MAILER_SES_TOPIC_ARNS = []
    envelope = signed_payloads.sns_signed(payloads.ses_notification("Bounce", message.to_email, message.pk))

    response = post_ses(client, envelope)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "sns_topic_not_allowed"
    assert "MAILER_SES_TOPIC_ARNS" in response.json()["error"]["message"]
    assert_nothing_stored_or_changed(message)


def test_a_signing_certificate_is_fetched_once_then_cached(client, no_sandbox_trust):
    # Given a certificate not seen before (its own URL).
    signer = signed_payloads.sns_signer_new()
    first, second = (MessageFactory(to_email=f"{n}@example.org", status=Message.Status.SENT) for n in ("a", "b"))

    try:
        # When two notifications signed with it arrive.
        for message in (first, second):
            envelope = payloads.ses_notification("Delivery", message.to_email, message.pk)
            assert post_ses(client, signed_payloads.sns_signed(envelope, signer=signer)).status_code == 200

        # Then the certificate was fetched once, and kept under its URL.
        assert signed_payloads.CERT_FETCHES == [signer.cert_url]
        cache_key = CACHE_KEY_PREFIX + hashlib.sha256(signer.cert_url.encode()).hexdigest()
        assert cache.get(cache_key) == signer.cert_pem
        assert EspEvent.objects.count() == 2
    finally:
        cache.delete(CACHE_KEY_PREFIX + hashlib.sha256(signer.cert_url.encode()).hexdigest())


def test_a_certificate_that_cannot_be_fetched_now_gets_503_so_that_sns_retries(client, message, settings):
    settings.MAILER_SNS_TRUST_SANDBOX = False
    settings.MAILER_SNS_CERT_FETCHER = "webhooks.tests.signed_payloads.sns_certificate_timeout"
    signer = signed_payloads.sns_signer_new()
    envelope = signed_payloads.sns_signed(
        payloads.ses_notification("Bounce", message.to_email, message.pk), signer=signer
    )

    response = post_ses(client, envelope)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "sns_certificate_unavailable"
    assert signed_payloads.CERT_FETCHES == [signer.cert_url]
    assert_nothing_stored_or_changed(message)


@pytest.fixture
def cert_host() -> Iterator[str]:
    """A loopback stand-in for the SNS host, for the production fetcher: the path says what it answers."""
    pem = signed_payloads.sns_signer().cert_pem

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            status, body, extra = {
                "/ok.pem": (200, pem, {}),
                "/missing.pem": (404, b"Not Found", {}),
                "/down.pem": (503, b"Service Unavailable", {}),
                "/moved.pem": (302, b"", {"Location": "/ok.pem"}),
                "/huge.pem": (200, b"x" * (MAX_CERT_BYTES + 1), {}),
            }[self.path]
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_production_fetcher_returns_the_certificate(cert_host):
    assert sns_certificate_download(f"{cert_host}/ok.pem", timeout=5) == signed_payloads.sns_signer().cert_pem


@pytest.mark.parametrize(
    ("path", "transient", "words"),
    [
        ("/missing.pem", False, "answered HTTP 404"),
        ("/down.pem", True, "answered HTTP 503"),
        ("/moved.pem", False, "answered HTTP 302"),  # redirects are not followed
        ("/huge.pem", False, f"is over {MAX_CERT_BYTES} bytes"),
    ],
)
def test_the_production_fetcher_refuses_what_is_not_a_plain_answer(cert_host, path, transient, words):
    with pytest.raises(SnsCertificateUnavailable, match=words) as caught:
        sns_certificate_download(f"{cert_host}{path}", timeout=5)

    assert caught.value.transient is transient


def test_the_production_fetcher_calls_an_unreachable_host_transient():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(SnsCertificateUnavailable, match="failed") as caught:
        sns_certificate_download(f"http://127.0.0.1:{port}/cert.pem", timeout=2)

    assert caught.value.transient is True


@pytest.fixture
def sns_api(settings) -> Iterator[list[dict[str, str]]]:
    """SNS's query API on loopback, answering ConfirmSubscription; yields the requests it received."""
    received: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            form = {name: values[0] for name, values in parse_qs(body).items()}
            received.append(form)
            answer = (
                '<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
                f"<ConfirmSubscriptionResult><SubscriptionArn>{form.get('TopicArn')}:0a1b2c3d</SubscriptionArn>"
                "</ConfirmSubscriptionResult><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata>"
                "</ConfirmSubscriptionResponse>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    settings.ANYMAIL = {
        **settings.ANYMAIL,
        "AMAZON_SES_CLIENT_PARAMS": {
            "endpoint_url": f"http://127.0.0.1:{server.server_address[1]}",
            "region_name": "us-east-1",
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
            "config": {"retries": {"total_max_attempts": 1}},
        },
    }
    yield received
    server.shutdown()
    server.server_close()


def test_a_subscription_to_an_allowed_topic_is_confirmed(client, no_sandbox_trust, sns_api):
    confirmation = signed_payloads.sns_subscription_confirmation(topic_arn=SES_TOPIC_ARN, token="token-1234")

    response = post_ses(client, signed_payloads.sns_signed(confirmation))

    assert response.status_code == 200
    assert [(r["Action"], r["TopicArn"], r["Token"]) for r in sns_api] == [
        ("ConfirmSubscription", SES_TOPIC_ARN, "token-1234")
    ]
    assert EspEvent.objects.count() == 0


def test_a_subscription_to_a_foreign_topic_is_refused_before_anymail_confirms_it(client, no_sandbox_trust, sns_api):
    # Given a confirmation genuinely signed (a valid AWS signature), but for a topic we never subscribed to.
    confirmation = signed_payloads.sns_subscription_confirmation(topic_arn=FOREIGN_TOPIC_ARN)

    response = post_ses(client, signed_payloads.sns_signed(confirmation))

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "sns_topic_not_allowed"
    assert sns_api == []


def test_a_forged_subscription_confirmation_is_not_confirmed(client, no_sandbox_trust, sns_api):
    confirmation = signed_payloads.sns_signed(signed_payloads.sns_subscription_confirmation(topic_arn=SES_TOPIC_ARN))
    confirmation["Token"] = "attacker-token"

    response = post_ses(client, confirmation)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "sns_signature_invalid"
    assert sns_api == []


def _sandbox_notification(message: Message) -> dict[str, Any]:
    record = json.loads(payloads.ses_notification("Bounce", message.to_email, message.pk)["Message"])
    return ses_events.sns_notification(record, when=datetime.now(UTC))


def test_the_sandboxs_signed_notifications_are_accepted_while_the_sandbox_is_trusted(client, message, settings):
    settings.MAILER_SNS_TRUST_SANDBOX = True

    response = post_ses(client, _sandbox_notification(message))

    assert response.status_code == 200
    assert EspEvent.objects.count() == 1
    assert signed_payloads.CERT_FETCHES == []


def test_the_sandboxs_key_is_not_trusted_once_the_sandbox_trust_is_off(client, message, no_sandbox_trust, settings):
    # Even with its topic allowed, the sandbox's certificate URL then goes to the SNS host, which has no such file.
    settings.MAILER_SES_TOPIC_ARNS = [ses_events.SNS_TOPIC_ARN]

    response = post_ses(client, _sandbox_notification(message))

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "sns_certificate_unavailable"
    assert signed_payloads.CERT_FETCHES == [ses_events.SNS_SIGNING_CERT_URL]
    assert_nothing_stored_or_changed(message)


def test_anymails_other_webhooks_are_not_served(client):
    """SES inbound (and the other ESPs' views) would run without these checks: they are not mounted."""
    response = client.post("/webhooks/amazon_ses/inbound/", "{}", "text/plain", **_auth())

    assert response.status_code == 404


# --- Postmark source IP allow-list


@pytest.fixture
def postmark_ips(settings) -> None:
    settings.MAILER_POSTMARK_ALLOWED_IPS = POSTMARK_IPS


@pytest.mark.parametrize("address", ["3.134.147.250", "50.31.156.77", "::ffff:50.31.156.6"])
def test_a_postmark_post_from_an_allowed_address_is_stored(client, message, postmark_ips, address):
    response = post_postmark(client, payloads.postmark_delivery(message.to_email, message.pk), REMOTE_ADDR=address)

    assert response.status_code == 200
    assert EspEvent.objects.count() == 1


@pytest.mark.parametrize("address", ["203.0.113.9", "50.31.157.1", "2001:db8::1"])
def test_a_postmark_post_from_another_address_is_refused_and_changes_nothing(client, message, postmark_ips, address):
    response = post_postmark(client, payloads.postmark_bounce(message.to_email, message.pk), REMOTE_ADDR=address)

    assert response.status_code == 403
    assert response.json()["error"] == {
        "code": "source_ip_not_allowed",
        "message": f"Postmark webhooks are not accepted from {address}.",
    }
    assert_nothing_stored_or_changed(message)


def test_with_no_allow_list_postmark_posts_are_accepted_from_anywhere(client, message, settings):
    settings.MAILER_POSTMARK_ALLOWED_IPS = []

    response = post_postmark(
        client, payloads.postmark_delivery(message.to_email, message.pk), REMOTE_ADDR="203.0.113.9"
    )

    assert response.status_code == 200
    assert EspEvent.objects.count() == 1


@pytest.mark.parametrize(
    ("forwarded_for", "status"),
    [
        ("50.31.156.6", 200),  # the proxy saw Postmark
        ("50.31.156.6, 203.0.113.9", 403),  # the client wrote Postmark's address; the proxy saw 203.0.113.9
        ("", 403),  # no header although a proxy is configured: the client cannot be told
    ],
)
def test_behind_one_proxy_the_client_is_the_last_forwarded_address(
    client, message, postmark_ips, settings, forwarded_for, status
):
    settings.MAILER_TRUSTED_PROXY_COUNT = 1

    response = post_postmark(
        client,
        payloads.postmark_delivery(message.to_email, message.pk),
        REMOTE_ADDR="10.0.0.5",
        HTTP_X_FORWARDED_FOR=forwarded_for,
    )

    assert response.status_code == status
    assert EspEvent.objects.count() == (1 if status == 200 else 0)


def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(client, message, postmark_ips):
    response = post_postmark(
        client,
        payloads.postmark_delivery(message.to_email, message.pk),
        REMOTE_ADDR="203.0.113.9",
        HTTP_X_FORWARDED_FOR="50.31.156.6",
    )

    assert response.status_code == 403
    assert EspEvent.objects.count() == 0
