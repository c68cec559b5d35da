from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True, ignore_result=True)
def campaigns_dispatch_due_task() -> None:
    from campaigns.services import campaigns_dispatch_due

    campaigns_dispatch_due()
