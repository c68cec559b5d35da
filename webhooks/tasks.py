from __future__ import annotations

from celery import shared_task

# Events that wait for their message's send to be recorded are tried again this soon (seconds).
WAITING_RETRY_SECONDS = 2


@shared_task(acks_late=True, ignore_result=True)
def esp_events_apply_task() -> None:
    from django.core.cache import cache

    from webhooks.services import APPLY_BATCH, APPLY_REQUESTED_KEY, esp_events_apply

    cache.delete(APPLY_REQUESTED_KEY)
    while True:
        result = esp_events_apply(limit=APPLY_BATCH)
        if result.applied < APPLY_BATCH:
            break
    if result.waiting:
        esp_events_apply_task.apply_async(countdown=WAITING_RETRY_SECONDS)
