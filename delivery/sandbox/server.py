"""The ESP sandbox: a loopback server that anymail's real SendGrid, Postmark and Amazon SES backends send to.

It answers the way each ESP answers (status codes, bodies, error shapes, batch limits), keeps one record per
recipient for inspection, and reports back through each ESP's own webhook format, so the whole path from
`send()` to anymail's tracking signal runs offline. Development and test tool only.
"""

from __future__ import annotations

import base64
import binascii
import copy
import email
import email.policy
import html
import itertools
import json
import logging
import random
import re
import socketserver
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from .events import (
    AMAZON_SES,
    BOUNCED,
    CLICKED,
    COMPLAINED,
    DELIVERED,
    ESPS,
    OPENED,
    POSTMARK,
    SENDGRID,
    WebhookPoster,
    build_payload,
    sendgrid_smtp_id,
)

logger = logging.getLogger(__name__)

Reply = tuple[int, bytes, dict[str, str]]
Handler = Callable[[Any], tuple[Reply, list["SandboxMessage"]]]

SES_SIMULATOR_DOMAIN = "simulator.amazonses.com"
SIMULATED_MAILBOXES = {"bounce", "complaint", "suppressionlist"}
DEFAULT_CLICK_URL = "https://example.com/"
SENDGRID_MAX_PERSONALIZATIONS = 1000
SENDGRID_MAX_RECIPIENTS = 1000
POSTMARK_MAX_BATCH = 500
POSTMARK_MAX_RECIPIENTS = 50
SES_MAX_RECIPIENTS = 50
SES_MAX_BULK_ENTRIES = 50
PAGE_SIZE = 50

# Headers that describe the envelope or MIME structure rather than being "custom headers as sent".
_STRUCTURAL_HEADERS = {
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}
_LINK_RE = re.compile(r"""href\s*=\s*["'](https?://[^"'\s>]+)["']""", re.IGNORECASE)
_TEMPLATE_VAR_RE = re.compile(r"\{\{\{?\s*([\w.-]+)\s*\}?\}\}")


@dataclass
class SandboxMessage:
    """One recipient's copy of one accepted send: a batch of N recipients is stored as N of these."""

    id: int
    esp: str
    esp_message_id: str
    from_email: str
    to: list[str]
    subject: str
    html: str | None
    text: str | None
    headers: dict[str, str]
    metadata: dict[str, Any]
    received_at: datetime
    raw: Any
    events: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    destination: list[str] = field(default_factory=list)  # every recipient of the ESP-level message
    call_id: str = ""  # the API call this came from: batch members share it

    def as_dict(self, *, include_raw: bool = False) -> dict[str, Any]:
        data = {
            "id": self.id,
            "esp": self.esp,
            "esp_message_id": self.esp_message_id,
            "from_email": self.from_email,
            "to": list(self.to),
            "subject": self.subject,
            "html": self.html,
            "text": self.text,
            "headers": dict(self.headers),
            "metadata": dict(self.metadata),
            "tags": list(self.tags),
            "destination": list(self.destination),
            "call_id": self.call_id,
            "received_at": self.received_at.isoformat(),
            "events": list(self.events),
        }
        if include_raw:
            data["raw"] = self.raw.decode("utf-8", "replace") if isinstance(self.raw, bytes) else self.raw
        return data


@dataclass(frozen=True)
class _Config:
    webhook_url: str | None = None
    webhook_auth: tuple[str, str] | None = None
    open_rate: float = 0.0
    click_rate: float = 0.0
    latency_ms: float = 0
    simulate_domains: tuple[str, ...] = ()
    webhook_delay_ms: float = 0
    seed: int | None = None
    max_messages: int = 200_000
    fail_rate: float = 0.0
    fail_status: int = 503


_CONFIG_OPTIONS = {f for f in _Config.__dataclass_fields__}
_FAULT_OPTIONS = {"fail_next", "timeout_next"}


# --- small helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _json_reply(status: int, data: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})}


def _html_reply(status: int, page: str) -> Reply:
    # Message HTML is shown only inside a sandboxed srcdoc iframe; the CSP keeps scripts and remote loads off.
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src 'self'"
    return status, page.encode(), {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": csp}


def _addr_specs(*fields: Any) -> list[str]:
    """Addr-specs from header-style strings or lists of them ("Name <a@b>, c@d")."""
    values: list[str] = []
    for value in fields:
        if isinstance(value, str):
            values.append(value)
        elif isinstance(value, list):
            values += [v for v in value if isinstance(v, str)]
    return [addr for _, addr in getaddresses(values) if addr]


def _ses_message_id() -> str:
    """Shaped like real SES ids (time prefix, uuid, suffix) so logs and UIs look familiar."""
    return f"0100{int(time.time() * 1000):012x}-{uuid.uuid4()}-000000"


def _mime_bodies(message: EmailMessage) -> tuple[str | None, str | None]:
    text = html_body = None
    for part in message.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain" and text is None:
            text = part.get_content()
        elif content_type == "text/html" and html_body is None:
            html_body = part.get_content()
    return text, html_body


def _custom_headers(items: list[tuple[str, str]]) -> dict[str, str]:
    """First value of each non-structural header, keeping the sender's spelling of the name."""
    headers: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in items:
        if name.lower() in _STRUCTURAL_HEADERS or name.lower() in seen:
            continue
        seen.add(name.lower())
        headers[name] = value
    return headers


def _header_values(items: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in items if key.lower() == name.lower()]


def _metadata_from_header(items: list[tuple[str, str]]) -> dict[str, Any]:
    """anymail carries SES metadata as JSON in X-Metadata; a malformed value is left out, not guessed."""
    values = _header_values(items, "X-Metadata")
    if not values:
        return {}
    try:
        metadata = json.loads(values[-1])
    except ValueError:
        return {}
    return metadata if isinstance(metadata, dict) else {}


def _render(template: str | None, data: Mapping[str, Any]) -> str | None:
    """Just enough of SES's Handlebars to fill `{{name}}` and `{{a.b}}`; missing values render empty."""
    if template is None:
        return None

    def value(match: re.Match[str]) -> str:
        current: Any = data
        for part in match.group(1).split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        return "" if current is None else str(current)

    return _TEMPLATE_VAR_RE.sub(value, template)


def _substitute(text: str | None, substitutions: Mapping[str, Any]) -> str | None:
    if text is None:
        return None
    for key, value in substitutions.items():
        text = text.replace(key, "" if value is None else str(value))
    return text


def _links(html_body: str | None) -> list[str]:
    return [html.unescape(link) for link in _LINK_RE.findall(html_body or "")]


# --- each ESP's error shapes


def _sendgrid_error(status: int, message: str, field_name: str | None = None) -> Reply:
    headers: dict[str, str] = {}
    if status == 429:
        headers = {
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time()) + 1),
        }
    return _json_reply(status, {"errors": [{"message": message, "field": field_name, "help": None}]}, headers)


def _postmark_error(status: int, code: int, message: str) -> Reply:
    return _json_reply(status, {"ErrorCode": code, "Message": message})


def _ses_error(status: int, code: str, message: str) -> Reply:
    headers = {"x-amzn-ErrorType": code, "x-amzn-RequestId": str(uuid.uuid4())}
    return _json_reply(status, {"__type": code, "message": message}, headers)


def _fault_reply(esp: str, status: int) -> Reply:
    """An injected failure, worded and shaped as that ESP would answer it."""
    text = {
        400: "Bad Request",
        429: "Too many requests",
        500: "Internal server error",
        503: "Service unavailable",
    }
    message = f"{text.get(status, 'Error')} (sandbox fault injection)"
    if esp == SENDGRID:
        return _sendgrid_error(status, message)
    if esp == POSTMARK:
        code = {400: 300, 401: 10, 422: 300, 429: 429, 503: 100}.get(status, status)
        return _postmark_error(status, code, message)
    codes = {400: "BadRequestException", 429: "TooManyRequestsException", 503: "ServiceUnavailable"}
    return _ses_error(status, codes.get(status, "InternalFailure" if status >= 500 else "BadRequestException"), message)


# --- the server


class SandboxServer:
    """A fake SendGrid v3 / Postmark / SES v2 endpoint with storage, webhooks, and fault injection."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        webhook_url: str | None = None,
        webhook_auth: tuple[str, str] | None = None,
        open_rate: float = 0.0,
        click_rate: float = 0.0,
        latency_ms: float = 0,
        simulate_domains: list[str] | tuple[str, ...] = (),
        webhook_delay_ms: float = 0,
        seed: int | None = None,
        max_messages: int = 200_000,
    ) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._config = _Config()
        self._rng = random.Random(seed)
        self._messages: deque[SandboxMessage] = deque(maxlen=max_messages)
        self._by_id: dict[int, SandboxMessage] = {}
        self._ids = itertools.count(1)
        self._fail_next: list[dict[str, Any]] = []
        self._timeout_next: list[dict[str, Any]] = []
        self._ses_templates: dict[str, dict[str, str]] = {}
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._poster = WebhookPoster()
        self.configure(
            webhook_url=webhook_url,
            webhook_auth=webhook_auth,
            open_rate=open_rate,
            click_rate=click_rate,
            latency_ms=latency_ms,
            simulate_domains=simulate_domains,
            webhook_delay_ms=webhook_delay_ms,
            seed=seed,
            max_messages=max_messages,
        )
        self._api_routes: dict[str, tuple[str, Handler]] = {
            "/sendgrid/v3/mail/send": (SENDGRID, self._sendgrid_mail_send),
            "/postmark/email": (POSTMARK, self._postmark_email),
            "/postmark/email/batch": (POSTMARK, self._postmark_batch),
            "/postmark/email/withTemplate": (POSTMARK, self._postmark_with_template),
            "/postmark/email/withTemplate/": (POSTMARK, self._postmark_with_template),
            "/postmark/email/batchWithTemplates": (POSTMARK, self._postmark_batch_with_templates),
        }
        for prefix in ("/ses", ""):  # the root form serves clients whose endpoint_url has no path
            self._api_routes[f"{prefix}/v2/email/outbound-emails"] = (AMAZON_SES, self._ses_send_email)
            self._api_routes[f"{prefix}/v2/email/outbound-bulk-emails"] = (AMAZON_SES, self._ses_send_bulk)
            self._api_routes[f"{prefix}/v2/email/templates"] = (AMAZON_SES, self._ses_create_template)

    # lifecycle

    def start(self) -> SandboxServer:
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="esp-sandbox", daemon=True
        )
        self._thread.start()
        self._poster.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping on latency or an injected hang
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self._poster.stop()
        self._poster = WebhookPoster()  # a stopped poster can't restart; a fresh one lets start() be called again

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # addresses

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104 (naming, not binding)
        return f"http://{host}:{self.port}"

    @property
    def sendgrid_api_url(self) -> str:
        return f"{self.url}/sendgrid/v3/"

    @property
    def postmark_api_url(self) -> str:
        return f"{self.url}/postmark/"

    @property
    def ses_endpoint_url(self) -> str:
        return f"{self.url}/ses"

    # inspection

    @property
    def messages(self) -> list[SandboxMessage]:
        """A snapshot, in arrival order; later events don't change the returned objects."""
        with self._lock:
            snapshot = []
            for msg in self._messages:
                clone = copy.copy(msg)
                clone.events = list(msg.events)
                snapshot.append(clone)
            return snapshot

    def get_message(self, message_id: int) -> SandboxMessage | None:
        with self._lock:
            msg = self._by_id.get(message_id)
            if msg is None:
                return None
            clone = copy.copy(msg)
            clone.events = list(msg.events)
            return clone

    @property
    def webhook_posts(self) -> list[tuple[str, str, int | str, int]]:
        """(esp, url, HTTP status or error text, number of events) for every webhook POST attempt."""
        return self._poster.posts

    def wait_for_webhooks(self, timeout: float = 10.0) -> None:
        """Block until every generated event was posted or given up on; raises TimeoutError past `timeout`."""
        self._poster.wait(timeout)

    def clear(self) -> None:
        """Forget messages, the webhook log and pending one-shot faults; settings and SES templates stay."""
        with self._lock:
            self._messages.clear()
            self._by_id.clear()
            self._fail_next.clear()
            self._timeout_next.clear()
        self._poster.clear_log()

    # configuration

    @property
    def config(self) -> dict[str, Any]:
        with self._lock:
            cfg = self._config
            return {
                **{name: getattr(cfg, name) for name in _CONFIG_OPTIONS},
                "simulate_domains": list(cfg.simulate_domains),
                "webhook_auth": list(cfg.webhook_auth) if cfg.webhook_auth else None,
                "fail_next": [dict(f) for f in self._fail_next],
                "timeout_next": [dict(f) for f in self._timeout_next],
            }

    def configure(self, **options: Any) -> None:
        """Change settings at run time; takes the constructor's keywords plus the fault options.

        fail_next=[{"esp": "sendgrid"|"postmark"|"amazon_ses"|"*", "status": 429, "times": 1}] and
        timeout_next=[{"esp": ..., "seconds": 5, "times": 1}] replace the pending lists; fail_rate with
        fail_status inject random failures.
        """
        unknown = set(options) - _CONFIG_OPTIONS - _FAULT_OPTIONS
        if unknown:
            raise TypeError(f"unknown sandbox option(s): {', '.join(sorted(unknown))}")
        changes = {name: _validate_option(name, value) for name, value in options.items() if name in _CONFIG_OPTIONS}
        faults = {name: _validate_faults(name, value) for name, value in options.items() if name in _FAULT_OPTIONS}
        with self._lock:
            self._config = replace(self._config, **changes)
            if "seed" in changes:
                self._rng.seed(changes["seed"])
            if "max_messages" in changes and changes["max_messages"] != self._messages.maxlen:
                kept = deque(self._messages, maxlen=changes["max_messages"])
                self._messages = kept
                self._by_id = {msg.id: msg for msg in kept}
            if "fail_next" in faults:
                self._fail_next = faults["fail_next"]
            if "timeout_next" in faults:
                self._timeout_next = faults["timeout_next"]

    # request handling (called from handler threads)

    def dispatch(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        route = self._api_routes.get(path)
        if route is not None:
            if method != "POST":
                return _json_reply(405, {"error": "method not allowed"}, {"Allow": "POST"})
            esp, handler = route
            return self._api_call(esp, handler, headers, body)
        if path == "/_sandbox/health" and method == "GET":
            return _json_reply(200, {"status": "ok"})
        if path == "/_sandbox/config":
            return self._config_endpoint(method, body)
        if path == "/_sandbox/reset" and method == "POST":
            self.clear()
            return _json_reply(200, {"status": "reset"})
        if path == "/_sandbox/webhooks" and method == "GET":
            posts = [{"esp": e, "url": u, "status": s, "event_count": n} for e, u, s, n in self.webhook_posts]
            return _json_reply(200, {"count": len(posts), "results": posts})
        if method == "GET":
            if path == "/":
                return _html_reply(200, self._index_page(query))
            if path == "/_sandbox/messages":
                return self._messages_json(query)
            match = re.fullmatch(r"/_sandbox/messages/(\d+)(\.json)?", path)
            if match:
                msg = self.get_message(int(match.group(1)))
                if msg is None:
                    return _json_reply(404, {"error": "no such message"})
                if match.group(2):
                    return _json_reply(200, msg.as_dict(include_raw=True))
                return _html_reply(200, _detail_page(msg))
        return _json_reply(404, {"error": f"no route for {method} {path}"})

    def _api_call(self, esp: str, handler: Handler, headers: Mapping[str, str], body: bytes) -> Reply:
        cfg = self._config
        if cfg.latency_ms:
            self._stopping.wait(cfg.latency_ms / 1000)
        hang = self._take_fault(self._timeout_next, esp)
        if hang is not None:
            self._stopping.wait(hang["seconds"])
        auth_error = _check_auth(esp, headers)
        if auth_error is not None:
            return auth_error
        fault = self._take_fault(self._fail_next, esp)
        if fault is not None:
            return _fault_reply(esp, fault["status"])
        if cfg.fail_rate:
            with self._lock:
                unlucky = self._rng.random() < cfg.fail_rate
            if unlucky:
                return _fault_reply(esp, cfg.fail_status)
        try:
            data = json.loads(body or b"null")
        except ValueError:
            if esp == SENDGRID:
                return _sendgrid_error(400, "Bad Request: the body is not valid JSON")
            if esp == POSTMARK:
                return _postmark_error(422, 402, "Received invalid JSON input.")
            return _ses_error(400, "SerializationException", "The request body is not valid JSON.")
        reply, messages = handler(data)
        if messages:
            self._store(messages)  # before replying, so a client that got its answer can wait for the webhooks
        return reply

    def _take_fault(self, faults: list[dict[str, Any]], esp: str) -> dict[str, Any] | None:
        with self._lock:
            for fault in faults:
                if fault["esp"] in ("*", esp):
                    fault["times"] -= 1
                    if fault["times"] <= 0:
                        faults.remove(fault)
                    return dict(fault)
        return None

    def _config_endpoint(self, method: str, body: bytes) -> Reply:
        if method == "POST":
            try:
                options = json.loads(body or b"{}")
                if not isinstance(options, dict):
                    raise TypeError("expected a JSON object")
                self.configure(**options)
            except (TypeError, ValueError) as err:
                return _json_reply(400, {"error": str(err)})
        elif method != "GET":
            return _json_reply(405, {"error": "method not allowed"}, {"Allow": "GET, POST"})
        shown = self.config
        if shown["webhook_auth"]:
            shown["webhook_auth"] = [shown["webhook_auth"][0], "***"]
        return _json_reply(200, shown)

    # storage and events

    def _store(self, messages: list[SandboxMessage]) -> None:
        with self._lock:
            cfg = self._config
            for msg in messages:
                msg.id = next(self._ids)
                if len(self._messages) == self._messages.maxlen:
                    self._by_id.pop(self._messages[0].id, None)
                self._messages.append(msg)
                self._by_id[msg.id] = msg
            planned = self._plan_events(messages, cfg)
        if not cfg.webhook_url:
            return
        when = _now() + timedelta(milliseconds=cfg.webhook_delay_ms)
        for msg, kind, options in planned:
            payload = build_payload(msg, kind, when=when, **options)
            self._poster.enqueue(
                msg.esp,
                payload,
                base_url=cfg.webhook_url,
                auth=cfg.webhook_auth,
                delay_s=cfg.webhook_delay_ms / 1000,
                shard_key=msg.esp_message_id or str(msg.id),
            )

    def _plan_events(self, messages: list[SandboxMessage], cfg: _Config) -> list[tuple[SandboxMessage, str, dict]]:
        """Decide each recipient's fate (caller holds the lock) and record it on the message.

        Address rules act like SES's mailbox simulator. Opens and clicks are drawn per message, from a
        generator seeded by (seed, sandbox id) when a seed is set, so a rerun gives the same outcome whatever
        the thread interleaving. SES can't tell which recipient opened, so it reports one open per SES
        message, for all of its recipients; anymail then expands it to every destination.
        """
        planned: list[tuple[SandboxMessage, str, dict]] = []
        complaints: list[SandboxMessage] = []
        groups: dict[str, list[SandboxMessage]] = {}
        for msg in messages:
            rule = _simulated_mailbox(msg.to[0], cfg.simulate_domains)
            if rule in ("bounce", "suppressionlist"):
                planned.append((msg, BOUNCED, {"suppressed": rule == "suppressionlist"}))
                msg.events.append(BOUNCED)
                continue
            planned.append((msg, DELIVERED, {}))
            msg.events.append(DELIVERED)
            if rule == "complaint":
                complaints.append(msg)
            key = f"ses:{msg.esp_message_id}" if msg.esp == AMAZON_SES else f"id:{msg.id}"
            groups.setdefault(key, []).append(msg)
        for group in groups.values():
            first = group[0]
            rng = random.Random(f"{cfg.seed}:{first.id}") if cfg.seed is not None else self._rng
            opened, clicked = rng.random() < cfg.open_rate, rng.random() < cfg.click_rate
            links = _links(first.html)
            url = rng.choice(links) if links else DEFAULT_CLICK_URL
            if opened:
                planned.append((first, OPENED, {}))
                for msg in group:
                    msg.events.append(OPENED)
            if clicked:
                planned.append((first, CLICKED, {"url": url}))
                for msg in group:
                    msg.events.append(CLICKED)
        for msg in complaints:
            planned.append((msg, COMPLAINED, {}))
            msg.events.append(COMPLAINED)
        return planned

    # SendGrid v3

    def _sendgrid_mail_send(self, data: Any) -> tuple[Reply, list[SandboxMessage]]:
        error = _sendgrid_validate(data)
        if error is not None:
            return _sendgrid_error(400, error[0], error[1]), []
        call_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        received_at = _now()
        content = data.get("content") or []
        text = next((c.get("value") for c in content if c.get("type") == "text/plain"), None)
        html_body = next((c.get("value") for c in content if c.get("type") == "text/html"), None)
        from_email = data["from"]["email"]
        categories = [c for c in data.get("categories") or [] if isinstance(c, str)]
        top = {k: v for k, v in data.items() if k != "personalizations"}
        messages = []
        for personalization in data["personalizations"]:
            substitutions = personalization.get("substitutions") or {}
            args = {**(data.get("custom_args") or {}), **(personalization.get("custom_args") or {})}
            esp_message_id = args.pop("anymail_id", None) or sendgrid_smtp_id(call_id)
            recipients = [
                r["email"]
                for kind in ("to", "cc", "bcc")
                for r in personalization.get(kind) or []
                if isinstance(r, dict)
            ]
            headers = {**(data.get("headers") or {}), **(personalization.get("headers") or {})}
            subject = personalization.get("subject", data.get("subject", ""))
            raw = {**top, "personalizations": [personalization]}
            for addr in recipients:
                messages.append(
                    SandboxMessage(
                        id=0,
                        esp=SENDGRID,
                        esp_message_id=esp_message_id,
                        from_email=from_email,
                        to=[addr],
                        subject=_substitute(subject, substitutions) or "",
                        html=_substitute(html_body, substitutions),
                        text=_substitute(text, substitutions),
                        headers=dict(headers),
                        metadata=dict(args),
                        received_at=received_at,
                        raw=raw,
                        tags=list(categories),
                        destination=list(recipients),
                        call_id=call_id,
                    )
                )
        return (202, b"", {"X-Message-Id": call_id}), messages

    # Postmark

    def _postmark_email(self, data: Any) -> tuple[Reply, list[SandboxMessage]]:
        result, messages = _postmark_message(data, template=False, call_id=str(uuid.uuid4()))
        return _json_reply(200 if result["ErrorCode"] == 0 else 422, result), messages

    def _postmark_with_template(self, data: Any) -> tuple[Reply, list[SandboxMessage]]:
        result, messages = _postmark_message(data, template=True, call_id=str(uuid.uuid4()))
        return _json_reply(200 if result["ErrorCode"] == 0 else 422, result), messages

    def _postmark_batch(self, data: Any) -> tuple[Reply, list[SandboxMessage]]:
        return _postmark_many(data, template=False)

    def _postmark_batch_with_templates(self, data: Any) -> tuple[Reply, list[SandboxMessage]]:
        items = data.get("Messages") if isinstance(data, dict) else None
        return _postmark_many(items, template=True)

    # Amazon SES v2

    def _ses_send_email(self, data: Any) -> tuple[Reply, list[SandboxMessage]]:
        if not isinstance(data, dict):
            return _ses_error(400, "BadRequestException", "Expected a JSON object."), []
        content = data.get("Content") or {}
        recipients = _ses_destination(data.get("Destination"))
        from_email = parseaddr(data.get("FromEmailAddress") or "")[1]
        raw: Any = data
        if "Raw" in content:
            try:
                raw = base64.b64decode(content["Raw"]["Data"])
            except (KeyError, TypeError, binascii.Error):
                return _ses_error(400, "BadRequestException", "Content.Raw.Data must be base64 MIME."), []
            mime = email.message_from_bytes(raw, policy=email.policy.default)
            items = [(name, str(value)) for name, value in mime.items()]
            from_email = from_email or parseaddr(str(mime.get("From", "")))[1]
            recipients = recipients or _addr_specs(*_header_values(items, "To"), *_header_values(items, "Cc"))
            subject = str(mime.get("Subject", ""))
            text, html_body = _mime_bodies(mime)
        elif "Simple" in content:
            simple = content["Simple"] or {}
            body = simple.get("Body") or {}
            subject = (simple.get("Subject") or {}).get("Data", "")
            text = (body.get("Text") or {}).get("Data")
            html_body = (body.get("Html") or {}).get("Data")
            items = [(h["Name"], h["Value"]) for h in simple.get("Headers") or []]
        elif "Template" in content:
            template = content["Template"] or {}
            found = self._ses_template(template)
            if found is None:
                return _ses_error(404, "NotFoundException", f"Template {template.get('TemplateName')} not found."), []
            try:
                merge = json.loads(template.get("TemplateData") or "{}")
            except ValueError:
                return _ses_error(400, "BadRequestException", "TemplateData is not valid JSON."), []
            subject, html_body, text = (_render(found.get(k), merge) for k in ("Subject", "Html", "Text"))
            subject = subject or ""
            items = [(h["Name"], h["Value"]) for h in template.get("Headers") or []]
        else:
            return _ses_error(400, "BadRequestException", "Content must have Raw, Simple or Template."), []
        if not from_email:
            return _ses_error(400, "BadRequestException", "FromEmailAddress is required."), []
        if not recipients:
            return _ses_error(400, "BadRequestException", "At least one destination address is required."), []
        if len(recipients) > SES_MAX_RECIPIENTS:
            return _ses_error(400, "MessageRejected", f"Too many recipients ({len(recipients)}); the limit is 50."), []
        message_id = _ses_message_id()
        messages = _ses_messages(message_id, from_email, recipients, subject, html_body, text, items, raw)
        return _json_reply(200, {"MessageId": message_id}), messages

    def _ses_send_bulk(self, data: Any) -> tuple[Reply, list[SandboxMessage]]:
        entries = data.get("BulkEmailEntries") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            return _ses_error(400, "BadRequestException", "BulkEmailEntries must hold at least one entry."), []
        if len(entries) > SES_MAX_BULK_ENTRIES:
            message = f"BulkEmailEntries holds {len(entries)} entries; the limit is {SES_MAX_BULK_ENTRIES}."
            return _ses_error(400, "BadRequestException", message), []
        from_email = parseaddr(data.get("FromEmailAddress") or "")[1]
        if not from_email:
            return _ses_error(400, "BadRequestException", "FromEmailAddress is required."), []
        default = (data.get("DefaultContent") or {}).get("Template") or {}
        template = self._ses_template(default)
        if template is None:
            return _ses_error(404, "NotFoundException", f"Template {default.get('TemplateName')} not found."), []
        try:
            default_data = json.loads(default.get("TemplateData") or "{}")
        except ValueError:
            return _ses_error(400, "BadRequestException", "TemplateData is not valid JSON."), []
        default_headers = [(h["Name"], h["Value"]) for h in default.get("Headers") or []]
        results: list[dict[str, str]] = []
        messages: list[SandboxMessage] = []
        shared = {k: v for k, v in data.items() if k != "BulkEmailEntries"}
        for entry in entries:
            recipients = _ses_destination(entry.get("Destination"))
            replacement = ((entry.get("ReplacementEmailContent") or {}).get("ReplacementTemplate") or {}).get(
                "ReplacementTemplateData"
            )
            try:
                merge = {**default_data, **json.loads(replacement or "{}")}
            except ValueError:
                results.append({"Status": "INVALID_PARAMETER", "Error": "ReplacementTemplateData is not valid JSON."})
                continue
            if not recipients or len(recipients) > SES_MAX_RECIPIENTS:
                results.append({"Status": "INVALID_PARAMETER", "Error": "An entry needs 1 to 50 destinations."})
                continue
            message_id = _ses_message_id()
            subject, html_body, text = (_render(template.get(k), merge) for k in ("Subject", "Html", "Text"))
            items = default_headers + [(h["Name"], h["Value"]) for h in entry.get("ReplacementHeaders") or []]
            raw = {**shared, "BulkEmailEntries": [entry]}
            messages += _ses_messages(message_id, from_email, recipients, subject or "", html_body, text, items, raw)
            results.append({"Status": "SUCCESS", "MessageId": message_id})
        return _json_reply(200, {"BulkEmailEntryResults": results}), messages

    def _ses_create_template(self, data: Any) -> tuple[Reply, list[SandboxMessage]]:
        name = data.get("TemplateName") if isinstance(data, dict) else None
        content = data.get("TemplateContent") if isinstance(data, dict) else None
        if not name or not isinstance(content, dict):
            return _ses_error(400, "BadRequestException", "TemplateName and TemplateContent are required."), []
        with self._lock:
            if name in self._ses_templates:
                return _ses_error(400, "AlreadyExistsException", f"Template {name} already exists."), []
            self._ses_templates[name] = {k: v for k, v in content.items() if isinstance(v, str)}
        return _json_reply(200, {}), []

    def _ses_template(self, template: Mapping[str, Any]) -> dict[str, str] | None:
        if isinstance(template.get("TemplateContent"), dict):
            return template["TemplateContent"]
        name = template.get("TemplateName") or str(template.get("TemplateArn", "")).rpartition("/")[2]
        with self._lock:
            return self._ses_templates.get(name)

    # pages

    def _messages_json(self, query: dict[str, list[str]]) -> Reply:
        try:
            limit = min(max(int(query.get("limit", ["100"])[0]), 0), 1000)
            offset = max(int(query.get("offset", ["0"])[0]), 0)
        except ValueError:
            return _json_reply(400, {"error": "limit and offset must be integers"})
        found = self._filtered(query)
        results = [msg.as_dict() for msg in found[offset : offset + limit]]
        return _json_reply(200, {"count": len(found), "limit": limit, "offset": offset, "results": results})

    def _filtered(self, query: dict[str, list[str]]) -> list[SandboxMessage]:
        """Matching stored messages, not copies: the pages only read them, and copying 200k would be slow."""
        esp = query.get("esp", [""])[0]
        to = query.get("to", [""])[0].lower()
        with self._lock:
            return [
                msg
                for msg in self._messages
                if (not esp or msg.esp == esp) and (not to or to in (addr.lower() for addr in msg.to))
            ]

    def _index_page(self, query: dict[str, list[str]]) -> str:
        found = self._filtered(query)
        found.reverse()
        pages = max(1, -(-len(found) // PAGE_SIZE))
        try:
            page = min(max(int(query.get("page", ["1"])[0]), 1), pages)
        except ValueError:
            page = 1
        rows = "".join(
            "<tr><td><a href='/_sandbox/messages/{id}'>{id}</a></td><td>{at}</td><td>{esp}</td><td>{frm}</td>"
            "<td>{to}</td><td>{subject}</td><td>{events}</td></tr>".format(
                id=msg.id,
                at=_e(msg.received_at.strftime("%H:%M:%S.%f")[:-3]),
                esp=_e(msg.esp),
                frm=_e(msg.from_email),
                to=_e(", ".join(msg.to)),
                subject=_e(msg.subject),
                events=_e(", ".join(msg.events)),
            )
            for msg in found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        )
        keep = "".join(f"&amp;{k}={_e(quote(query[k][0]))}" for k in ("esp", "to") if query.get(k))
        nav = []
        if page > 1:
            nav.append(f"<a href='/?page={page - 1}{keep}'>&larr; newer</a>")
        nav.append(f"page {page} of {pages}")
        if page < pages:
            nav.append(f"<a href='/?page={page + 1}{keep}'>older &rarr;</a>")
        body = (
            f"<h1>ESP sandbox</h1><p>{len(found)} message(s). JSON: "
            "<a href='/_sandbox/messages'>messages</a>, <a href='/_sandbox/config'>config</a>, "
            "<a href='/_sandbox/webhooks'>webhook posts</a>.</p>"
            "<table><tr><th>#</th><th>received</th><th>ESP</th><th>from</th><th>to</th><th>subject</th>"
            f"<th>events</th></tr>{rows}</table><p>{' &middot; '.join(nav)}</p>"
        )
        return _page("ESP sandbox", body)


# --- request validation and message building for each ESP


def _validate_option(name: str, value: Any) -> Any:
    if name == "webhook_url":
        return (str(value).rstrip("/") or None) if value else None
    if name == "webhook_auth":
        if not value:
            return None
        if isinstance(value, str):
            user, sep, password = value.partition(":")
            if not sep:
                raise ValueError("webhook_auth must be 'user:password' or a (user, password) pair")
            return (user, password)
        user, password = value
        return (str(user), str(password))
    if name in ("open_rate", "click_rate", "fail_rate"):
        rate = float(value)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
        return rate
    if name in ("latency_ms", "webhook_delay_ms"):
        if float(value) < 0:
            raise ValueError(f"{name} must not be negative")
        return float(value)
    if name == "simulate_domains":
        if isinstance(value, str):
            value = [value]
        return tuple(str(d).lower().strip() for d in value or ())
    if name == "seed":
        return None if value is None else int(value)
    if name == "max_messages":
        if int(value) < 1:
            raise ValueError("max_messages must be at least 1")
        return int(value)
    if name == "fail_status":
        return _validate_status(value)
    raise TypeError(f"unknown sandbox option {name}")


def _validate_status(value: Any) -> int:
    status = int(value)
    if not 400 <= status <= 599:
        raise ValueError("an injected status must be 4xx or 5xx")
    return status


def _validate_faults(name: str, value: Any) -> list[dict[str, Any]]:
    faults = []
    for item in value or []:
        if not isinstance(item, dict):
            raise TypeError(f"{name} entries must be objects")
        esp = item.get("esp", "*")
        if esp != "*" and esp not in ESPS:
            raise ValueError(f"{name}: esp must be one of {', '.join(ESPS)} or '*'")
        fault: dict[str, Any] = {"esp": esp, "times": max(int(item.get("times", 1)), 1)}
        if name == "fail_next":
            fault["status"] = _validate_status(item.get("status", 500))
        else:
            fault["seconds"] = max(float(item.get("seconds", 30)), 0.0)
        faults.append(fault)
    return faults


def _check_auth(esp: str, headers: Mapping[str, str]) -> Reply | None:
    """Each ESP's own refusal for a missing credential; any value is accepted (SigV4 is not verified)."""
    if esp == SENDGRID:
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _sendgrid_error(401, "The provided authorization grant is invalid, expired, or revoked")
    elif esp == POSTMARK:
        if not (headers.get("X-Postmark-Server-Token") or "").strip():
            return _postmark_error(401, 10, "No Server API token was supplied in the X-Postmark-Server-Token header.")
    elif not headers.get("Authorization"):
        return _ses_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    return None


def _simulated_mailbox(address: str, domains: tuple[str, ...]) -> str | None:
    local, _, domain = address.lower().rpartition("@")
    if domain != SES_SIMULATOR_DOMAIN and domain not in domains:
        return None
    local = local.split("+", 1)[0]  # like SES's simulator, bounce+label@ still bounces
    return local if local in SIMULATED_MAILBOXES else None


def _sendgrid_validate(data: Any) -> tuple[str, str | None] | None:
    """The first problem SendGrid would answer 400 for, as (message, field)."""
    if not isinstance(data, dict):
        return "Bad Request", None
    personalizations = data.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        return "You must have at least one personalization.", "personalizations"
    if len(personalizations) > SENDGRID_MAX_PERSONALIZATIONS:
        return (
            f"At most {SENDGRID_MAX_PERSONALIZATIONS} personalizations are allowed per request;"
            f" this request has {len(personalizations)}.",
            "personalizations",
        )
    sender = data.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        return "The from object must be provided for every email send.", "from.email"
    seen: set[str] = set()
    for i, personalization in enumerate(personalizations):
        if not isinstance(personalization, dict) or not personalization.get("to"):
            return (
                "Every personalization needs a to array with at least one address.",
                f"personalizations.{i}.to",
            )
        for kind in ("to", "cc", "bcc"):
            for j, recipient in enumerate(personalization.get(kind) or []):
                addr = recipient.get("email") if isinstance(recipient, dict) else None
                if not isinstance(addr, str) or "@" not in addr:
                    return "Does not contain a valid address.", f"personalizations.{i}.{kind}.{j}.email"
                if addr.lower() in seen:
                    return (
                        f"Each address may appear only once across the personalizations; {addr} is repeated.",
                        f"personalizations.{i}.{kind}",
                    )
                seen.add(addr.lower())
    if len(seen) > SENDGRID_MAX_RECIPIENTS:
        return (
            f"At most {SENDGRID_MAX_RECIPIENTS} recipients (to + cc + bcc) are allowed per request.",
            "personalizations",
        )
    template_id = data.get("template_id")
    content = data.get("content")
    if not template_id:
        if not isinstance(content, list) or not content:
            return "Unless a valid template_id is provided, the content parameter is required.", "content"
        for j, block in enumerate(content):
            if not isinstance(block, dict) or not block.get("value"):
                return (
                    "The content value must be a string at least one character in length.",
                    f"content.{j}.value",
                )
        if not data.get("subject") and not all(p.get("subject") for p in personalizations):
            return (
                "The subject is required unless a template or every personalization provides one.",
                "subject",
            )
    return None


def _postmark_message(item: Any, *, template: bool, call_id: str) -> tuple[dict[str, Any], list[SandboxMessage]]:
    """Validate one Postmark message: its result object (as in a batch reply) and per-recipient records."""
    if not isinstance(item, dict):
        return {"ErrorCode": 402, "Message": "Received invalid JSON input."}, []
    from_email = parseaddr(item.get("From") or "")[1]
    if "@" not in from_email:
        return {"ErrorCode": 300, "Message": f"Invalid 'From' address: '{item.get('From') or ''}'."}, []
    for kind in ("To", "Cc", "Bcc"):
        for _, addr in getaddresses([item.get(kind) or ""]):
            if addr and "@" not in addr:
                return {"ErrorCode": 300, "Message": f"Invalid '{kind}' address: '{addr}'."}, []
    recipients = _addr_specs(item.get("To"), item.get("Cc"), item.get("Bcc"))
    if not recipients:
        return {"ErrorCode": 300, "Message": "Zero recipients specified"}, []
    if len(recipients) > POSTMARK_MAX_RECIPIENTS:
        return {"ErrorCode": 300, "Message": f"Too many recipients ({len(recipients)}); the limit is 50."}, []
    if template and not (item.get("TemplateId") or item.get("TemplateAlias")):
        return {"ErrorCode": 1101, "Message": "A TemplateId or TemplateAlias is required."}, []
    if not template and not (item.get("HtmlBody") or item.get("TextBody")):
        return {"ErrorCode": 300, "Message": "Provide either email TextBody or HtmlBody or both."}, []
    message_id = str(uuid.uuid4())
    received_at = _now()
    result: dict[str, Any] = {"SubmittedAt": received_at.isoformat(), "MessageID": message_id}
    if item.get("To"):
        result = {"To": item["To"], **result}
    result.update(ErrorCode=0, Message="OK")
    headers = {h["Name"]: h["Value"] for h in item.get("Headers") or [] if isinstance(h, dict) and "Name" in h}
    messages = [
        SandboxMessage(
            id=0,
            esp=POSTMARK,
            esp_message_id=message_id,
            from_email=from_email,
            to=[addr],
            subject=item.get("Subject") or "",
            html=item.get("HtmlBody"),
            text=item.get("TextBody"),
            headers=headers,
            metadata=dict(item.get("Metadata") or {}),
            received_at=received_at,
            raw=item,
            tags=[item["Tag"]] if item.get("Tag") else [],
            destination=list(recipients),
            call_id=call_id,
        )
        for addr in recipients
    ]
    return result, messages


def _postmark_many(items: Any, *, template: bool) -> tuple[Reply, list[SandboxMessage]]:
    """A Postmark batch: 200 with per-message results in request order, or 422 for the batch as a whole."""
    if not isinstance(items, list):
        return _postmark_error(422, 402, "Received invalid JSON input."), []
    if len(items) > POSTMARK_MAX_BATCH:
        return _postmark_error(422, 410, f"Too many batch messages ({len(items)}); the limit is 500."), []
    call_id = str(uuid.uuid4())
    results, messages = [], []
    for item in items:
        result, recipients = _postmark_message(item, template=template, call_id=call_id)
        results.append(result)
        messages += recipients
    return _json_reply(200, results), messages


def _ses_destination(destination: Any) -> list[str]:
    if not isinstance(destination, dict):
        return []
    return _addr_specs(*(destination.get(k) or [] for k in ("ToAddresses", "CcAddresses", "BccAddresses")))


def _ses_messages(
    message_id: str,
    from_email: str,
    recipients: list[str],
    subject: str,
    html_body: str | None,
    text: str | None,
    items: list[tuple[str, str]],
    raw: Any,
) -> list[SandboxMessage]:
    received_at = _now()
    headers = _custom_headers(items)
    metadata = _metadata_from_header(items)
    tags = _header_values(items, "X-Tag")
    return [
        SandboxMessage(
            id=0,
            esp=AMAZON_SES,
            esp_message_id=message_id,
            from_email=from_email,
            to=[addr],
            subject=subject,
            html=html_body,
            text=text,
            headers=dict(headers),
            metadata=dict(metadata),
            received_at=received_at,
            raw=raw,
            tags=list(tags),
            destination=list(recipients),
            call_id=message_id,
        )
        for addr in recipients
    ]


# --- HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> str:
    style = (
        "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}"
        "th{background:#f4f4f4}"
        "pre{background:#f8f8f8;padding:8px;white-space:pre-wrap}"
        "iframe{width:100%;height:480px;border:1px solid #ccc}"
    )
    head = f"<meta charset='utf-8'><title>{_e(title)}</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"


def _detail_page(msg: SandboxMessage) -> str:
    def table(rows: Mapping[str, Any]) -> str:
        cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows.items())
        return f"<table>{cells}</table>"

    summary = {
        "ESP": msg.esp,
        "ESP message id": msg.esp_message_id,
        "from": msg.from_email,
        "to": ", ".join(msg.to),
        "all recipients": ", ".join(msg.destination),
        "subject": msg.subject,
        "received": msg.received_at.isoformat(),
        "events": ", ".join(msg.events),
        "tags": ", ".join(msg.tags),
        "metadata": json.dumps(msg.metadata),
    }
    parts = [
        f"<p><a href='/'>&larr; all messages</a> &middot; <a href='/_sandbox/messages/{msg.id}.json'>JSON</a></p>",
        f"<h1>Message {msg.id}: {_e(msg.subject)}</h1>",
        table(summary),
        "<h2>Headers</h2>",
        table(msg.headers),
    ]
    if msg.text is not None:
        parts.append(f"<h2>Text</h2><pre>{_e(msg.text)}</pre>")
    if msg.html is not None:
        parts.append(f'<h2>HTML</h2><iframe sandbox srcdoc="{_e(msg.html)}"></iframe>')
    return _page(f"Message {msg.id}", "".join(parts))


# --- HTTP plumbing


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup of the host, which can stall on some machines.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _RequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive with Nagle off, so reused connections don't stall on delayed ACKs."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are dropped after this
    server_version = "MailerESPSandbox/1.0"
    server: _HTTPServer

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._reply(*_json_reply(411, {"error": "send a Content-Length"}))
            self.close_connection = True
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            reply = self.server.sandbox.dispatch(method, self.path, self.headers, body)
        except Exception:
            logger.exception("ESP sandbox failed on %s %s", method, self.path)
            reply = _json_reply(500, {"error": "sandbox internal error"})
        self._reply(*reply)

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout fired during an injected hang)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature from http.server)
        logger.debug("ESP sandbox: " + format, *args)
