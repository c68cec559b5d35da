"""Sending: claim a chunk, render, send through one reused provider connection, record every outcome.

The order of steps is what keeps the promise "no message is lost, and a message is sent twice only if a
worker died during its very API call":
1. claim (one short transaction): queued -> sending with a lease;
2. ESP calls, outside any transaction;
3. record (one short transaction), only for rows still `sending`.
A worker that dies between 1 and 3 leaves `sending` rows whose lease expires; messages_reclaim_expired
(services/reclaim.py) settles them: `sent` where the provider confirms it has the message, queued otherwise.
"""

from __future__ import annotations

import logging
import math
import queue
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from core.addresses import address_hash, email_domain
from delivery.batching import ItemOutcome
from delivery.circuit import circuit_allows, circuit_record
from delivery.exceptions import LimiterUnavailable, TemplateRenderFailed, TemplateSyntaxInvalid
from delivery.limits import (
    daily_cap_return,
    daily_cap_take,
    daily_count,
    provider_rate_limits,
    rate_wait_all,
    rate_window,
)
from delivery.models import Mailing, Message, Provider, SendAttempt, Suppression
from delivery.providers import (
    ProviderMisconfigured,
    provider_batch_limit,
    provider_connection,
    provider_secret,
    send_error_classify,
)
from delivery.routing import mailing_candidates, route_messages
from delivery.services.composing import message_build
from delivery.services.recording import attempt_finish, attempts_prepare, messages_record
from delivery.services.reputation import Reputation, provider_reputation_ok, providers_reputation_24h_cached
from delivery.services.warming import local_today, provider_daily_cap_today

logger = logging.getLogger(__name__)

# How long one send may wait for its rate-limit slot before the rest of the chunk is handed back.
RATE_WAIT_SECONDS = 2.0
# The least a thread gets of a batch-sending group: smaller calls would cost more than the parallelism gains.
MIN_BATCH_PART = 50


@dataclass
class ChunkResult:
    claimed: int = 0
    sent: int = 0
    suppressed: int = 0
    failed: int = 0
    retrying: int = 0
    released: int = 0
    errors: list[str] = field(default_factory=list)

    def merge(self, other: ChunkResult) -> None:
        for name in ("claimed", "sent", "suppressed", "failed", "retrying", "released"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors)


def _due_queued(mailing_id: int):
    now = timezone.now()
    return Message.objects.filter(mailing_id=mailing_id, status=Message.Status.QUEUED).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )


def messages_claim(*, mailing_id: int, limit: int) -> list[Message]:
    """Take up to `limit` due messages for this worker: queued -> sending, with a lease.

    PostgreSQL skips rows another worker has locked; SQLite has no row locks, but its IMMEDIATE transactions
    run one at a time, and the status filter on the UPDATE keeps a row from being claimed twice either way.
    """
    lease = timezone.now() + timedelta(seconds=settings.MAILER_LEASE_SECONDS)
    if connection.vendor == "postgresql":
        return _claim_postgresql(mailing_id, limit, lease)
    with transaction.atomic():
        query = _due_queued(mailing_id).order_by("pk")
        if connection.features.has_select_for_update_skip_locked:
            query = query.select_for_update(skip_locked=True)
        ids = list(query.values_list("pk", flat=True)[:limit])
        if not ids:
            return []
        Message.objects.filter(pk__in=ids, status=Message.Status.QUEUED).update(
            status=Message.Status.SENDING, lease_expires_at=lease
        )
    return list(Message.objects.filter(pk__in=ids, status=Message.Status.SENDING).order_by("pk"))


def _claim_postgresql(mailing_id: int, limit: int, lease: datetime) -> list[Message]:
    """The claim in one statement: lock the first due rows no other worker holds, mark them, return them."""
    table = connection.ops.quote_name(Message._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(str(f.column)) for f in Message._meta.concrete_fields)
    sql = (
        f"UPDATE {table} SET status = %s, lease_expires_at = %s WHERE id IN ("  # noqa: S608 - names are ours
        f"SELECT id FROM {table} WHERE mailing_id = %s AND status = %s"
        " AND (next_attempt_at IS NULL OR next_attempt_at <= %s)"
        " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
        f" RETURNING {columns}"
    )
    params = [Message.Status.SENDING, lease, mailing_id, Message.Status.QUEUED, timezone.now(), limit]
    with transaction.atomic():
        claimed = list(Message.objects.raw(sql, params))
    return sorted(claimed, key=lambda message: message.pk)


def _retry_at(attempts: int) -> datetime:
    """Exponential backoff with jitter: 30 s, 1 min, 2 min ... capped at an hour, each +-50 %."""
    base = min(30 * (2 ** max(attempts - 1, 0)), 3600)
    return timezone.now() + timedelta(seconds=base * random.uniform(0.5, 1.5))  # noqa: S311


class _Health:
    """What routing asks of a provider, once per chunk: circuit, reputation, the day's capacity left."""

    def __init__(self, day: date) -> None:
        self.day = day
        self.reputations = providers_reputation_24h_cached()
        self.reasons: dict[int, str] = {}

    def __call__(self, provider: Provider) -> bool:
        reason = self._problem(provider)
        if reason:
            self.reasons[provider.pk] = reason
        return not reason

    def _problem(self, provider: Provider) -> str:
        reputation = self.reputations.get(provider.pk, Reputation())
        if not provider_reputation_ok(reputation=reputation, plan=provider.warming_plan):
            return f"{provider.name}: 24-hour bounce or complaint rate above its threshold"
        cap = provider_daily_cap_today(provider=provider)
        if cap is not None and daily_count(key=_cap_key(provider), day=self.day) >= cap:
            return f"{provider.name}: today's cap of {cap} is used up"
        if not circuit_allows(provider_id=provider.pk):
            return f"{provider.name}: circuit open after repeated failures"
        try:
            provider_secret(provider)
        except ProviderMisconfigured as exc:
            return exc.message
        return ""


def _cap_key(provider: Provider) -> str:
    return f"provider:{provider.pk}"


def mailing_send_chunk(*, mailing_id: int, chunk_size: int | None = None) -> ChunkResult:
    """Send one chunk of a mailing's due messages. Safe to run in many workers at once."""
    result = ChunkResult()
    if Mailing.objects.filter(pk=mailing_id, is_paused=True).exists():
        return result  # paused: nothing more is claimed until it is resumed
    messages = messages_claim(mailing_id=mailing_id, limit=chunk_size or settings.MAILER_CHUNK_SIZE)
    result.claimed = len(messages)
    if not messages:
        return result
    try:
        return _chunk_send(mailing_id, messages, result)
    except BaseException:
        # Something unexpected (a cache or database outage, a bug): what was never handed to a provider goes
        # back to the queue now instead of waiting out its lease; what may have reached one waits for the lease.
        try:
            messages_release_untried(message_ids=[message.pk for message in messages])
        except Exception:  # the database itself may be what failed: then the lease brings them back
            logger.exception("mailing %s: claimed messages not released", mailing_id)
        raise


def _chunk_send(mailing_id: int, messages: list[Message], result: ChunkResult) -> ChunkResult:
    mailing = Mailing.objects.select_related("provider").get(pk=mailing_id)
    done: list[Message] = []
    attempts: list[SendAttempt] = []

    # The suppression list is checked after the claim, as close to the send as it can be. By hash: an erased
    # person's row keeps only the hash of the address, and it must stop the send as surely as the address would.
    hashes = {message.pk: address_hash(message.to_email) for message in messages}
    suppressed = set(
        Suppression.objects.filter(email_hash__in=set(hashes.values())).values_list("email_hash", flat=True)
    )
    to_send: list[Message] = []
    for message in messages:
        if hashes[message.pk] in suppressed:
            message.status = Message.Status.SUPPRESSED
            message.last_error = "address is on the suppression list"
            done.append(message)
            result.suppressed += 1
        else:
            to_send.append(message)

    candidates = mailing_candidates(mailing)
    if not candidates:
        _release(to_send, "no enabled provider", timezone.now() + timedelta(minutes=1), result, done)
        result.errors.append("no enabled provider")
        messages_record(done)
        return result
    try:
        health = _Health(local_today())
        plan = route_messages(to_send, candidates, is_healthy=health)
    except LimiterUnavailable as exc:
        # The shared limits (Redis) are out of reach: nothing can be sent within the caps, so nothing is tried.
        _release(to_send, str(exc), timezone.now() + timedelta(seconds=15), result, done)
        result.errors.append(str(exc))
        messages_record(done)
        return result
    for message in plan.unroutable:
        # A configuration mistake, not a passing fault: say which domain found no provider.
        message.status = Message.Status.FAILED
        message.last_error = f"no provider routes mail to {email_domain(message.to_email)}"
        done.append(message)
        result.failed += 1
    unhealthy = "; ".join(sorted(set(health.reasons.values()))) or "no provider available"
    _release(plan.unhealthy, unhealthy, _retry_at(1), result, done)
    for provider_id, group in plan.groups.items():
        _send_capped(mailing, plan.providers[provider_id], group, health.day, result, done, attempts)
    messages_record(done, attempts)
    if result.errors:
        logger.warning("mailing %s chunk: %s", mailing_id, "; ".join(result.errors[:5]))
    return result


def _release(
    messages: list[Message], reason: str, at: datetime, result: ChunkResult, done: list[Message] | _Released
) -> None:
    """Back to the queue without spending an attempt: nothing was tried."""
    for message in messages:
        message.status = Message.Status.QUEUED
        message.next_attempt_at = at
        message.last_error = f"not tried: {reason}"
        done.append(message)
        result.released += 1


def _send_capped(
    mailing: Mailing,
    provider: Provider,
    group: list[Message],
    day: date,
    result: ChunkResult,
    done: list[Message],
    attempts: list[SendAttempt],
) -> None:
    """Take the day's capacity for the group up front (atomically, shared by all workers), send what it grants,
    and give back what was not used."""
    cap = provider_daily_cap_today(provider=provider)
    if cap is None:
        _send_group(mailing, provider, group, result, done, attempts)
        return
    try:
        granted = daily_cap_take(key=_cap_key(provider), cap=cap, count=len(group), day=day)
    except LimiterUnavailable as exc:
        _release(group, str(exc), timezone.now() + timedelta(seconds=15), result, done)
        return
    _release(group[granted:], f"{provider.name}: today's cap of {cap} is used up", _retry_at(1), result, done)
    sent_before = result.sent + result.failed + result.retrying
    _send_group(mailing, provider, group[:granted], result, done, attempts)
    used = result.sent + result.failed + result.retrying - sent_before
    if used < granted:
        try:
            daily_cap_return(key=_cap_key(provider), count=granted - used, day=day)
        except LimiterUnavailable:
            logger.warning("could not give back %s of %s's daily cap", granted - used, provider.name)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _send_pool() -> ThreadPoolExecutor:
    """Threads that keep several ESP calls in flight at once; made on first use, so in each worker process
    (a pool made before a fork would not work in the child)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=settings.MAILER_SEND_THREADS, thread_name_prefix="mailer-send")
        return _pool


class _Recorder:
    """Writes outcomes as soon as they are known, from the thread that owns the database connection: whatever
    the sending threads finished since the last write goes in one statement, so the batches grow with the load.

    A worker killed mid-chunk then leaves unrecorded only the sends answered in the last few milliseconds (sent
    again once their lease expires), close to the calls that were in flight, not the whole chunk.
    """

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.attempts: list[SendAttempt] = []
        self.recorded_attempts: set[int] = set()

    def add(self, message: Message, attempt: SendAttempt | None) -> None:
        self.messages.append(message)
        if attempt is not None:
            self.attempts.append(attempt)

    def flush(self) -> None:
        if self.messages:
            messages_record(self.messages, self.attempts)
            self.recorded_attempts.update(attempt.pk for attempt in self.attempts)
        self.messages, self.attempts = [], []


class _Released:
    """What _release appends to: a message given back untried, passed on as an outcome without an attempt."""

    def __init__(self, emit: Callable[[Message, SendAttempt | None], None]) -> None:
        self.emit = emit

    def append(self, message: Message) -> None:
        self.emit(message, None)


def _batch_size(provider: Provider, limits: list[tuple[str, float]]) -> int:
    """Messages per ESP call: the provider's batch limit, and never more than its rate lets through at once."""
    size = provider_batch_limit(provider)
    for _key, rate in limits:
        size = min(size, rate_window(rate)[0])
    return max(size, 1)


def _parts(group: list[Message], threads: int, batch: int) -> list[list[Message]]:
    """The group split over the threads. One message per call: dealt out in turn. Batches: contiguous parts of
    at least MIN_BATCH_PART messages (in the engagement order of the claim), so the calls stay large."""
    if batch == 1:
        count = max(1, min(threads, len(group)))
        return [group[i::count] for i in range(count)]
    count = max(1, min(threads, math.ceil(len(group) / MIN_BATCH_PART)))
    size = math.ceil(len(group) / count)
    return [group[i : i + size] for i in range(0, len(group), size)]


def _send_group(
    mailing: Mailing,
    provider: Provider,
    group: list[Message],
    result: ChunkResult,
    done: list[Message],
    attempts: list[SendAttempt],
) -> None:
    """Send one provider's share of the chunk, MAILER_SEND_THREADS calls at a time, recording as it goes.

    An ESP call is mostly waiting for the network, so one worker keeps several in flight, each thread with its
    own connection (anymail backends are not thread-safe). The threads never touch the database: the attempt
    rows of the whole group are written before the first call (those never tried are removed after), and the
    threads hand each outcome to this thread, which records them in small batches.
    """
    limits = provider_rate_limits(provider_id=provider.pk, max_rate=provider.max_rate)
    batch = _batch_size(provider, limits)
    parts = _parts(group, settings.MAILER_SEND_THREADS, batch)
    stop = _Stop()
    recorder = _Recorder()
    if len(parts) == 1:
        # One thread: each call's outcomes are written as soon as the call is answered (`settle`).
        _send_slice(mailing, provider, group, limits, None, stop, result, recorder.add, batch, settle=recorder.flush)
        recorder.flush()
        return
    prepared = attempts_prepare(messages=group, provider_id=provider.pk)
    outcomes: queue.SimpleQueue[tuple[Message, SendAttempt | None]] = queue.SimpleQueue()

    def run(part: list[Message]) -> ChunkResult:
        part_result = ChunkResult()
        emit = lambda m, a: outcomes.put((m, a))  # noqa: E731
        _send_slice(mailing, provider, part, limits, prepared, stop, part_result, emit, batch)
        return part_result

    futures = [_send_pool().submit(run, part) for part in parts]
    while True:
        finished = all(future.done() for future in futures)
        try:
            # Wait for the next outcome, then take whatever else has arrived: written together, at once.
            recorder.add(*outcomes.get(timeout=0.05))
            while True:
                recorder.add(*outcomes.get_nowait())
        except queue.Empty:
            pass
        recorder.flush()
        if finished and outcomes.empty():
            break
    recorder.flush()
    for future in futures:
        result.merge(future.result())
    untried = [attempt.pk for attempt in prepared.values() if attempt.pk not in recorder.recorded_attempts]
    if untried:
        SendAttempt.objects.filter(pk__in=untried).delete()


class _Stop:
    """Shared by the threads of a group: the first retryable failure stops the others' next calls."""

    def __init__(self) -> None:
        self.reason = ""
        self._event = threading.Event()

    def set(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def _send_slice(
    mailing: Mailing,
    provider: Provider,
    group: list[Message],
    limits: list[tuple[str, float]],
    prepared: dict[int, SendAttempt] | None,
    stop: _Stop,
    result: ChunkResult,
    emit: Callable[[Message, SendAttempt | None], None],
    batch: int = 1,
    settle: Callable[[], None] | None = None,
) -> None:
    """Send messages over one connection, `batch` per ESP call; each outcome goes to `emit` as it is known.

    Without `prepared` attempts (one thread, which owns the database), each call's attempt rows are written,
    and committed, just before the call, and `settle` writes its outcomes right after it.
    """
    done = _Released(emit)
    backend = provider_connection(provider)
    with backend:
        index = 0
        while index < len(group):
            if stop.is_set():
                # The provider is failing: put the rest back without spending an attempt on them; they go to
                # another provider next time if there is one.
                _release(group[index:], stop.reason, _retry_at(1), result, done)
                return
            part = group[index : index + batch]
            index += len(part)
            ready: list[tuple[Message, EmailMultiAlternatives]] = []
            for message in part:
                try:
                    ready.append((message, message_build(mailing, message)))
                except (TemplateRenderFailed, TemplateSyntaxInvalid) as exc:
                    message.status = Message.Status.FAILED
                    message.last_error = exc.message
                    emit(message, None)
                    result.failed += 1
            if not ready:
                continue
            # The rate is taken right before the call, so that the time spent rendering does not count against it.
            if limits:
                untried = [message for message, _ in ready] + group[index:]
                try:
                    granted = rate_wait_all(limits=limits, count=len(ready), max_wait=RATE_WAIT_SECONDS)
                except LimiterUnavailable as exc:
                    _release(untried, str(exc), timezone.now() + timedelta(seconds=15), result, done)
                    return
                if not granted:
                    # Busier than the rate allows: the rest waits for the next chunk rather than holding a worker.
                    reason = f"{provider.name}: at its rate limit"
                    _release(untried, reason, timezone.now() + timedelta(seconds=1), result, done)
                    return
            attempts = prepared or attempts_prepare(messages=[m for m, _ in ready], provider_id=provider.pk)
            now = timezone.now()
            for message, _ in ready:
                message.provider = provider
                message.attempts += 1
                attempts[message.pk].started_at = now
            answers = _call(backend, [email for _, email in ready])
            failure = ""
            for (message, _), answer in zip(ready, answers, strict=True):
                attempt = attempts[message.pk]
                if answer.accepted:
                    message.esp_message_id = answer.esp_message_id[:255]
                    message.status = Message.Status.SENT
                    message.sent_at = timezone.now()
                    message.last_error = ""
                    attempt_finish(attempt, outcome=SendAttempt.Outcome.SENT, esp_message_id=message.esp_message_id)
                    result.sent += 1
                else:
                    _failed(message, attempt, answer.retryable, answer.error, result)
                    if answer.retryable:
                        failure = answer.error
                emit(message, attempt)
            if settle is not None:
                settle()
            # A refused request is still an answer: only retryable failures (network, 5xx, 429) count against it.
            _circuit_record(provider, ok=not failure)
            if failure:
                stop.set(failure)


def _call(backend: BaseEmailBackend, emails: list[EmailMultiAlternatives]) -> list[ItemOutcome]:
    """One ESP call: a batch where the backend takes one, else anymail's single send. One outcome per email."""
    if len(emails) > 1:
        return backend.send_batch(emails)  # type: ignore[attr-defined]
    email = emails[0]
    try:
        backend.send_messages([email])
    except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded, none escapes
        error = send_error_classify(exc)
        return [ItemOutcome(error=error.reason, retryable=error.retryable)]
    status = getattr(email, "anymail_status", None)
    recipient = status.recipients.get(email.to[0]) if status is not None else None
    return [ItemOutcome(esp_message_id=str(recipient.message_id or "") if recipient else "")]


def _circuit_record(provider: Provider, *, ok: bool) -> None:
    """Count a call's outcome in the provider's circuit breaker; a store outage only loses the count."""
    try:
        circuit_record(provider_id=provider.pk, ok=ok)
    except LimiterUnavailable:
        logger.warning("circuit state of %s not recorded: limits store unavailable", provider.name)


def _failed(message: Message, attempt: SendAttempt, retryable: bool, reason: str, result: ChunkResult) -> None:
    """A try that failed: again later (retryable), dead (retryable, but too many tries), or failed for good."""
    message.last_error = reason
    result.errors.append(f"{message.to_email}: {reason}")
    if retryable and message.attempts < settings.MAILER_MAX_ATTEMPTS:
        message.status = Message.Status.QUEUED
        message.next_attempt_at = _retry_at(message.attempts)
        attempt_finish(attempt, outcome=SendAttempt.Outcome.RETRY, error=reason)
        result.retrying += 1
    elif retryable:
        message.status = Message.Status.DEAD
        message.last_error = f"gave up after {message.attempts} attempts: {reason}"
        attempt_finish(attempt, outcome=SendAttempt.Outcome.RETRY, error=reason)
        result.failed += 1
    else:
        message.status = Message.Status.FAILED
        attempt_finish(attempt, outcome=SendAttempt.Outcome.FAILED, error=reason)
        result.failed += 1


def messages_release_untried(*, message_ids: list[int]) -> int:
    """Claimed rows with no attempt yet go back to the queue; rows with one stay until their lease expires."""
    tried = SendAttempt.objects.filter(message_id__in=message_ids, finished_at=None).values("message_id")
    return (
        Message.objects.filter(pk__in=message_ids, status=Message.Status.SENDING)
        .exclude(pk__in=tried)
        .update(
            status=Message.Status.QUEUED,
            lease_expires_at=None,
            next_attempt_at=timezone.now() + timedelta(seconds=15),
            last_error="not tried: the sending task stopped on an error",
        )
    )


def mailings_pump() -> list[int]:
    """Mailings with messages due now: the callers start sending tasks for them."""
    now = timezone.now()
    return list(
        Message.objects.filter(status=Message.Status.QUEUED, mailing__is_paused=False)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .values_list("mailing_id", flat=True)
        .distinct()
        .order_by("mailing_id")[:100]
    )
