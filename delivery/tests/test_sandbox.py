"""The ESP sandbox, driven by anymail's real backends and checked through anymail's real webhook views.

Webhooks are caught by a small HTTP server in the test and replayed into anymail's tracking views, wired
to a private signal: the project's own tracking receivers (which write to the database) stay out of it, so
none of these tests needs a database.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from typing import Any

import boto3
import botocore.config
import pytest
import requests
from anymail.exceptions import AnymailAPIError, AnymailRequestsAPIError
from anymail.message import AnymailMessage
from anymail.signals import AnymailTrackingEvent
from anymail.webhooks.amazon_ses import AmazonSESTrackingWebhookView
from anymail.webhooks.postmark import PostmarkTrackingWebhookView
from anymail.webhooks.sendgrid import SendGridTrackingWebhookView
from django.core.mail import get_connection
from django.core.management import call_command
from django.dispatch import Signal
from django.test import RequestFactory, override_settings

from delivery.management.commands.run_sandbox import Command as RunSandboxCommand
from delivery.sandbox import SandboxMessage, SandboxServer
from delivery.sandbox import events as sandbox_events

pytestmark = pytest.mark.filterwarnings("ignore::anymail.exceptions.AnymailNotSupportedWarning")

HOOK_USER, HOOK_PASSWORD = "hook", "hook-secret"
ESPS = ["sendgrid", "postmark", "amazon_ses"]
FROM = "Mailer <news@mailer.example>"
UNSUBSCRIBE_HEADERS = {
    "List-Unsubscribe": "<https://mailer.example/u/abc>, <mailto:unsub@mailer.example>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    "List-Id": "News <news.mailer.example>",
}

_replayed = Signal()  # anymail's views send here instead of anymail.signals.tracking
_VIEWS = {
    "/webhooks/sendgrid/tracking/": SendGridTrackingWebhookView,
    "/webhooks/postmark/tracking/": PostmarkTrackingWebhookView,
    "/webhooks/amazon_ses/tracking/": AmazonSESTrackingWebhookView,
}


# --- fixtures: a webhook catcher, the sandbox, and connections to it


@dataclass
class Captured:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookCatcher:
    url: str = ""
    posts: list[Captured] = field(default_factory=list)
    fail_next: int = 0  # answer this many POSTs with 500 first
    lock: threading.Lock = field(default_factory=threading.Lock)

    def replay(self) -> list[AnymailTrackingEvent]:
        """Feed every caught POST to anymail's tracking view for its path; return the events it produced."""
        events: list[AnymailTrackingEvent] = []

        def receiver(sender: Any, event: AnymailTrackingEvent, esp_name: str, **kwargs: Any) -> None:
            events.append(event)

        _replayed.connect(receiver, weak=False, dispatch_uid="sandbox-test")
        try:
            for post in self.posts:
                view = _VIEWS[post.path].as_view(signal=_replayed, basic_auth=[f"{HOOK_USER}:{HOOK_PASSWORD}"])
                meta = {
                    "HTTP_" + name.upper().replace("-", "_"): value
                    for name, value in post.headers.items()
                    if name.lower() not in ("content-type", "content-length", "host")
                }
                request = RequestFactory().generic(
                    "POST", post.path, data=post.body, content_type=post.headers["Content-Type"], **meta
                )
                assert view(request).status_code == 200
        finally:
            _replayed.disconnect(dispatch_uid="sandbox-test")
        return events


@pytest.fixture
def catcher() -> Iterator[WebhookCatcher]:
    caught = WebhookCatcher()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with caught.lock:
                status = 500 if caught.fail_next > 0 else 200
                caught.fail_next -= 1
                caught.posts.append(Captured(self.path, dict(self.headers.items()), body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    caught.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield caught
    server.shutdown()
    server.server_close()


@pytest.fixture
def sandbox(catcher: WebhookCatcher) -> Iterator[SandboxServer]:
    with SandboxServer(webhook_url=catcher.url, webhook_auth=(HOOK_USER, HOOK_PASSWORD), seed=7) as server:
        yield server


def connection(sandbox: SandboxServer, esp: str, **options: Any) -> Any:
    if esp == "sendgrid":
        return get_connection(
            "anymail.backends.sendgrid.EmailBackend",
            api_key="sandbox-key",
            api_url=sandbox.sendgrid_api_url,
            **options,
        )
    if esp == "postmark":
        return get_connection(
            "anymail.backends.postmark.EmailBackend",
            server_token="sandbox-token",
            api_url=sandbox.postmark_api_url,
            **options,
        )
    client_params: dict[str, Any] = {
        "endpoint_url": sandbox.ses_endpoint_url,
        "region_name": "us-east-1",
        "aws_access_key_id": "sandbox",
        "aws_secret_access_key": "sandbox",
    }
    if "config" in options:
        client_params["config"] = options.pop("config")
    return get_connection("anymail.backends.amazon_ses.EmailBackend", client_params=client_params, **options)


def message(to: list[str], *, subject: str = "Spring news", html: str | None = None, **extra: Any) -> AnymailMessage:
    msg = AnymailMessage(subject=subject, body="Plain text body", from_email=FROM, to=to, **extra)
    if html is not None:
        msg.attach_alternative(html, "text/html")
    return msg


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def summary(events: list[AnymailTrackingEvent]) -> list[tuple[str, str, str]]:
    return sorted((e.recipient, e.event_type, e.metadata.get("mailer_msg")) for e in events)


# --- sending: what each backend's call turns into


@pytest.mark.parametrize("esp", ESPS)
def test_send_is_stored_with_headers_metadata_and_the_id_anymail_reported(sandbox: SandboxServer, esp: str) -> None:
    msg = message(
        ["Reader <reader@example.com>"],
        html="<p>Hello <a href='https://mailer.example/read'>read</a></p>",
        headers=UNSUBSCRIBE_HEADERS,
        metadata={"mailer_msg": "41"},
        tags=["spring"],
        connection=connection(sandbox, esp),
    )

    msg.send()

    [stored] = sandbox.messages
    assert stored.esp == esp
    assert stored.esp_message_id == msg.anymail_status.recipients["reader@example.com"].message_id
    assert (stored.from_email, stored.to, stored.subject) == (
        "news@mailer.example",
        ["reader@example.com"],
        "Spring news",
    )
    assert stored.text == "Plain text body"
    assert stored.html == "<p>Hello <a href='https://mailer.example/read'>read</a></p>"
    for name, value in UNSUBSCRIBE_HEADERS.items():
        assert stored.headers[name] == value
    assert stored.metadata == {"mailer_msg": "41"}
    assert stored.tags == ["spring"]
    assert stored.events == ["delivered"]


def test_sendgrid_batch_becomes_one_message_per_personalization(sandbox: SandboxServer) -> None:
    to = ["a@example.com", "b@example.com", "c@example.com"]
    msg = message(to, merge_metadata={addr: {"mailer_msg": str(i)} for i, addr in enumerate(to)})
    msg.connection = connection(sandbox, "sendgrid")

    msg.send()

    stored = sandbox.messages
    assert [m.to for m in stored] == [[addr] for addr in to]
    assert [m.metadata for m in stored] == [{"mailer_msg": "0"}, {"mailer_msg": "1"}, {"mailer_msg": "2"}]
    assert len({m.id for m in stored}) == len({m.esp_message_id for m in stored}) == 3
    assert [m.esp_message_id for m in stored] == [msg.anymail_status.recipients[a].message_id for a in to]
    assert len({m.call_id for m in stored}) == 1
    assert [p["personalizations"][0]["to"] for p in (m.raw for m in stored)] == [[{"email": a}] for a in to]


def test_postmark_batch_endpoint_answers_in_request_order(sandbox: SandboxServer) -> None:
    to = ["a@example.com", "b@example.com", "c@example.com"]
    msg = message(to, merge_metadata={addr: {"mailer_msg": str(i)} for i, addr in enumerate(to)})
    msg.connection = connection(sandbox, "postmark")

    msg.send()

    stored = sandbox.messages
    assert [m.to[0] for m in stored] == to
    assert [m.metadata["mailer_msg"] for m in stored] == ["0", "1", "2"]
    assert [m.esp_message_id for m in stored] == [msg.anymail_status.recipients[a].message_id for a in to]
    assert len({m.esp_message_id for m in stored}) == 3
    assert {s.status for s in msg.anymail_status.recipients.values()} == {"sent"}


def test_each_stored_message_says_when_the_answer_to_its_call_went_out(sandbox: SandboxServer) -> None:
    """What a crash test needs: a client killed before this moment could not have known the call succeeded."""
    msg = message(["a@example.com", "b@example.com"], merge_metadata={"a@example.com": {}, "b@example.com": {}})
    msg.connection = connection(sandbox, "postmark")
    before = datetime.now(UTC)

    msg.send()

    stored = sandbox.messages
    assert len(stored) == 2 and len({m.replied_at for m in stored}) == 1  # one call, one answer
    assert all(before <= m.received_at <= m.replied_at <= datetime.now(UTC) for m in stored)
    assert stored[0].as_dict()["replied_at"] == stored[0].replied_at.isoformat()


def test_ses_bulk_send_renders_the_stored_template_per_entry(sandbox: SandboxServer) -> None:
    ses = boto3.session.Session().client(
        "sesv2",
        endpoint_url=sandbox.ses_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="sandbox",
        aws_secret_access_key="sandbox",
    )
    ses.create_email_template(
        TemplateName="welcome",
        TemplateContent={"Subject": "Hi {{name}}", "Html": "<p>Hello {{name}}</p>", "Text": "Hello {{name}}"},
    )
    to = ["a@example.com", "b@example.com"]
    msg = AnymailMessage(from_email=FROM, to=to, connection=connection(sandbox, "amazon_ses"))
    msg.template_id = "welcome"
    msg.merge_data = {"a@example.com": {"name": "Ann"}, "b@example.com": {"name": "Bob"}}
    msg.merge_metadata = {"a@example.com": {"mailer_msg": "1"}, "b@example.com": {"mailer_msg": "2"}}

    msg.send()

    stored = sandbox.messages
    assert [(m.to[0], m.subject, m.html, m.metadata) for m in stored] == [
        ("a@example.com", "Hi Ann", "<p>Hello Ann</p>", {"mailer_msg": "1"}),
        ("b@example.com", "Hi Bob", "<p>Hello Bob</p>", {"mailer_msg": "2"}),
    ]
    assert [m.esp_message_id for m in stored] == [msg.anymail_status.recipients[a].message_id for a in to]


def test_ses_bulk_with_unknown_template_fails_like_ses(sandbox: SandboxServer) -> None:
    msg = AnymailMessage(from_email=FROM, to=["a@example.com"], connection=connection(sandbox, "amazon_ses"))
    msg.template_id = "missing"

    with pytest.raises(AnymailAPIError) as raised:
        msg.send()

    assert raised.value.__cause__.response["Error"]["Code"] == "NotFoundException"
    assert sandbox.messages == []


# --- webhooks: each ESP's format, parsed by anymail's own views


@pytest.mark.parametrize("esp", ESPS)
def test_delivered_bounced_and_complained_round_trip(sandbox: SandboxServer, catcher: WebhookCatcher, esp: str) -> None:
    to = ["reader@example.com", "bounce@simulator.amazonses.com", "complaint@simulator.amazonses.com"]
    messages = [message([addr], metadata={"mailer_msg": str(i)}) for i, addr in enumerate(to)]
    connection(sandbox, esp).send_messages(messages)

    sandbox.wait_for_webhooks()
    events = catcher.replay()

    assert summary(events) == [
        ("bounce@simulator.amazonses.com", "bounced", "1"),
        ("complaint@simulator.amazonses.com", "complained", "2"),
        ("complaint@simulator.amazonses.com", "delivered", "2"),
        ("reader@example.com", "delivered", "0"),
    ]
    sent_ids = {m.to[0]: m.anymail_status.recipients[m.to[0]].message_id for m in messages}
    assert all(event.message_id == sent_ids[event.recipient] for event in events)
    bounce = next(e for e in events if e.event_type == "bounced")
    assert "5.1.1" in bounce.mta_response
    assert [m.events for m in sandbox.messages] == [["delivered"], ["bounced"], ["delivered", "complained"]]
    assert all(post.headers["Authorization"].startswith("Basic ") for post in catcher.posts)
    assert {status for _, _, status, _ in sandbox.webhook_posts} == {200}


def test_ses_webhooks_arrive_as_sns_notifications(sandbox: SandboxServer, catcher: WebhookCatcher) -> None:
    msg = message(["reader@example.com"], metadata={"mailer_msg": "9"}, connection=connection(sandbox, "amazon_ses"))
    msg.send()

    sandbox.wait_for_webhooks()

    [post] = catcher.posts
    envelope = json.loads(post.body)
    assert post.headers["Content-Type"].startswith("text/plain")
    assert post.headers["x-amz-sns-message-type"] == envelope["Type"] == "Notification"
    assert post.headers["x-amz-sns-message-id"] == envelope["MessageId"]
    assert post.headers["x-amz-sns-topic-arn"] == envelope["TopicArn"] == sandbox_events.SNS_TOPIC_ARN
    record = json.loads(envelope["Message"])
    assert record["eventType"] == "Delivery"
    assert record["mail"]["messageId"] == msg.anymail_status.message_id
    assert {"name": "X-Metadata", "value": '{"mailer_msg": "9"}'} in record["mail"]["headers"]


def test_sendgrid_events_are_batched_into_one_post(sandbox: SandboxServer, catcher: WebhookCatcher) -> None:
    to = ["a@example.com", "b@example.com", "c@example.com"]
    msg = message(to, merge_metadata={addr: {"mailer_msg": addr[0]} for addr in to})
    msg.connection = connection(sandbox, "sendgrid")
    msg.send()

    sandbox.wait_for_webhooks()

    assert [(esp, status, count) for esp, _, status, count in sandbox.webhook_posts] == [("sendgrid", 200, 3)]
    events = json.loads(catcher.posts[0].body)
    assert len({e["sg_event_id"] for e in events}) == 3
    assert summary(catcher.replay()) == [(a, "delivered", a[0]) for a in to]


@pytest.mark.parametrize("esp", ESPS)
def test_opens_and_clicks_follow_the_rates(sandbox: SandboxServer, catcher: WebhookCatcher, esp: str) -> None:
    sandbox.configure(open_rate=1.0, click_rate=1.0)
    html = '<p><a href="https://mailer.example/offer?a=1&amp;b=2">offer</a></p>'
    msg = message(["reader@example.com"], html=html, metadata={"mailer_msg": "5"})
    msg.connection = connection(sandbox, esp)
    msg.send()

    sandbox.wait_for_webhooks()
    events = catcher.replay()

    assert [e.event_type for e in events] == ["delivered", "opened", "clicked"]
    assert {e.metadata["mailer_msg"] for e in events} == {"5"}
    assert {e.message_id for e in events} == {msg.anymail_status.message_id}
    assert events[2].click_url == "https://mailer.example/offer?a=1&b=2"


def test_engagement_is_reproducible_with_a_seed(catcher: WebhookCatcher) -> None:
    def outcomes() -> list[list[str]]:
        with SandboxServer(open_rate=0.5, click_rate=0.5, seed=42) as server:
            batch = [message([f"r{i}@example.com"]) for i in range(20)]
            connection(server, "postmark").send_messages(batch)
            return [m.events for m in server.messages]

    first = outcomes()

    assert first == outcomes()
    assert {"opened"} & {e for events in first for e in events}
    assert any(events == ["delivered"] for events in first)


def test_address_rules_apply_at_simulated_domains(sandbox: SandboxServer) -> None:
    conn = connection(sandbox, "postmark")
    conn.send_messages([message(["bounce@example.com"])])
    sandbox.configure(simulate_domains=["example.com"])
    conn.send_messages([message(["bounce@example.com"]), message(["suppressionlist@example.com"])])

    assert [m.events for m in sandbox.messages] == [["delivered"], ["bounced"], ["bounced"]]


def test_ses_suppression_list_bounce(sandbox: SandboxServer, catcher: WebhookCatcher) -> None:
    message(["suppressionlist@simulator.amazonses.com"], connection=connection(sandbox, "amazon_ses")).send()

    sandbox.wait_for_webhooks()
    [event] = catcher.replay()

    assert (event.event_type, event.reject_reason) == ("bounced", "bounced")
    assert event.esp_event["bounce"]["bounceSubType"] == "OnAccountSuppressionList"


def test_failed_webhook_post_is_retried(sandbox: SandboxServer, catcher: WebhookCatcher) -> None:
    catcher.fail_next = 1
    message(["reader@example.com"], connection=connection(sandbox, "postmark")).send()

    sandbox.wait_for_webhooks()

    assert [status for _, _, status, _ in sandbox.webhook_posts] == [500, 200]
    assert catcher.posts[0].body == catcher.posts[1].body


def test_unreachable_webhook_is_given_up_after_a_few_attempts() -> None:
    with SandboxServer(webhook_url="http://127.0.0.1:9") as server:  # discard port: connection refused
        message(["reader@example.com"], connection=connection(server, "postmark")).send()

        server.wait_for_webhooks(timeout=10)

        posts = server.webhook_posts
        assert len(posts) == 4
        assert all(isinstance(status, str) and "Connection" in status for _, _, status, _ in posts)


# --- faults and limits


@pytest.mark.parametrize("esp", ["sendgrid", "postmark"])
def test_injected_429_reaches_the_caller_and_stores_nothing(sandbox: SandboxServer, esp: str) -> None:
    sandbox.configure(fail_next=[{"esp": esp, "status": 429}])

    with pytest.raises(AnymailRequestsAPIError) as raised:
        message(["reader@example.com"], connection=connection(sandbox, esp)).send()

    assert raised.value.status_code == 429
    assert sandbox.messages == []
    sandbox.wait_for_webhooks()
    assert sandbox.webhook_posts == []
    message(["reader@example.com"], connection=connection(sandbox, esp)).send()  # the fault was used up
    assert len(sandbox.messages) == 1


def test_ses_429_is_a_throttling_error_for_botocore(sandbox: SandboxServer) -> None:
    sandbox.configure(fail_next=[{"esp": "amazon_ses", "status": 429}])
    no_retries = botocore.config.Config(retries={"total_max_attempts": 1})

    with pytest.raises(AnymailAPIError) as raised:
        message(["reader@example.com"], connection=connection(sandbox, "amazon_ses", config=no_retries)).send()

    error = raised.value.__cause__.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == (
        "TooManyRequestsException",
        429,
    )
    assert sandbox.messages == []


def test_ses_429_once_is_retried_by_botocore(sandbox: SandboxServer) -> None:
    sandbox.configure(fail_next=[{"esp": "amazon_ses", "status": 429, "times": 1}])
    msg = message(["reader@example.com"], connection=connection(sandbox, "amazon_ses"))

    msg.send()

    assert msg.anymail_status.esp_response["ResponseMetadata"]["RetryAttempts"] == 1
    assert len(sandbox.messages) == 1


def test_fault_times_wildcard_and_random_rate(sandbox: SandboxServer) -> None:
    sandbox.configure(fail_next=[{"esp": "*", "status": 503, "times": 2}])
    for esp in ("postmark", "sendgrid"):
        with pytest.raises(AnymailRequestsAPIError) as raised:
            message(["reader@example.com"], connection=connection(sandbox, esp)).send()
        assert raised.value.status_code == 503
    sandbox.configure(fail_rate=1.0, fail_status=500)
    with pytest.raises(AnymailRequestsAPIError) as raised:
        message(["reader@example.com"], connection=connection(sandbox, "postmark")).send()
    assert raised.value.status_code == 500
    sandbox.configure(fail_rate=0.0)
    message(["reader@example.com"], connection=connection(sandbox, "postmark")).send()
    assert len(sandbox.messages) == 1


def test_injected_hang_trips_the_client_timeout(sandbox: SandboxServer) -> None:
    sandbox.configure(timeout_next=[{"esp": "postmark", "seconds": 1}])

    with pytest.raises(AnymailRequestsAPIError) as raised:
        message(["reader@example.com"], connection=connection(sandbox, "postmark", timeout=0.2)).send()

    assert isinstance(raised.value, requests.exceptions.Timeout)
    # Like a real ESP after a read timeout, the sandbox still accepts the message: the caller must reconcile.
    wait_until(lambda: len(sandbox.messages) == 1)


def test_random_stalls_trip_the_client_timeout_and_are_still_accepted(sandbox: SandboxServer) -> None:
    assert (sandbox.config["timeout_rate"], sandbox.config["timeout_seconds"]) == (0.0, 30.0)
    sandbox.configure(timeout_rate=1.0, timeout_seconds=1)

    with pytest.raises(AnymailRequestsAPIError) as raised:
        message(["reader@example.com"], connection=connection(sandbox, "sendgrid", timeout=0.2)).send()

    assert isinstance(raised.value, requests.exceptions.Timeout)
    wait_until(lambda: len(sandbox.messages) == 1)
    sandbox.configure(timeout_rate=0.0)
    message(["second@example.com"], connection=connection(sandbox, "sendgrid", timeout=0.2)).send()
    assert [m.to for m in sandbox.messages] == [["reader@example.com"], ["second@example.com"]]
    with pytest.raises(ValueError, match="timeout_rate must be between 0 and 1"):
        sandbox.configure(timeout_rate=1.5)


def test_postmark_batch_over_500_is_refused_whole(sandbox: SandboxServer) -> None:
    to = [f"r{i}@example.com" for i in range(501)]
    msg = message(to, merge_metadata={addr: {"mailer_msg": addr} for addr in to})

    with pytest.raises(AnymailRequestsAPIError) as raised:
        msg.connection = connection(sandbox, "postmark")
        msg.send()

    assert raised.value.status_code == 422
    assert raised.value.response.json()["ErrorCode"] == 410
    assert sandbox.messages == []


def test_missing_credentials_are_refused_in_each_esps_words(sandbox: SandboxServer) -> None:
    sendgrid = requests.post(f"{sandbox.sendgrid_api_url}mail/send", json={}, timeout=5)
    postmark = requests.post(f"{sandbox.postmark_api_url}email", json={}, timeout=5)
    ses = requests.post(f"{sandbox.ses_endpoint_url}/v2/email/outbound-emails", json={}, timeout=5)

    assert (sendgrid.status_code, list(sendgrid.json())) == (401, ["errors"])
    assert (postmark.status_code, postmark.json()["ErrorCode"]) == (401, 10)
    assert (ses.status_code, ses.headers["x-amzn-ErrorType"]) == (403, "MissingAuthenticationTokenException")


@pytest.mark.parametrize(
    ("payload", "field_name"),
    [
        (
            {
                "from": {"email": "a@example.com"},
                "subject": "s",
                "content": [{"type": "text/plain", "value": "x"}],
            },
            "personalizations",
        ),
        (
            {
                "personalizations": [{"to": [{"email": f"r{i}@example.com"}]} for i in range(1001)],
                "from": {"email": "a@example.com"},
                "subject": "s",
                "content": [{"type": "text/plain", "value": "x"}],
            },
            "personalizations",
        ),
        (
            {
                "personalizations": [{"to": [{"email": "r@example.com"}]}],
                "subject": "s",
                "content": [{"type": "text/plain", "value": "x"}],
            },
            "from.email",
        ),
        (
            {
                "personalizations": [{"to": [{"email": "r@example.com"}]}],
                "from": {"email": "a@example.com"},
                "subject": "s",
            },
            "content",
        ),
    ],
)
def test_sendgrid_rejects_what_sendgrid_rejects(sandbox: SandboxServer, payload: dict, field_name: str) -> None:
    response = requests.post(
        f"{sandbox.sendgrid_api_url}mail/send", json=payload, headers={"Authorization": "Bearer k"}, timeout=5
    )

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == field_name
    assert sandbox.messages == []


# --- inspection


def test_inspection_pages_escape_and_filter(sandbox: SandboxServer) -> None:
    conn = connection(sandbox, "postmark")
    conn.send_messages(
        [
            message(["x@example.com"], subject="<script>alert(1)</script>", html='<b onclick="x()">hi</b>'),
            message(["y@example.com"], subject="second"),
        ]
    )
    first = sandbox.messages[0]

    index = requests.get(f"{sandbox.url}/", timeout=5)
    detail = requests.get(f"{sandbox.url}/_sandbox/messages/{first.id}", timeout=5)
    as_json = requests.get(f"{sandbox.url}/_sandbox/messages/{first.id}.json", timeout=5).json()
    listed = requests.get(f"{sandbox.url}/_sandbox/messages", params={"to": "Y@example.com"}, timeout=5).json()
    paged = requests.get(f"{sandbox.url}/_sandbox/messages", params={"limit": 1, "offset": 1}, timeout=5).json()

    assert "<script>alert" not in index.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in index.text
    assert index.text.index("second") < index.text.index("&lt;script&gt;")  # newest first
    assert "<script>alert" not in detail.text
    assert '<iframe sandbox srcdoc="&lt;b onclick=&quot;x()&quot;&gt;hi&lt;/b&gt;">' in detail.text
    assert "default-src 'none'" in detail.headers["Content-Security-Policy"]
    assert as_json["raw"]["Subject"] == "<script>alert(1)</script>"
    assert [m["to"] for m in listed["results"]] == [["y@example.com"]] and listed["count"] == 1
    assert (paged["count"], [m["subject"] for m in paged["results"]]) == (2, ["second"])
    assert requests.get(f"{sandbox.url}/_sandbox/messages/999", timeout=5).status_code == 404
    assert requests.get(f"{sandbox.url}/_sandbox/health", timeout=5).json() == {"status": "ok"}


def test_config_and_reset_over_http(sandbox: SandboxServer) -> None:
    message(["x@example.com"], connection=connection(sandbox, "postmark")).send()

    changed = requests.post(
        f"{sandbox.url}/_sandbox/config",
        json={"open_rate": 0.5, "fail_next": [{"esp": "postmark", "status": 500}]},
        timeout=5,
    ).json()
    refused = requests.post(f"{sandbox.url}/_sandbox/config", json={"bogus": 1}, timeout=5)
    with pytest.raises(AnymailRequestsAPIError):
        message(["x@example.com"], connection=connection(sandbox, "postmark")).send()
    requests.post(f"{sandbox.url}/_sandbox/reset", timeout=5)

    assert changed["open_rate"] == 0.5 and changed["webhook_auth"] == [HOOK_USER, "***"]
    assert refused.status_code == 400
    assert sandbox.messages == []


def test_connections_are_kept_alive(sandbox: SandboxServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sandbox.port, timeout=5)
    sockets = []
    for _ in range(3):
        conn.request("GET", "/_sandbox/health")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b'{"status": "ok"}'
        sockets.append(conn.sock)
    conn.close()

    assert sockets[0] is sockets[1] is sockets[2]


# --- payload builders


def _stored(esp: str, **overrides: Any) -> SandboxMessage:
    fields: dict[str, Any] = {
        "id": 3,
        "esp": esp,
        "esp_message_id": "m-1",
        "from_email": "news@mailer.example",
        "to": ["r@example.com"],
        "subject": "Hi",
        "html": None,
        "text": "t",
        "headers": {"X-Metadata": '{"mailer_msg": "3"}'},
        "metadata": {"mailer_msg": "3"},
        "received_at": datetime(2026, 1, 2, tzinfo=UTC),
        "raw": {},
        "destination": ["r@example.com"],
        "call_id": "call",
    }
    return SandboxMessage(**{**fields, **overrides})


@pytest.mark.parametrize("kind", ["delivered", "bounced", "complained", "opened", "clicked"])
def test_sendgrid_events_add_only_keys_anymail_knows(kind: str) -> None:
    event = sandbox_events.sendgrid_event(
        _stored("sendgrid"), kind, when=datetime.now(UTC), url="https://mailer.example/"
    )

    assert set(event) - SendGridTrackingWebhookView.sendgrid_event_keys == {"mailer_msg"}
    assert (event["anymail_id"], event["email"]) == ("m-1", "r@example.com")


def test_sendgrid_event_without_anymail_id_falls_back_to_smtp_id() -> None:
    msg = _stored("sendgrid", esp_message_id=sandbox_events.sendgrid_smtp_id("call"))

    event = sandbox_events.sendgrid_event(msg, "delivered", when=datetime.now(UTC))

    assert "anymail_id" not in event and event["smtp-id"] == msg.esp_message_id


def test_sns_envelopes_are_unique_and_carry_the_ses_record() -> None:
    record = sandbox_events.ses_event(_stored("amazon_ses", tags=["a", "b"]), "bounced", when=datetime.now(UTC))
    first = sandbox_events.sns_notification(record, when=datetime.now(UTC))
    second = sandbox_events.sns_notification(record, when=datetime.now(UTC))

    assert first["MessageId"] != second["MessageId"]
    assert json.loads(first["Message"]) == record
    assert record["bounce"]["bouncedRecipients"][0]["status"] == "5.1.1"
    assert [h["value"] for h in record["mail"]["headers"] if h["name"] == "X-Tag"] == ["a", "b"]


def test_postmark_events_use_the_documented_record_types() -> None:
    msg = _stored("postmark", tags=["news"])
    when = datetime.now(UTC)

    records = {
        kind: sandbox_events.postmark_event(msg, kind, when=when, url="u")
        for kind in ("delivered", "bounced", "complained", "opened", "clicked")
    }

    assert {k: r["RecordType"] for k, r in records.items()} == {
        "delivered": "Delivery",
        "bounced": "Bounce",
        "complained": "SpamComplaint",
        "opened": "Open",
        "clicked": "Click",
    }
    assert (records["bounced"]["Type"], records["bounced"]["TypeCode"]) == ("HardBounce", 1)
    assert records["bounced"]["ID"] != records["complained"]["ID"]
    assert all(r["Tag"] == "news" and r["Metadata"] == {"mailer_msg": "3"} for r in records.values())


# --- the management command


@override_settings(MAILER_WEBHOOK_SECRETS=["app:app-secret", "app:old-secret"])
def test_run_sandbox_defaults_to_the_first_webhook_secret() -> None:
    command = RunSandboxCommand()
    options = vars(command.create_parser("manage.py", "run_sandbox").parse_args(["--simulate-domain", "ex.com"]))

    server = command.build_server(options)

    config = server.config
    assert (config["webhook_url"], config["webhook_auth"]) == ("http://127.0.0.1:8000", ["app", "app-secret"])
    assert (config["open_rate"], config["click_rate"], config["simulate_domains"]) == (0.3, 0.1, ["ex.com"])


def test_run_sandbox_serves_until_stopped() -> None:
    command = RunSandboxCommand()
    out = StringIO()
    thread = threading.Thread(
        target=call_command,
        args=(command, "--port", "0", "--webhook-url", "", "--webhook-auth", "u:p"),
        kwargs={"stdout": out},
    )
    thread.start()
    try:
        wait_until(lambda: "listening on" in out.getvalue())
        url = out.getvalue().split("listening on ")[1].split()[0]
        assert requests.get(f"{url}/_sandbox/health", timeout=5).json() == {"status": "ok"}
        assert "webhooks: off" in out.getvalue()
    finally:
        command.stop_event.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
