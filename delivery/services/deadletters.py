"""The dead-letter list: messages the engine gave up on after MAILER_MAX_ATTEMPTS retryable failures.

A dead message waits for an operator, who retries it (back to the queue with a fresh set of attempts) or
discards it (it ends `failed`). Nothing here deletes a row: "purge" discards in bulk, so every message still ends
in a final state that shows what happened to it. Each operation is one set-wise transaction over the rows that
are still `dead`, so running it twice, or at the same time as another operator, changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.db import transaction
from django.db.models import F, QuerySet, TextField, Value
from django.db.models.functions import Concat
from django.utils import timezone

from core.addresses import address_hash
from core.exceptions import ApplicationError, NotFound
from delivery.models import Mailing, Message, Suppression
from delivery.tasks import mailing_send_start

RETRIED_NOTE = "retried by operator after: "
DISCARDED_NOTE = "discarded by operator after: "
SUPPRESSED_NOTE = "address is on the suppression list"
# Bounds the parameters of one IN (...) list: SQLite refuses statements with too many.
_BATCH = 500
T = TypeVar("T")


@dataclass(frozen=True)
class DeadLettersRetried:
    """What a retry did: messages back in the queue, and those that ended `suppressed` instead."""

    requeued: int = 0
    suppressed: int = 0
    mailing_ids: list[int] = field(default_factory=list)


def _batches(items: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]


def _mailing_check(mailing_id: int) -> None:
    if not Mailing.objects.filter(pk=mailing_id).exists():
        raise NotFound(f"No mailing with id {mailing_id}.", {"mailing_id": mailing_id})


def _dead_rows(*, message_ids: Collection[int] | None, mailing_id: int | None) -> list[tuple[int, int, str]]:
    """(id, mailing id, address) of the dead messages in scope; unknown ids or mailings raise NotFound.

    Ids that exist but are no longer dead are left out silently: that is what a second run finds.
    """
    query = Message.objects.filter(status=Message.Status.DEAD)
    if mailing_id is not None:
        _mailing_check(mailing_id)
        query = query.filter(mailing_id=mailing_id)
    fields = ("pk", "mailing_id", "to_email")
    if message_ids is None:
        return list(query.order_by("pk").values_list(*fields))
    ids = sorted(set(message_ids))
    known: set[int] = set()
    rows: list[tuple[int, int, str]] = []
    for batch in _batches(ids):
        known.update(Message.objects.filter(pk__in=batch).values_list("pk", flat=True))
        rows.extend(query.filter(pk__in=batch).order_by("pk").values_list(*fields))
    unknown = [pk for pk in ids if pk not in known]
    if unknown:
        shown = ", ".join(str(pk) for pk in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise NotFound(f"No message with id {shown}.", {"message_ids": unknown})
    return rows


def _update_dead(ids: list[int], **changes: Any) -> int:
    """Update those of `ids` still dead, a batch at a time; the status filter makes a second run a no-op."""
    return sum(
        Message.objects.filter(pk__in=batch, status=Message.Status.DEAD).update(**changes) for batch in _batches(ids)
    )


def deadletters_list(
    *, mailing_id: int | None = None, older_than_days: int | None = None, limit: int | None = None
) -> QuerySet[Message]:
    """Dead messages, the most recently given up first; `older_than_days` keeps those dead for longer than that.

    Raises NotFound for a mailing that does not exist, so that a typo is not mistaken for an empty list.
    """
    query = Message.objects.filter(status=Message.Status.DEAD)
    if mailing_id is not None:
        _mailing_check(mailing_id)
        query = query.filter(mailing_id=mailing_id)
    if older_than_days is not None:
        query = query.filter(updated_at__lt=_cutoff(older_than_days))
    query = query.select_related("mailing", "provider").order_by("-updated_at", "-pk")
    return query[:limit] if limit is not None else query


def _cutoff(older_than_days: int) -> datetime:
    if older_than_days < 0:
        raise ApplicationError(
            f"The age must be zero or more days, not {older_than_days}.", {"older_than_days": older_than_days}
        )
    return timezone.now() - timedelta(days=older_than_days)


@transaction.atomic
def deadletters_retry(
    *, message_ids: Collection[int] | None = None, mailing_id: int | None = None, all_dead: bool = False
) -> DeadLettersRetried:
    """Put dead messages back in the queue with their attempts reset, and start sending once this commits.

    Exactly one scope: some messages, one mailing's, or (`all_dead`, which a door must ask for explicitly) every
    one. A dead message whose address is now on the suppression list ends `suppressed` instead: a retry is a send
    path like any other. The engine checks the list again after its claim, so an address suppressed after this
    commits is not sent to either. The last error is kept in the note, so the history stays readable.
    """
    if sum((message_ids is not None, mailing_id is not None, all_dead)) != 1:
        raise ApplicationError("Retry needs exactly one scope: message ids, a mailing, or all dead letters.")
    rows = _dead_rows(message_ids=message_ids, mailing_id=mailing_id)
    hashes = {pk: address_hash(to_email) for pk, _, to_email in rows}
    suppressed_hashes: set[str] = set()
    for batch in _batches(sorted(set(hashes.values()))):
        suppressed_hashes.update(Suppression.objects.filter(email_hash__in=batch).values_list("email_hash", flat=True))
    suppressed_ids = [pk for pk, digest in hashes.items() if digest in suppressed_hashes]
    skipped = set(suppressed_ids)
    retry_ids = [pk for pk, _, _ in rows if pk not in skipped]

    now = timezone.now()
    suppressed = _update_dead(
        suppressed_ids,
        status=Message.Status.SUPPRESSED,
        last_error=SUPPRESSED_NOTE,
        lease_expires_at=None,
        updated_at=now,
    )
    requeued = _update_dead(
        retry_ids,
        status=Message.Status.QUEUED,
        attempts=0,
        next_attempt_at=now,
        lease_expires_at=None,
        last_error=Concat(Value(RETRIED_NOTE), F("last_error"), output_field=TextField()),
        updated_at=now,
    )
    mailing_ids = sorted({mailing for pk, mailing, _ in rows if pk not in skipped}) if requeued else []
    for mailing in mailing_ids:
        mailing_send_start(mailing)  # enqueues on commit: a worker never looks before the rows are queued
    return DeadLettersRetried(requeued=requeued, suppressed=suppressed, mailing_ids=mailing_ids)


@transaction.atomic
def deadletters_discard(*, message_ids: Collection[int]) -> int:
    """End these dead messages `failed`, noting that an operator chose to; returns how many were still dead."""
    rows = _dead_rows(message_ids=message_ids, mailing_id=None)
    return _update_dead([pk for pk, _, _ in rows], **_discarded(timezone.now()))


@transaction.atomic
def deadletters_purge(*, older_than_days: int) -> int:
    """Discard every message dead for longer than `older_than_days`. Rows are kept: purging is discarding in bulk."""
    now = timezone.now()
    dead = Message.objects.filter(status=Message.Status.DEAD, updated_at__lt=_cutoff(older_than_days))
    return dead.update(**_discarded(now))


def _discarded(now: datetime) -> dict[str, Any]:
    return {
        "status": Message.Status.FAILED,
        "last_error": Concat(Value(DISCARDED_NOTE), F("last_error"), output_field=TextField()),
        "lease_expires_at": None,
        "updated_at": now,
    }
