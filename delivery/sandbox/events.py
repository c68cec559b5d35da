"""Tracking webhooks in each ESP's own wire format, and the thread that posts them.

The builders are pure functions of a stored message so their shapes can be checked without a network. The
poster imitates how the ESPs deliver: SendGrid batches events into JSON arrays, Postmark posts one object per
event, SES goes through SNS (one Notification per POST, with the `x-amz-sns-*` headers anymail checks), and a
failed POST is retried a few times with a growing backoff.
"""

from __future__ import annotations

import base64
import heapq
import http.client
import itertools
import json
import queue
import threading
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .server import SandboxMessage

SENDGRID = "sendgrid"
POSTMARK = "postmark"
AMAZON_SES = "amazon_ses"
ESPS = (SENDGRID, POSTMARK, AMAZON_SES)

# Event kinds, named as anymail normalizes them so one vocabulary serves all three ESPs.
DELIVERED = "delivered"
BOUNCED = "bounced"
COMPLAINED = "complained"
OPENED = "opened"
CLICKED = "clicked"

WEBHOOK_PATHS = {
    SENDGRID: "/webhooks/sendgrid/tracking/",
    POSTMARK: "/webhooks/postmark/tracking/",
    AMAZON_SES: "/webhooks/amazon_ses/tracking/",
}

AWS_ACCOUNT_ID = "123456789012"
SNS_TOPIC_ARN = f"arn:aws:sns:us-east-1:{AWS_ACCOUNT_ID}:mailer-sandbox"
SNS_SUBSCRIPTION_ARN = f"{SNS_TOPIC_ARN}:5f1c2a8e-sandbox"
SNS_SIGNING_CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-sandbox.pem"
SES_CONFIGURATION_SET = "mailer-sandbox"

SMTP_OK = "250 2.0.0 OK: queued as sandbox"
SMTP_USER_UNKNOWN = "550 5.1.1 {addr}: Recipient address rejected: User unknown in virtual mailbox table"
SMTP_SUPPRESSED = "550 5.1.1 {addr}: sending suppressed, the address is on the account suppression list"
SANDBOX_IP = "127.0.0.1"
OPEN_USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) SandboxMail/1.0"
FEEDBACK_LOOP_AGENT = "Mailer Sandbox Feedback Loop (1.0)"

_postmark_record_ids = itertools.count(int(time.time()) % 1_000_000 * 1000)


def _iso_ms(when: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, the way SES and SNS write times."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _url_token(nbytes: int = 16) -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes[:nbytes]).rstrip(b"=").decode()


def sendgrid_smtp_id(call_id: str) -> str:
    """SendGrid's `smtp-id` for one mail/send call; also the message id when anymail sent no anymail_id."""
    return f"<{call_id}@sandbox.sendgrid.net>"


# --- SendGrid


def sendgrid_event(
    msg: SandboxMessage, kind: str, *, when: datetime, url: str | None = None, suppressed: bool = False
) -> dict[str, Any]:
    """One SendGrid Event Webhook object.

    Custom args are flattened into the event, as SendGrid does; only keys anymail knows as SendGrid's own are
    added next to them, so anymail's "everything else is metadata" rule recovers exactly what was sent.
    """
    smtp_id = sendgrid_smtp_id(msg.call_id)
    event: dict[str, Any] = dict(msg.metadata)
    event.update(
        {
            "email": msg.to[0],
            "timestamp": int(when.timestamp()),
            "smtp-id": smtp_id,
            "sg_event_id": _url_token(),
            "sg_message_id": f"{msg.call_id}.sandbox{msg.id}.0",
        }
    )
    if msg.esp_message_id and msg.esp_message_id != smtp_id:
        event["anymail_id"] = msg.esp_message_id
    if msg.tags:
        event["category"] = list(msg.tags)
    if kind == DELIVERED:
        event.update(event="delivered", response=SMTP_OK, ip=SANDBOX_IP, tls=1)
    elif kind == BOUNCED:
        template = SMTP_SUPPRESSED if suppressed else SMTP_USER_UNKNOWN
        event.update(
            event="bounce",
            type="bounce",
            status="5.1.1",
            reason=template.format(addr=msg.to[0]),
            ip=SANDBOX_IP,
            tls=1,
        )
    elif kind == COMPLAINED:
        event.update(event="spamreport")
    elif kind == OPENED:
        event.update(event="open", useragent=OPEN_USER_AGENT, ip=SANDBOX_IP)
    elif kind == CLICKED:
        event.update(
            event="click",
            url=url,
            url_offset={"index": 0, "type": "html"},
            useragent=OPEN_USER_AGENT,
            ip=SANDBOX_IP,
        )
    else:
        raise ValueError(f"unknown event kind {kind!r}")
    return event


# --- Postmark

_POSTMARK_CLIENT = {"Name": "Sandbox Mail 1.0", "Company": "Mailer", "Family": "Sandbox Mail"}
_POSTMARK_OS = {"Name": "Linux", "Company": "Linux Foundation", "Family": "Linux"}


def postmark_event(
    msg: SandboxMessage, kind: str, *, when: datetime, url: str | None = None, suppressed: bool = False
) -> dict[str, Any]:
    """One Postmark webhook object (Delivery, Bounce, SpamComplaint, Open or Click record)."""
    stamp = _iso_ms(when)
    common: dict[str, Any] = {
        "MessageID": msg.esp_message_id,
        "ServerID": 1,
        "MessageStream": (msg.raw.get("MessageStream") if isinstance(msg.raw, dict) else None) or "outbound",
        "Metadata": dict(msg.metadata),
    }
    if msg.tags:
        common["Tag"] = msg.tags[0]
    addr = msg.to[0]
    if kind == DELIVERED:
        return {
            "RecordType": "Delivery",
            **common,
            "Recipient": addr,
            "DeliveredAt": stamp,
            "Details": SMTP_OK,
        }
    if kind in (BOUNCED, COMPLAINED):
        bounce = kind == BOUNCED
        template = SMTP_SUPPRESSED if suppressed else SMTP_USER_UNKNOWN
        return {
            "RecordType": "Bounce" if bounce else "SpamComplaint",
            "ID": next(_postmark_record_ids),
            "Type": "HardBounce" if bounce else "SpamComplaint",
            "TypeCode": 1 if bounce else 512,
            "Name": "Hard bounce" if bounce else "Spam complaint",
            **common,
            "Description": "The receiving server says this mailbox does not exist." if bounce else "",
            "Details": "smtp;" + template.format(addr=addr) if bounce else "",
            "Email": addr,
            "From": msg.from_email,
            "BouncedAt": stamp,
            "DumpAvailable": False,
            "Inactive": True,
            "CanActivate": bounce,
            "Subject": msg.subject,
        }
    engagement = {
        "Client": dict(_POSTMARK_CLIENT),
        "OS": dict(_POSTMARK_OS),
        "Platform": "Desktop",
        "UserAgent": OPEN_USER_AGENT,
        "Geo": {"IP": SANDBOX_IP},
    }
    if kind == OPENED:
        return {
            "RecordType": "Open",
            **common,
            "FirstOpen": True,
            **engagement,
            "ReadSeconds": 5,
            "ReceivedAt": stamp,
            "Recipient": addr,
        }
    if kind == CLICKED:
        return {
            "RecordType": "Click",
            **common,
            "ClickLocation": "HTML",
            **engagement,
            "OriginalLink": url,
            "ReceivedAt": stamp,
            "Recipient": addr,
        }
    raise ValueError(f"unknown event kind {kind!r}")


# --- Amazon SES through SNS


def _ses_mail(msg: SandboxMessage) -> dict[str, Any]:
    """The `mail` object of an SES event, with the original headers (X-Metadata, X-Tag) that anymail reads."""
    domain = msg.from_email.rpartition("@")[2] or "example.com"
    headers = [{"name": "From", "value": msg.from_email}]
    headers.append({"name": "To", "value": ", ".join(msg.destination)})
    headers.append({"name": "Subject", "value": msg.subject})
    headers += [{"name": name, "value": value} for name, value in msg.headers.items() if name.lower() != "x-tag"]
    headers += [{"name": "X-Tag", "value": tag} for tag in msg.tags]
    common_headers: dict[str, Any] = {
        "from": [msg.from_email],
        "to": list(msg.destination),
        "subject": msg.subject,
    }
    for name, value in msg.headers.items():
        if name.lower() == "message-id":
            common_headers["messageId"] = value
        elif name.lower() == "date":
            common_headers["date"] = value
    return {
        "timestamp": _iso_ms(msg.received_at),
        "source": msg.from_email,
        "sourceArn": f"arn:aws:ses:us-east-1:{AWS_ACCOUNT_ID}:identity/{domain}",
        "sourceIp": SANDBOX_IP,
        "callerIdentity": "sandbox",
        "sendingAccountId": AWS_ACCOUNT_ID,
        "messageId": msg.esp_message_id,
        "destination": list(msg.destination),
        "headersTruncated": False,
        "headers": headers,
        "commonHeaders": common_headers,
        "tags": {
            "ses:configuration-set": [SES_CONFIGURATION_SET],
            "ses:source-ip": [SANDBOX_IP],
            "ses:from-domain": [domain],
            "ses:caller-identity": ["sandbox"],
        },
    }


def ses_event(
    msg: SandboxMessage, kind: str, *, when: datetime, url: str | None = None, suppressed: bool = False
) -> dict[str, Any]:
    """An SES event-publishing record (`eventType`), the format that also carries opens and clicks."""
    stamp = _iso_ms(when)
    addr = msg.to[0]
    event: dict[str, Any]
    if kind == DELIVERED:
        event = {
            "eventType": "Delivery",
            "delivery": {
                "timestamp": stamp,
                "processingTimeMillis": 120,
                "recipients": [addr],
                "smtpResponse": SMTP_OK,
                "reportingMTA": "a8-1.smtp-out.amazonses.com",
                "remoteMtaIp": SANDBOX_IP,
            },
        }
    elif kind == BOUNCED:
        template = SMTP_SUPPRESSED if suppressed else SMTP_USER_UNKNOWN
        event = {
            "eventType": "Bounce",
            "bounce": {
                "bounceType": "Permanent",
                "bounceSubType": "OnAccountSuppressionList" if suppressed else "General",
                "bouncedRecipients": [
                    {
                        "emailAddress": addr,
                        "action": "failed",
                        "status": "5.1.1",
                        "diagnosticCode": "smtp; " + template.format(addr=addr),
                    }
                ],
                "timestamp": stamp,
                "feedbackId": f"{msg.esp_message_id}-bounce",
                "reportingMTA": "dns; a8-1.smtp-out.amazonses.com",
            },
        }
    elif kind == COMPLAINED:
        event = {
            "eventType": "Complaint",
            "complaint": {
                "complainedRecipients": [{"emailAddress": addr}],
                "timestamp": stamp,
                "feedbackId": f"{msg.esp_message_id}-complaint",
                "userAgent": FEEDBACK_LOOP_AGENT,
                "complaintFeedbackType": "abuse",
                "arrivalDate": stamp,
            },
        }
    elif kind == OPENED:
        event = {
            "eventType": "Open",
            "open": {"timestamp": stamp, "userAgent": OPEN_USER_AGENT, "ipAddress": SANDBOX_IP},
        }
    elif kind == CLICKED:
        event = {
            "eventType": "Click",
            "click": {
                "timestamp": stamp,
                "ipAddress": SANDBOX_IP,
                "userAgent": OPEN_USER_AGENT,
                "link": url,
                "linkTags": {},
            },
        }
    else:
        raise ValueError(f"unknown event kind {kind!r}")
    event["mail"] = _ses_mail(msg)
    return event


def sns_notification(ses_record: dict[str, Any], *, when: datetime) -> dict[str, Any]:
    """Wrap an SES record in an SNS Notification; the signature is filler (anymail doesn't check it)."""
    sns_message_id = str(uuid.uuid4())
    return {
        "Type": "Notification",
        "MessageId": sns_message_id,
        "TopicArn": SNS_TOPIC_ARN,
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps(ses_record),
        "Timestamp": _iso_ms(when),
        "SignatureVersion": "1",
        "Signature": base64.b64encode(uuid.uuid4().bytes * 8).decode(),
        "SigningCertURL": SNS_SIGNING_CERT_URL,
        "UnsubscribeURL": (
            f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={SNS_SUBSCRIPTION_ARN}"
        ),
    }


def build_payload(
    msg: SandboxMessage, kind: str, *, when: datetime, url: str | None = None, suppressed: bool = False
) -> dict[str, Any]:
    """The unit each ESP posts: a SendGrid event (batched later), a Postmark record, or an SNS envelope."""
    if msg.esp == SENDGRID:
        return sendgrid_event(msg, kind, when=when, url=url, suppressed=suppressed)
    if msg.esp == POSTMARK:
        return postmark_event(msg, kind, when=when, url=url, suppressed=suppressed)
    if msg.esp == AMAZON_SES:
        return sns_notification(ses_event(msg, kind, when=when, url=url, suppressed=suppressed), when=when)
    raise ValueError(f"unknown esp {msg.esp!r}")


# --- The poster


@dataclass
class _PendingEvent:
    esp: str
    payload: dict[str, Any]
    url: str
    auth: tuple[str, str] | None
    shard: int


@dataclass
class _Post:
    esp: str
    url: str
    auth: tuple[str, str] | None
    body: bytes
    headers: dict[str, str]
    event_count: int
    shard: int
    attempt: int = 0


@dataclass
class _Batch:
    started: float
    url: str
    auth: tuple[str, str] | None
    events: list[dict[str, Any]] = field(default_factory=list)


def _post_for(esp: str, url: str, auth: tuple[str, str] | None, payload: Any, count: int, shard: int) -> _Post:
    body = json.dumps(payload).encode()
    if esp == AMAZON_SES:
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",  # SNS posts its JSON as text/plain
            "x-amz-sns-message-type": payload["Type"],
            "x-amz-sns-message-id": payload["MessageId"],
            "x-amz-sns-topic-arn": payload["TopicArn"],
            "x-amz-sns-subscription-arn": SNS_SUBSCRIPTION_ARN,
            "User-Agent": "Amazon Simple Notification Service Agent",
        }
    else:
        agent = "SendGrid Event API" if esp == SENDGRID else "Postmark"
        headers = {"Content-Type": "application/json", "User-Agent": agent}
    return _Post(esp=esp, url=url, auth=auth, body=body, headers=headers, event_count=count, shard=shard)


class WebhookPoster:
    """Delivers webhook payloads off the API request threads.

    One scheduler thread releases events when due (after the configured delay), groups SendGrid events into
    batches, and hands posts to sender threads. Posts are sharded by message so that one message's events keep
    their order (unless a retry makes one fall behind, as with real ESPs), while different messages go out in
    parallel.
    """

    def __init__(
        self,
        *,
        senders: int = 4,
        batch_window_s: float = 0.2,
        batch_max: int = 100,
        max_attempts: int = 4,
        backoff_s: float = 0.2,
        timeout_s: float = 10.0,
        max_log: int = 200_000,
    ) -> None:
        self.batch_window_s = batch_window_s
        self.batch_max = batch_max
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _PendingEvent | _Post]] = []
        self._seq = itertools.count()
        self._batches: dict[tuple[str, tuple[str, str] | None], _Batch] = {}
        self._pending = 0  # events enqueued and not yet delivered or given up on
        self._stopping = False
        self._log: deque[tuple[str, str, int | str, int]] = deque(maxlen=max_log)
        self._queues: list[queue.Queue[_Post | None]] = [queue.Queue() for _ in range(senders)]
        self._round_robin = itertools.count()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._schedule, name="sandbox-webhook-scheduler", daemon=True)]
        self._threads += [
            threading.Thread(target=self._send, args=(q,), name=f"sandbox-webhook-sender-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._batches.clear()
            self._pending = 0
            self._cond.notify_all()
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 1)

    def enqueue(
        self,
        esp: str,
        payload: dict[str, Any],
        *,
        base_url: str,
        auth: tuple[str, str] | None,
        delay_s: float,
        shard_key: str,
    ) -> None:
        url = base_url.rstrip("/") + WEBHOOK_PATHS[esp]
        item = _PendingEvent(esp, payload, url, auth, zlib.crc32(shard_key.encode()) % len(self._queues))
        with self._cond:
            self._pending += 1
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._seq), item))
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        """Block until every enqueued event was posted or given up on; TimeoutError past `timeout`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending == 0, timeout=timeout):
                raise TimeoutError(f"{self._pending} webhook events still undelivered after {timeout}s")

    @property
    def posts(self) -> list[tuple[str, str, int | str, int]]:
        with self._cond:
            return list(self._log)

    def clear_log(self) -> None:
        with self._cond:
            self._log.clear()

    def _schedule(self) -> None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, item = heapq.heappop(self._heap)
                    if isinstance(item, _Post):
                        self._queues[item.shard].put(item)
                    elif item.esp == SENDGRID:
                        batch = self._batches.setdefault((item.url, item.auth), _Batch(now, item.url, item.auth))
                        batch.events.append(item.payload)
                        if len(batch.events) >= self.batch_max:
                            self._flush((item.url, item.auth))
                    else:
                        post = _post_for(item.esp, item.url, item.auth, item.payload, 1, item.shard)
                        self._queues[item.shard].put(post)
                for key, batch in list(self._batches.items()):
                    if now - batch.started >= self.batch_window_s:
                        self._flush(key)
                wake_at = self._heap[0][0] if self._heap else now + 60.0
                if self._batches:
                    wake_at = min(wake_at, min(b.started for b in self._batches.values()) + self.batch_window_s)
                self._cond.wait(timeout=max(0.0, wake_at - now))

    def _flush(self, key: tuple[str, tuple[str, str] | None]) -> None:
        batch = self._batches.pop(key)
        shard = next(self._round_robin) % len(self._queues)
        post = _post_for(SENDGRID, batch.url, batch.auth, batch.events, len(batch.events), shard)
        self._queues[shard].put(post)

    def _send(self, inbox: queue.Queue[_Post | None]) -> None:
        connections = _KeepAliveConnections(self.timeout_s)
        try:
            while (post := inbox.get()) is not None:
                outcome: int | str
                try:
                    outcome = connections.post(post.url, post.body, post.headers, post.auth)
                    ok = 200 <= outcome < 300
                except (OSError, http.client.HTTPException) as err:
                    outcome = f"{type(err).__name__}: {err}"
                    ok = False
                self._finish(post, outcome, ok)
        finally:
            connections.close()

    def _finish(self, post: _Post, outcome: int | str, ok: bool) -> None:
        with self._cond:
            if self._stopping:
                return
            self._log.append((post.esp, post.url, outcome, post.event_count))
            post.attempt += 1
            if not ok and post.attempt < self.max_attempts:
                due = time.monotonic() + self.backoff_s * 2 ** (post.attempt - 1)
                heapq.heappush(self._heap, (due, next(self._seq), post))
            else:
                self._pending -= post.event_count
            self._cond.notify_all()


class _KeepAliveConnections:
    """One sender thread's persistent connections, one per origin.

    Plain http.client costs a fraction of requests per POST, which matters when a benchmark makes the sandbox
    post a hundred thousand webhooks. A connection the app closed while idle is retried once on a fresh one,
    so that it isn't logged as a failed delivery.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._connections: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def post(self, url: str, body: bytes, headers: dict[str, str], auth: tuple[str, str] | None) -> int:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {**headers, "Content-Length": str(len(body))}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        reused = key in self._connections
        try:
            return self._post_once(key, parts.hostname or "", parts.port, path, body, headers)
        except (OSError, http.client.HTTPException):
            if not reused:
                raise
            return self._post_once(key, parts.hostname or "", parts.port, path, body, headers)

    def _post_once(
        self,
        key: tuple[str, str],
        host: str,
        port: int | None,
        path: str,
        body: bytes,
        headers: dict[str, str],
    ) -> int:
        conn = self._connections.get(key)
        if conn is None:
            factory = http.client.HTTPSConnection if key[0] == "https" else http.client.HTTPConnection
            conn = self._connections[key] = factory(host, port, timeout=self.timeout_s)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            del self._connections[key]
            raise
        if response.will_close:
            conn.close()
            del self._connections[key]
        return response.status

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()
