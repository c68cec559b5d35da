from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=3600, time_limit=3700)
def subscriber_import_task(import_id: int) -> None:
    from subscribers.services.import_jobs import subscriber_import_run

    subscriber_import_run(import_id=import_id)
