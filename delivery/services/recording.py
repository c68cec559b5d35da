"""Recording outcomes: one statement per chunk for the messages, and the attempt log."""

from __future__ import annotations

from django.db import connection, transaction
from django.utils import timezone

from core.bulk import rows_update
from delivery.models import Message, SendAttempt

_MESSAGE_FIELDS = ("status", "provider", "esp_message_id", "attempts", "last_error", "next_attempt_at", "sent_at",
                   "lease_expires_at")  # fmt: skip
_ATTEMPT_FIELDS = ("started_at", "finished_at", "outcome", "error", "esp_message_id")


def messages_record(messages: list[Message], attempts: list[SendAttempt] | None = None) -> None:
    """Write outcomes back, only over rows this worker still holds (`sending`), and their attempts: two
    statements in one transaction (core.bulk: an array per column on PostgreSQL, so the statement text does not
    grow with the chunk)."""
    if not messages:
        return
    for message in messages:
        message.lease_expires_at = None
    with transaction.atomic():
        rows_update(model=Message, objects=messages, fields=_MESSAGE_FIELDS, touch="updated_at",
                    only_where=("status", Message.Status.SENDING))  # fmt: skip
        if attempts:
            rows_update(model=SendAttempt, objects=attempts, fields=_ATTEMPT_FIELDS)


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
