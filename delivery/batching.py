"""Batch sends: many different messages in one ESP call, each message's outcome read back on its own.

Anymail sends one Django message per API call (a message to many recipients is one call too, but with one body).
A campaign's messages each have their own rendered body, so a batch here is a list of complete messages, which
only Postmark's `/email/batch` takes (up to 500 per call, 50 MB per request). SendGrid's personalizations share
one body, and SES's SendBulkEmail needs a stored template: those providers are sent one message per call.

The payload of each message is built by anymail's own Postmark payload, so a message sent in a batch is byte for
byte what a single send would post. Postmark answers a batch with 200 and one result per message, in request
order; one refused message does not make the others fail, so each result is applied to its own message and
nothing accepted is ever sent again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import requests
from anymail.backends.postmark import EmailBackend as AnymailPostmarkBackend
from django.core.mail import EmailMessage

POSTMARK_MAX_BATCH = 500
# Postmark allows 50 MB per batch request; stay clear of it (the count limit is what binds in practice).
POSTMARK_MAX_BATCH_BYTES = 40 * 1024 * 1024
# Per-message ErrorCodes worth another try later: the service in maintenance, the account not allowed to send
# for now (out of credits, paused). Every other code is about the message itself (an invalid address, an
# inactive recipient) and would fail again.
POSTMARK_RETRYABLE_CODES = {100, 405, 429}
POSTMARK_REFUSED_CODES = {406}  # inactive recipient: Postmark has it suppressed (hard bounce, complaint)


@dataclass(frozen=True)
class ItemOutcome:
    """One message's answer within a batch: accepted with the ESP's id, or refused with a reason."""

    esp_message_id: str = ""
    error: str = ""
    retryable: bool = False

    @property
    def accepted(self) -> bool:
        return not self.error


class PostmarkBatchBackend(AnymailPostmarkBackend):
    """Anymail's Postmark backend, plus `send_batch` for up to POSTMARK_MAX_BATCH different messages per call.

    Single sends (`send_messages`) behave exactly as anymail's. Like it, an instance is not thread-safe.
    """

    max_batch = POSTMARK_MAX_BATCH

    def send_batch(self, emails: Sequence[EmailMessage]) -> list[ItemOutcome]:
        """Send `emails` in as few calls as the limits allow; one outcome per email, in order. Never raises for
        what Postmark or the network answers: a failed call becomes the outcome of each of its messages (a
        network error or a timeout is retryable, and ambiguous: the messages may have been accepted)."""
        if self.session is None:
            raise RuntimeError("open the backend (`with backend:`) before send_batch")
        payloads = [self.build_message_payload(email, self.send_defaults) for email in emails]
        bodies = [payload.serialize_data() for payload in payloads]
        outcomes: list[ItemOutcome] = []
        for start, stop in _runs(bodies, self.max_batch, POSTMARK_MAX_BATCH_BYTES):
            headers = dict(payloads[start].headers or {})
            headers["X-Postmark-Server-Token"] = payloads[start].server_token
            outcomes += self._post(bodies[start:stop], headers)
        return outcomes

    def message_find(self, *, recipient: str, mailer_msg: str) -> str | None:
        """Postmark's id of the message it accepted for `recipient` carrying our id `mailer_msg` in its metadata,
        or None when it has none (its outbound message search, newest first). Raises requests.RequestException
        or ValueError when Postmark cannot tell."""
        if self.session is None:
            raise RuntimeError("open the backend (`with backend:`) before message_find")
        response = self.session.get(
            urljoin(self.api_url, "messages/outbound"),
            params={"recipient": recipient, "count": 100, "offset": 0},
            headers={"Accept": "application/json", "X-Postmark-Server-Token": self.server_token},
            timeout=self.timeout,
        )
        response.raise_for_status()
        for item in response.json().get("Messages") or []:
            if str((item.get("Metadata") or {}).get("mailer_msg")) == mailer_msg:
                return str(item.get("MessageID") or "")
        return None

    def _post(self, bodies: list[str], headers: dict[str, str]) -> list[ItemOutcome]:
        url = urljoin(self.api_url, "email/batch")
        try:
            response = self.session.post(url, data="[" + ",".join(bodies) + "]", headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            outcome = ItemOutcome(error=f"network error: {_first_line(exc)}", retryable=True)
            return [outcome] * len(bodies)
        if response.status_code != 200:
            return [_call_refused(response)] * len(bodies)
        try:
            results = response.json()
        except ValueError:
            results = None
        if not isinstance(results, list) or len(results) != len(bodies):
            # Accepted or not is unknown: treated like a timeout (tried again, possibly twice).
            outcome = ItemOutcome(error="Postmark batch answer unreadable: one result per message expected",
                                  retryable=True)  # fmt: skip
            return [outcome] * len(bodies)
        return [_item_outcome(result) for result in results]


def _runs(bodies: list[str], max_count: int, max_bytes: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) ranges of at most max_count bodies and (unless one body alone) max_bytes."""
    runs: list[tuple[int, int]] = []
    start, size = 0, 0
    for index, body in enumerate(bodies):
        length = len(body.encode()) + 1
        if index > start and (index - start >= max_count or size + length > max_bytes):
            runs.append((start, index))
            start, size = index, 0
        size += length
    if start < len(bodies):
        runs.append((start, len(bodies)))
    return runs


def _item_outcome(result: Any) -> ItemOutcome:
    if not isinstance(result, dict):
        return ItemOutcome(error="Postmark batch answer: a result is not an object", retryable=True)
    code = result.get("ErrorCode", 0)
    text = str(result.get("Message") or "")[:500]
    if code == 0:
        return ItemOutcome(esp_message_id=str(result.get("MessageID") or ""))
    if code in POSTMARK_REFUSED_CODES:
        return ItemOutcome(error=f"recipient refused: Postmark ErrorCode {code}: {text}")
    return ItemOutcome(error=f"Postmark ErrorCode {code}: {text}", retryable=code in POSTMARK_RETRYABLE_CODES)


def _call_refused(response: requests.Response) -> ItemOutcome:
    """The whole call answered with an error: 429 and 5xx are worth another try, anything else is not."""
    status = response.status_code
    try:
        detail = response.json()
        text = f"ErrorCode {detail.get('ErrorCode')}: {detail.get('Message')}"
    except (ValueError, AttributeError):
        text = response.text[:200]
    retryable = status == 429 or status >= 500
    return ItemOutcome(error=f"HTTP {status}: {text}"[:500], retryable=retryable)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else exc.__class__.__name__
