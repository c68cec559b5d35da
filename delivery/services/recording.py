"""Recording outcomes: one statement per chunk for the messages, and the attempt log."""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from delivery.models import Message, SendAttempt

# PostgreSQL needs the VALUES columns typed where a whole column may be NULL; SQLite takes them as they come.
_PG_CASTS = {"id": "bigint", "provider_id": "bigint", "attempts": "integer", "next_attempt_at": "timestamptz",
             "sent_at": "timestamptz", "started_at": "timestamptz", "finished_at": "timestamptz"}  # fmt: skip
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
    extra_params: list[Any] | None = None,
) -> None:
    """One UPDATE ... FROM (VALUES ...) for many rows, matched on the first column (the id). `extra_set` and
    `where` are SQL of ours; their values come in `extra_params`.

    Django's bulk_update builds a CASE per field and row, whose Python cost exceeded the ESP calls themselves.
    """
    is_pg = connection.vendor == "postgresql"
    quoted = connection.ops.quote_name(table)

    def col(name: str) -> str:
        return f"v.{name}::{_PG_CASTS[name]}" if is_pg and name in _PG_CASTS else f"v.{name}"

    placeholders = "(" + ", ".join(["%s"] * len(columns)) + ")"
    assignments = ", ".join(f"{name} = {col(name)}" for name in columns[1:])
    # Names are ours, values are parameters.
    sql = (
        f"WITH v ({', '.join(columns)}) AS (VALUES {', '.join([placeholders] * len(rows))}) "  # noqa: S608
        f"UPDATE {quoted} SET {assignments}{extra_set} FROM v WHERE {quoted}.id = {col('id')}{where}"
    )
    cursor.execute(sql, [value for row in rows for value in row] + (extra_params or []))


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
            extra_params=[adapt(timezone.now()), Message.Status.SENDING],
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
    rows = SendAttempt.objects.bulk_create(
        [SendAttempt(message_id=message.pk, provider_id=provider_id, started_at=now) for message in messages]
    )
    return {row.message_id: row for row in rows}
