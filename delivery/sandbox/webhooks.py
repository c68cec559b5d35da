"""The thread that posts tracking webhooks.

The poster imitates how the ESPs deliver: SendGrid batches events into JSON arrays, Postmark posts one object per
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
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .events import webhook_headers
from .vocabulary import AMAZON_SES, POSTMARK, SENDGRID

WEBHOOK_PATHS = {
    SENDGRID: "/webhooks/sendgrid/tracking/",
    POSTMARK: "/webhooks/postmark/tracking/",
    AMAZON_SES: "/webhooks/amazon_ses/tracking/",
}


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
    headers = webhook_headers(esp, payload)
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
