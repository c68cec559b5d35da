from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True, ignore_result=True)
def esp_events_apply_task() -> None:
    from webhooks.services import esp_events_apply

    while esp_events_apply(limit=1000) == 1000:
        pass
