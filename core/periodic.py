"""Periodic work declared in code; `manage.py sync_periodic_tasks` writes it into django-celery-beat."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PeriodicEntry:
    name: str
    task: str
    every_seconds: int
    expires_seconds: int


PERIODIC_TASKS: list[PeriodicEntry] = [
    PeriodicEntry("dispatch due campaigns", "campaigns.tasks.campaigns_dispatch_due_task", 5, 5),
    PeriodicEntry("pump queued messages", "delivery.tasks.mailings_pump_task", 10, 10),
    PeriodicEntry("reclaim expired leases", "delivery.tasks.messages_reclaim_expired_task", 60, 60),
    PeriodicEntry("apply ESP events", "webhooks.tasks.esp_events_apply_task", 10, 10),
    # Hourly, so the step after local midnight happens even when beat was asleep at midnight.
    PeriodicEntry("advance provider warming", "delivery.tasks_warming.providers_warming_advance_task", 3600, 3600),
]
