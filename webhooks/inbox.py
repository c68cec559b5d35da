"""The write side of the EspEvent inbox: one tracking event -> one normalized row, and the rows of one webhook
POST stored by one statement.

A webhook POST is stored all or nothing (webhooks.middleware). While the middleware handles a POST it holds
a batch open (`inbox_batch`); the tracking receiver adds each event's row to it (`esp_event_add`), and the
middleware stores the whole batch inside the POST's transaction once anymail's view has answered 2xx. Outside
a webhook POST (a test or a command sending the signal) a row is stored at once.

Rows are plain tuples in column order, not model instances, and the INSERT is written here rather than left to
bulk_create: a model instance per event, Django's per-field preparation (which serializes the payload again) and
its cursors' quoting of every value into the SQL text cost more than all the rest of the request
(docs/BENCHMARKS.md, "Webhook inbox").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, NamedTuple

from anymail.signals import AnymailTrackingEvent
from django.db import connection, transaction
from django.utils import timezone

from webhooks.classification import dedupe_key, is_hard_bounce
from webhooks.models import EspEvent
from webhooks.services import esp_events_apply_soon

# The raw ESP event is kept up to this many characters of JSON; a longer one keeps its head, marked truncated.
PAYLOAD_MAX_CHARS = 16_384


class EspEventRow(NamedTuple):
    """One EspEvent as stored, in the order of `_COLUMNS` (payload is JSON text)."""

    esp: str
    dedupe_key: str
    event_type: str
    recipient: str
    esp_message_id: str
    mailer_message_id: int | None
    is_hard_bounce: bool
    occurred_at: datetime
    description: str
    mta_response: str
    click_url: str
    user_agent: str
    payload: str


_COLUMNS = EspEventRow._fields
# Column -> PostgreSQL array type for the UNNEST insert.
_PG_ARRAY_TYPES = {
    "mailer_message_id": "bigint[]",
    "is_hard_bounce": "boolean[]",
    "occurred_at": "timestamptz[]",
    "payload": "text[]",
}
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=True, separators=(", ", ": "))


def _text(value: Any, limit: int) -> str:
    """A text column's value: PostgreSQL text cannot hold NUL, which would fail the whole POST on every retry."""
    text = str(value or "")[:limit]
    return text.replace("\x00", "") if "\x00" in text else text


def _key(key: str) -> str:
    """A dedupe key that fits its column and stays distinct: a long one (an SES key with a very long address)
    keeps its head and a hash of the whole."""
    key = key.replace("\x00", "")
    if len(key) <= 255:
        return key
    return f"{key[:190]}:{hashlib.sha256(key.encode()).hexdigest()}"


def _message_id(value: Any) -> int | None:
    """Our message id from the ESP's metadata, if it can be one (a bigint): anything else is kept as no id."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if -(2**63) <= number < 2**63 else None


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(str(k)): _without_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nul(v) for v in value]
    return value


def _payload(esp_event: Any) -> str:
    """The raw event as JSON text, serialized once: an object, its head if over the cap, `{"value": ...}` if the
    ESP's event is not an object. A NUL character (which a PostgreSQL jsonb cannot hold) is dropped."""
    value = esp_event if isinstance(esp_event, dict) else {"value": esp_event}
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError):  # a cycle, or a key that is not a string
        text = _ENCODER.encode({"value": str(esp_event)})
    if "\\u0000" in text:
        text = _ENCODER.encode(_without_nul(json.loads(text)))
    if len(text) > PAYLOAD_MAX_CHARS:
        text = _ENCODER.encode({"truncated": True, "head": text[:PAYLOAD_MAX_CHARS]})
    return text


def esp_event_row(*, esp: str, event: AnymailTrackingEvent) -> EspEventRow:
    """The normalized row of one tracking event; the same event always gets the same dedupe key."""
    esp_event = event.esp_event if isinstance(event.esp_event, dict) else {}
    occurred_at = event.timestamp or timezone.now()
    recipient = (event.recipient or "").strip().lower()
    metadata = event.metadata or {}
    return EspEventRow(
        esp=esp,
        dedupe_key=_key(
            dedupe_key(
                esp, event.event_id, event.event_type, recipient, event.message_id, occurred_at.isoformat(), esp_event
            )
        ),
        event_type=_text(event.event_type or "unknown", 20),
        recipient=_text(recipient, 254),
        esp_message_id=_text(event.message_id, 255),
        mailer_message_id=_message_id(metadata.get("mailer_msg")),
        is_hard_bounce=is_hard_bounce(esp, event.event_type, esp_event, event.reject_reason),
        occurred_at=occurred_at,
        description=_text(event.description, 2000),
        mta_response=_text(event.mta_response, 2000),
        click_url=_text(event.click_url, 2000),
        user_agent=_text(event.user_agent, 1000),
        payload=_payload(event.esp_event),
    )


def esp_events_store(*, rows: Sequence[EspEventRow]) -> int:
    """Store the rows with one INSERT that skips every known (esp, dedupe_key), so a replay stores nothing new;
    when something new was stored, ask for one apply run once the transaction commits. Returns the rows stored.

    The rows go in the order given (the ESP's order): the apply task's tie-break between events of the same
    instant. Two POSTs racing with the same events in opposite orders may deadlock; PostgreSQL then fails one,
    which answers 503 and is posted again by the ESP.
    """
    if not rows:
        return 0
    table = connection.ops.quote_name(EspEvent._meta.db_table)
    names = ", ".join(connection.ops.quote_name(c) for c in (*_COLUMNS, "received_at", "applied_at", "outcome"))
    received_at = timezone.now()
    if connection.vendor == "postgresql":
        stored = _store_postgresql(rows, table=table, names=names, received_at=received_at)
    else:
        stored = _store_values(rows, table=table, names=names, received_at=received_at)
    if stored:
        transaction.on_commit(esp_events_apply_soon)
    return stored


def _store_postgresql(rows: Sequence[EspEventRow], *, table: str, names: str, received_at: datetime) -> int:
    """One array per column, UNNESTed into rows: the statement does not grow with the rows, and its parameters
    are sent in binary (Django's cursors quote every value into the SQL text, which took most of the request)."""
    import psycopg

    arrays = ", ".join(f"%b::{_PG_ARRAY_TYPES.get(c, 'text[]')}" for c in _COLUMNS)
    selected = ", ".join("u.payload::jsonb" if c == "payload" else f"u.{c}" for c in _COLUMNS)
    sql = (
        f"INSERT INTO {table} ({names}) SELECT {selected}, %b, NULL, '' "  # noqa: S608 (names are ours)
        f"FROM UNNEST({arrays}) AS u({', '.join(_COLUMNS)}) ON CONFLICT DO NOTHING"
    )
    connection.ensure_connection()
    # A server-binding cursor on the same connection (so in the same transaction), wrapped like Django's own so
    # that errors become django.db errors and query logging and counting see it.
    raw: Any = psycopg.Cursor(connection.connection)  # the DB-API cursor Django's wrappers take (stubs say otherwise)
    with connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw) as cursor:
        cursor.execute(sql, [received_at, *map(list, zip(*rows, strict=True))])
        return int(cursor.rowcount)


def _max_query_params() -> int:
    """Django assumes 999 for SQLite; the library in use says how many it takes (32,766 since SQLite 3.32)."""
    if connection.vendor == "sqlite":
        import sqlite3

        connection.ensure_connection()
        return int(connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return connection.features.max_query_params or 999


def _store_values(rows: Sequence[EspEventRow], *, table: str, names: str, received_at: datetime) -> int:
    """Multi-row VALUES, as many rows per statement as the database takes parameters (SQLite: about 2,300)."""
    adapt = connection.ops.adapt_datetimefield_value
    received = adapt(received_at)
    values = [(*row[:7], adapt(row.occurred_at), *row[8:], received) for row in rows]
    per_statement = max(1, _max_query_params() // (len(_COLUMNS) + 1))
    one = "(" + ", ".join(["%s"] * (len(_COLUMNS) + 1)) + ", NULL, '')"
    stored = 0
    with connection.cursor() as cursor:
        for start in range(0, len(values), per_statement):
            chunk = values[start : start + per_statement]
            cursor.execute(
                f"INSERT INTO {table} ({names}) VALUES {', '.join([one] * len(chunk))} "  # noqa: S608
                "ON CONFLICT DO NOTHING",
                [value for row in chunk for value in row],
            )
            stored += cursor.rowcount
    return stored


_batch: ContextVar[list[EspEventRow] | None] = ContextVar("webhooks_inbox_batch", default=None)


@contextmanager
def inbox_batch() -> Iterator[list[EspEventRow]]:
    """Collect the rows of the events received meanwhile (in this context) instead of storing each at once."""
    rows: list[EspEventRow] = []
    token = _batch.set(rows)
    try:
        yield rows
    finally:
        _batch.reset(token)


def esp_event_add(*, esp: str, event: AnymailTrackingEvent) -> None:
    """Add one tracking event to the open batch, or store it at once when no batch is open."""
    row = esp_event_row(esp=esp, event=event)
    rows = _batch.get()
    if rows is None:
        esp_events_store(rows=[row])
    else:
        rows.append(row)
