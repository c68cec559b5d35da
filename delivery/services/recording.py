"""Recording outcomes: one statement per chunk for the messages, and the attempt log."""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from delivery.models import Message, SendAttempt

# The PostgreSQL type of each column, for the arrays it is sent as.
_PG_TYPES = {"id": "bigint", "provider_id": "bigint", "attempts": "integer", "next_attempt_at": "timestamptz",
             "sent_at": "timestamptz", "started_at": "timestamptz", "finished_at": "timestamptz", "status": "text",
             "esp_message_id": "text", "last_error": "text", "outcome": "text", "error": "text"}  # fmt: skip
_MESSAGE_COLUMNS = ("id", "status", "provider_id", "esp_message_id", "attempts", "last_error", "next_attempt_at",
                    "sent_at")  # fmt: skip
_ATTEMPT_COLUMNS = ("id", "started_at", "finished_at", "outcome", "error", "esp_message_id")


def _values_update(
    cursor: Any,
    table: str,
    columns: tuple[str, ...],
    rows: list[list[Any]],
    *,
    extra_set: str = "",
    where: str = "",
    set_params: list[Any] | None = None,
    where_params: list[Any] | None = None,
) -> None:
    """One UPDATE for many rows, matched on the first column (the id). `extra_set` and `where` are SQL of ours;
    their values come in `set_params` and `where_params`.

    On PostgreSQL the rows travel as one array per column (`unnest`): the statement text is the same whatever
    the number of rows, so the driver does not parse thousands of placeholders each time. SQLite gets a VALUES
    list. Django's bulk_update builds a CASE per field and row, whose Python cost exceeded the ESP calls.
    """
    quoted = connection.ops.quote_name(table)
    names = ", ".join(columns)
    assignments = ", ".join(f"{name} = v.{name}" for name in columns[1:])
    if connection.vendor == "postgresql":
        arrays = ", ".join(f"%s::{_PG_TYPES[name]}[]" for name in columns)
        prefix, source = "", f"unnest({arrays}) AS v ({names})"
        values: list[Any] = [list(column) for column in zip(*rows, strict=True)]
        params = [*(set_params or []), *values, *(where_params or [])]
    else:
        placeholders = "(" + ", ".join(["%s"] * len(columns)) + ")"
        prefix, source = f"WITH v ({names}) AS (VALUES {', '.join([placeholders] * len(rows))}) ", "v"
        values = [value for row in rows for value in row]
        params = [*values, *(set_params or []), *(where_params or [])]
    # Names are ours, values are parameters.
    sql = f"{prefix}UPDATE {quoted} SET {assignments}{extra_set} FROM {source} WHERE {quoted}.id = v.id{where}"  # noqa: S608
    cursor.execute(sql, params)


def messages_record(messages: list[Message], attempts: list[SendAttempt] | None = None) -> None:
    """Write outcomes back, only over rows this worker still holds (`sending`), and their attempts: two
    statements in one transaction."""
    if not messages:
        return
    adapt = connection.ops.adapt_datetimefield_value
    message_rows = [
        [m.pk, m.status, m.provider_id, m.esp_message_id, m.attempts, m.last_error, adapt(m.next_attempt_at),
         adapt(m.sent_at)]
        for m in messages
    ]  # fmt: skip
    attempt_rows = [
        [a.pk, adapt(a.started_at), adapt(a.finished_at), a.outcome, a.error, a.esp_message_id] for a in attempts or []
    ]
    messages_table = connection.ops.quote_name(Message._meta.db_table)
    with transaction.atomic(), connection.cursor() as cursor:
        _values_update(
            cursor,
            Message._meta.db_table,
            _MESSAGE_COLUMNS,
            message_rows,
            extra_set=", lease_expires_at = NULL, updated_at = %s",
            where=f" AND {messages_table}.status = %s",
            set_params=[adapt(timezone.now())],
            where_params=[Message.Status.SENDING],
        )
        if attempt_rows:
            _values_update(cursor, SendAttempt._meta.db_table, _ATTEMPT_COLUMNS, attempt_rows)


def attempt_finish(attempt: SendAttempt, *, outcome: str, error: str = "", esp_message_id: str = "") -> None:
    """In memory only: messages_record writes it with the chunk's outcomes, in the same transaction."""
    attempt.finished_at = timezone.now()
    attempt.outcome = outcome
    attempt.error = error[:2000]
    attempt.esp_message_id = esp_message_id[:255]


def attempts_prepare(*, messages: list[Message], provider_id: int) -> dict[int, SendAttempt]:
    """The attempt rows of a group sent by several threads, written in one statement before the first call:
    should the worker die, every message of the group shows an attempt without an end (a superset of those
    whose call was really in flight)."""
    now = timezone.now()
    if connection.vendor != "postgresql":
        rows = SendAttempt.objects.bulk_create(
            [SendAttempt(message_id=message.pk, provider_id=provider_id, started_at=now) for message in messages]
        )
        return {row.message_id: row for row in rows}
    # One INSERT fed one array, its ids read back: Django's bulk_create spent a tenth of a worker's CPU compiling
    # the same statement from model instances.
    table = connection.ops.quote_name(SendAttempt._meta.db_table)
    sql = (
        f"INSERT INTO {table} (message_id, provider_id, started_at, finished_at, outcome, error, esp_message_id) "  # noqa: S608
        "SELECT m, %s, %s, NULL, %s, '', '' FROM unnest(%s::bigint[]) AS m RETURNING id, message_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [provider_id, now, SendAttempt.Outcome.IN_FLIGHT, [message.pk for message in messages]])
        ids = cursor.fetchall()
    return {
        message_id: SendAttempt(id=attempt_id, message_id=message_id, provider_id=provider_id, started_at=now)
        for attempt_id, message_id in ids
    }
