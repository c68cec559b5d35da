"""Celery tasks of the sending engine: thin, they take ids and call one service."""

from __future__ import annotations

import time

from celery import shared_task
from django.conf import settings
from django.core.cache import cache

# A sending task works through chunks for this long, then hands over to a fresh task so that one mailing
# cannot hold a worker for ever and the time limits stay far away.
SEND_TASK_BUDGET_SECONDS = 20
_ACTIVE_KEY = "mailing:{}:active"


@shared_task(acks_late=True, ignore_result=True)
def mailing_send_task(mailing_id: int) -> None:
    from delivery.services import mailing_send_chunk

    deadline = time.monotonic() + SEND_TASK_BUDGET_SECONDS
    while time.monotonic() < deadline:
        cache.set(_ACTIVE_KEY.format(mailing_id), 1, timeout=60)
        result = mailing_send_chunk(mailing_id=mailing_id)
        if result.claimed == 0 or result.released:
            # Nothing due, or the provider is failing: the pump will come back for the rest.
            cache.delete(_ACTIVE_KEY.format(mailing_id))
            return
    mailing_send_task.delay(mailing_id)


def mailing_send_start(mailing_id: int, parallelism: int | None = None) -> None:
    """Start sending tasks for a mailing once the current transaction commits."""
    from django.db import transaction

    count = parallelism or settings.MAILER_SEND_PARALLELISM

    def enqueue() -> None:
        cache.set(_ACTIVE_KEY.format(mailing_id), 1, timeout=60)
        for _ in range(count):
            mailing_send_task.delay(mailing_id)

    transaction.on_commit(enqueue)


@shared_task(acks_late=True, ignore_result=True)
def mailings_pump_task() -> None:
    """Start sending for mailings with due messages and no live task: retries, and anything a lost task left."""
    from delivery.services import mailings_pump

    for mailing_id in mailings_pump():
        if cache.add(_ACTIVE_KEY.format(mailing_id), 1, timeout=60):
            mailing_send_task.delay(mailing_id)


@shared_task(acks_late=True, ignore_result=True)
def messages_reclaim_expired_task() -> None:
    from delivery.services import messages_reclaim_expired

    messages_reclaim_expired()
