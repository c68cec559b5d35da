"""Recording outcomes: one statement per chunk for the messages, and the attempt log."""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from delivery.models import Message, SendAttempt

_RECORD_COLUMNS = ("id", "status", "provider_id", "esp_message_id", "attempts", "last_error", "next_attempt_at",
                   "sent_at")  # fmt: skip
# PostgreSQL needs the VALUES columns typed where a whole column may be NULL; SQLite takes them as they come.
_PG_CASTS = {"id": "bigint", "provider_id": "bigint", "attempts": "integer", "next_attempt_at": "timestamptz",
             "sent_at": "timestamptz"}  # fmt: skip


def messages_record(messages: list[Message], attempts: list[SendAttempt] | None = None) -> None:
    """Write outcomes back in one statement, only over rows this worker still holds (`sending`).

    One UPDATE ... FROM (VALUES ...) for the whole chunk: Django's bulk_update builds a CASE per field and
    row, which cost more than the ESP calls themselves.
    """
    if not messages:
        return
    ops = connection.ops
    is_pg = connection.vendor == "postgresql"
    rows: list[str] = []
    params: list[Any] = []
    for message in messages:
        rows.append("(" + ", ".join(["%s"] * len(_RECORD_COLUMNS)) + ")")
        params += [
            message.pk,
            message.status,
            message.provider_id,
            message.esp_message_id,
            message.attempts,
            message.last_error,
            ops.adapt_datetimefield_value(message.next_attempt_at),
            ops.adapt_datetimefield_value(message.sent_at),
        ]
    table = ops.quote_name(Message._meta.db_table)

    def col(name: str) -> str:
        return f"v.{name}::{_PG_CASTS[name]}" if is_pg and name in _PG_CASTS else f"v.{name}"

    assignments = ", ".join(f"{name} = {col(name)}" for name in _RECORD_COLUMNS[1:])
    # Names are ours, values are parameters.
    sql = (
        f"WITH v ({', '.join(_RECORD_COLUMNS)}) AS (VALUES {', '.join(rows)}) "  # noqa: S608
        f"UPDATE {table} SET {assignments}, lease_expires_at = NULL, updated_at = %s "
        f"FROM v WHERE {table}.id = {col('id')} AND {table}.status = %s"
    )
    params += [ops.adapt_datetimefield_value(timezone.now()), Message.Status.SENDING]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        if attempts:
            SendAttempt.objects.bulk_update(
                attempts, ["started_at", "finished_at", "outcome", "error", "esp_message_id"]
            )


def attempt_start(*, message: Message, provider_id: int) -> SendAttempt:
    """Written (and committed) before the ESP call: should the worker die inside the call, the row without an
    end says which provider may have the message."""
    return SendAttempt.objects.create(message_id=message.pk, provider_id=provider_id, started_at=timezone.now())


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
