"""Reclaiming the messages of a worker that vanished, asking the provider first where it can be asked.

A worker killed after its ESP call was answered but before it recorded the answer leaves the message `sending`,
with an attempt that never ended. Queuing it again would deliver it twice. Postmark can say what it accepted (its
outbound message search, by recipient, matched on our `mailer_msg` metadata): a message it has is recorded `sent`
with Postmark's id, and only what it does not have goes back to the queue. SendGrid, SES and SMTP cannot be asked
that way; their messages go back to the queue, so for them a message is sent twice if its worker died between the
answer and its record.

The questions are network calls: they are asked outside any transaction, and each answer is written only over a
row that is still `sending` with its lease expired.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import requests
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from delivery.models import Message, Provider, SendAttempt
from delivery.providers import ProviderMisconfigured, provider_connection

logger = logging.getLogger(__name__)

# Kinds whose API says whether it accepted a given message.
ASKABLE_KINDS = {Provider.Kind.POSTMARK}
# Time one reclaim run spends asking; what is left waits for the next run (still `sending`, so never sent twice).
ASK_SECONDS = 20.0
# A message whose provider could not be asked for this long after its lease ran out is queued again anyway:
# a possible duplicate is better than a message that never goes.
ASK_GIVE_UP = timedelta(hours=1)
CONFIRMED_NOTE = "confirmed by the provider after its worker was lost"


def messages_reclaim_expired() -> int:
    """Settle `sending` rows whose lease expired: `sent` where the provider confirms it has the message, back to
    the queue otherwise. Returns how many were settled (confirmed or queued)."""
    now = timezone.now()
    expired = Message.objects.filter(status=Message.Status.SENDING, lease_expires_at__lt=now)
    last_attempt = SendAttempt.objects.filter(message=OuterRef("pk")).order_by("-started_at", "-pk")
    candidates = list(
        expired.annotate(
            attempt_id=Subquery(last_attempt.values("pk")[:1]),
            attempt_open=Subquery(last_attempt.values("finished_at")[:1]),
            attempt_kind=Subquery(last_attempt.values("provider__kind")[:1]),
        )
        .filter(attempt_id__isnull=False, attempt_open__isnull=True, attempt_kind__in=ASKABLE_KINDS)
        .filter(lease_expires_at__gte=now - ASK_GIVE_UP)
        .values_list("pk", "to_email", "attempt_id")
        .order_by("pk")
    )
    confirmed, unasked = _ask(candidates)
    settled = _record_confirmed(confirmed, now)
    queued = (
        expired.exclude(pk__in=unasked)
        .exclude(pk__in=[message_id for message_id, _, _ in confirmed])
        .update(status=Message.Status.QUEUED, lease_expires_at=None, last_error="lease expired; worker lost")
    )
    if confirmed or unasked:
        logger.info("reclaim: %s confirmed sent by the provider, %s queued again, %s left for the next run",
                    settled, queued, len(unasked))  # fmt: skip
    return settled + queued


def _ask(candidates: list[tuple[int, str, int]]) -> tuple[list[tuple[int, int, str]], list[int]]:
    """(message id, attempt id, ESP id) of the messages the provider has, and the ids it was not asked about (out
    of time, or it could not answer)."""
    attempts = SendAttempt.objects.in_bulk([attempt_id for _, _, attempt_id in candidates])
    providers = Provider.objects.in_bulk({attempts[a].provider_id for _, _, a in candidates})
    deadline = time.monotonic() + ASK_SECONDS
    confirmed: list[tuple[int, int, str]] = []
    unasked: list[int] = []
    by_provider: dict[int, list[tuple[int, str, int]]] = {}
    for candidate in candidates:
        provider_id = attempts[candidate[2]].provider_id
        if provider_id is not None:  # the candidates' attempts all name one (their provider's kind was read)
            by_provider.setdefault(provider_id, []).append(candidate)
    for provider_id, group in by_provider.items():
        try:
            backend = provider_connection(providers[provider_id])
        except ProviderMisconfigured as exc:
            logger.warning("reclaim: cannot ask %s: %s", providers[provider_id].name, exc.message)
            unasked += [message_id for message_id, _, _ in group]
            continue
        with backend:
            for index, (message_id, email, attempt_id) in enumerate(group):
                if time.monotonic() > deadline:
                    unasked += [m for m, _, _ in group[index:]]
                    break
                try:
                    esp_id = backend.message_find(recipient=email, mailer_msg=str(message_id))  # type: ignore[attr-defined]
                except (requests.RequestException, ValueError) as exc:
                    logger.warning("reclaim: %s could not say whether it has message %s: %s",
                                   providers[provider_id].name, message_id, exc)  # fmt: skip
                    unasked += [m for m, _, _ in group[index:]]
                    break
                if esp_id is not None:
                    confirmed.append((message_id, attempt_id, esp_id))
    return confirmed, unasked


def _record_confirmed(confirmed: list[tuple[int, int, str]], now: datetime) -> int:
    settled = 0
    with transaction.atomic():
        for message_id, attempt_id, esp_id in confirmed:
            attempt = SendAttempt.objects.get(pk=attempt_id)
            changed = Message.objects.filter(
                pk=message_id, status=Message.Status.SENDING, lease_expires_at__lt=now
            ).update(
                status=Message.Status.SENT,
                esp_message_id=esp_id[:255],
                provider_id=attempt.provider_id,
                sent_at=attempt.started_at,
                lease_expires_at=None,
                last_error="",
            )
            if changed:
                SendAttempt.objects.filter(pk=attempt_id, finished_at=None).update(
                    finished_at=timezone.now(),
                    outcome=SendAttempt.Outcome.SENT,
                    esp_message_id=esp_id[:255],
                    error=CONFIRMED_NOTE,
                )
                settled += 1
    return settled
