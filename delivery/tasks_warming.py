"""The warming beat task: thin, it calls the service (delivery.tasks belongs to the sending engine)."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, ignore_result=True)
def providers_warming_advance_task() -> None:
    """Hourly: the first run after local midnight moves each warming provider; the others find nothing to do."""
    from delivery.services.warming import providers_warming_advance

    for line in providers_warming_advance():
        logger.info("warming: %s", line)
