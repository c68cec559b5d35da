from django.core.management.base import BaseCommand
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from core.periodic import PERIODIC_TASKS


class Command(BaseCommand):
    help = "Write the periodic tasks declared in core.periodic into django-celery-beat (idempotent)."

    @transaction.atomic
    def handle(self, *args: object, **options: object) -> None:
        names = []
        for entry in PERIODIC_TASKS:
            schedule, _ = IntervalSchedule.objects.get_or_create(
                every=entry.every_seconds, period=IntervalSchedule.SECONDS
            )
            PeriodicTask.objects.update_or_create(
                name=entry.name,
                defaults={
                    "task": entry.task,
                    "interval": schedule,
                    "crontab": None,
                    "expire_seconds": entry.expires_seconds,
                    "enabled": True,
                },
            )
            names.append(entry.name)
        # Entries this project once declared and no longer does would otherwise keep running.
        stale = PeriodicTask.objects.filter(task__regex=r"^(campaigns|delivery|subscribers|webhooks)\.tasks\.")
        removed, _ = stale.exclude(name__in=names).delete()
        self.stdout.write(f"{len(names)} periodic tasks in place, {removed} stale removed.")
