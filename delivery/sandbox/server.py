"""The ESP sandbox: a loopback server that anymail's real SendGrid, Postmark and Amazon SES backends send to.

It answers the way each ESP answers (status codes, bodies, error shapes, batch limits), keeps one record per
recipient for inspection, and reports back through each ESP's own webhook format, so the whole path from
`send()` to anymail's tracking signal runs offline. Development and test tool only.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import postmark, sendgrid, ses
from .config import CONFIG_OPTIONS, Config, validate_option
from .events import build_payload
from .faults import FAULT_OPTIONS, validate_faults
from .http import Reply, SandboxHTTPServer, json_reply
from .messages import SandboxMessage, now
from .outcomes import plan_events
from .pages import detail_page, html_reply, index_page, messages_json
from .ses import SesApi
from .vocabulary import AMAZON_SES, POSTMARK, SENDGRID
from .webhooks import WebhookPoster

Handler = Callable[[Any], tuple[Reply, list[SandboxMessage]]]

# Each ESP's own answers to a missing credential, a body that isn't JSON, and an injected fault.
_ESP_APIS = {SENDGRID: sendgrid, POSTMARK: postmark, AMAZON_SES: ses}


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
        self._answering = threading.local()  # per connection thread: the messages of the call being answered
        self._config = Config()
        self._rng = random.Random(seed)
        self._messages: deque[SandboxMessage] = deque(maxlen=max_messages)
        self._by_id: dict[int, SandboxMessage] = {}
        self._ids = itertools.count(1)
        self._fail_next: list[dict[str, Any]] = []
        self._timeout_next: list[dict[str, Any]] = []
        self._ses = SesApi()
        self._stopping = threading.Event()
        self._httpd: SandboxHTTPServer | None = None
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
            "/sendgrid/v3/mail/send": (SENDGRID, sendgrid.mail_send),
            "/postmark/email": (POSTMARK, postmark.send_email),
            "/postmark/email/batch": (POSTMARK, postmark.send_batch),
            "/postmark/email/withTemplate": (POSTMARK, postmark.send_with_template),
            "/postmark/email/withTemplate/": (POSTMARK, postmark.send_with_template),
            "/postmark/email/batchWithTemplates": (POSTMARK, postmark.send_batch_with_templates),
        }
        for prefix in ("/ses", ""):  # the root form serves clients whose endpoint_url has no path
            self._api_routes[f"{prefix}/v2/email/outbound-emails"] = (AMAZON_SES, self._ses.send_email)
            self._api_routes[f"{prefix}/v2/email/outbound-bulk-emails"] = (AMAZON_SES, self._ses.send_bulk)
            self._api_routes[f"{prefix}/v2/email/templates"] = (AMAZON_SES, self._ses.create_template)

    # lifecycle

    def start(self) -> SandboxServer:
        self._stopping.clear()
        self._httpd = SandboxHTTPServer((self.host, self.port), self)
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
                **{name: getattr(cfg, name) for name in CONFIG_OPTIONS},
                "simulate_domains": list(cfg.simulate_domains),
                "webhook_auth": list(cfg.webhook_auth) if cfg.webhook_auth else None,
                "fail_next": [dict(f) for f in self._fail_next],
                "timeout_next": [dict(f) for f in self._timeout_next],
            }

    def configure(self, **options: Any) -> None:
        """Change settings at run time; takes the constructor's keywords plus the fault options.

        fail_next=[{"esp": "sendgrid"|"postmark"|"amazon_ses"|"*", "status": 429, "times": 1}] and
        timeout_next=[{"esp": ..., "seconds": 5, "times": 1}] replace the pending lists; fail_rate with
        fail_status inject random failures, and timeout_rate random stalls of timeout_seconds (drawn
        independently: a stalled call may also fail).
        """
        unknown = set(options) - CONFIG_OPTIONS - FAULT_OPTIONS
        if unknown:
            raise TypeError(f"unknown sandbox option(s): {', '.join(sorted(unknown))}")
        changes = {name: validate_option(name, value) for name, value in options.items() if name in CONFIG_OPTIONS}
        faults = {name: validate_faults(name, value) for name, value in options.items() if name in FAULT_OPTIONS}
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
                return json_reply(405, {"error": "method not allowed"}, {"Allow": "POST"})
            esp, handler = route
            return self._api_call(esp, handler, headers, body)
        if path == "/postmark/messages/outbound" and method == "GET":
            refusal = postmark.check_auth(headers)
            if refusal is not None:
                return refusal
            with self._lock:
                stored = list(self._messages)
            return postmark.outbound_search(query, stored)
        if path == "/_sandbox/health" and method == "GET":
            return json_reply(200, {"status": "ok"})
        if path == "/_sandbox/config":
            return self._config_endpoint(method, body)
        if path == "/_sandbox/reset" and method == "POST":
            self.clear()
            return json_reply(200, {"status": "reset"})
        if path == "/_sandbox/webhooks" and method == "GET":
            posts = [{"esp": e, "url": u, "status": s, "event_count": n} for e, u, s, n in self.webhook_posts]
            return json_reply(200, {"count": len(posts), "results": posts})
        if method == "GET":
            if path == "/":
                return html_reply(200, index_page(query, self._filtered))
            if path == "/_sandbox/messages":
                return messages_json(query, self._filtered)
            match = re.fullmatch(r"/_sandbox/messages/(\d+)(\.json)?", path)
            if match:
                msg = self.get_message(int(match.group(1)))
                if msg is None:
                    return json_reply(404, {"error": "no such message"})
                if match.group(2):
                    return json_reply(200, msg.as_dict(include_raw=True))
                return html_reply(200, detail_page(msg))
        return json_reply(404, {"error": f"no route for {method} {path}"})

    def _api_call(self, esp: str, handler: Handler, headers: Mapping[str, str], body: bytes) -> Reply:
        api = _ESP_APIS[esp]
        cfg = self._config
        if cfg.latency_ms:
            self._stopping.wait(cfg.latency_ms / 1000)
        hang = self._take_fault(self._timeout_next, esp)
        if hang is not None:
            self._stopping.wait(hang["seconds"])
        if cfg.timeout_rate:
            with self._lock:
                stalled = self._rng.random() < cfg.timeout_rate
            if stalled:
                self._stopping.wait(cfg.timeout_seconds)
        auth_error = api.check_auth(headers)  # each ESP's own refusal for a missing credential
        if auth_error is not None:
            return auth_error
        fault = self._take_fault(self._fail_next, esp)
        if fault is not None:
            return api.fault_reply(fault["status"])
        if cfg.fail_rate:
            with self._lock:
                unlucky = self._rng.random() < cfg.fail_rate
            if unlucky:
                return api.fault_reply(cfg.fail_status)
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return api.bad_json_reply()
        reply, messages = handler(data)
        if messages:
            self._store(messages)  # before replying, so a client that got its answer can wait for the webhooks
            self._answering.messages = messages
        return reply

    def call_answered(self) -> None:
        """Stamp the messages of the call this thread is about to answer with the time the answer is written: a
        client killed before that moment cannot have known the call succeeded (one killed just after may not
        have either: a crash test reading it errs against the client)."""
        messages = getattr(self._answering, "messages", None)
        if messages:
            stamp = now()
            for msg in messages:
                msg.replied_at = stamp
        self._answering.messages = None

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
                return json_reply(400, {"error": str(err)})
        elif method != "GET":
            return json_reply(405, {"error": "method not allowed"}, {"Allow": "GET, POST"})
        shown = self.config
        if shown["webhook_auth"]:
            shown["webhook_auth"] = [shown["webhook_auth"][0], "***"]
        return json_reply(200, shown)

    # pages

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
            planned = plan_events(messages, cfg, self._rng)
        if not cfg.webhook_url:
            return
        when = now() + timedelta(milliseconds=cfg.webhook_delay_ms)
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
