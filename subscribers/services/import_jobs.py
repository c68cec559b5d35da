"""CSV imports started from the admin: the upload is stored, a worker runs the import, and the row records
its progress and result for the page to show."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from django.core.cache import cache
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from subscribers.models import MailingList, SubscriberImport
from subscribers.services.import_rows import ImportFileInvalid
from subscribers.services.importing import ImportOptions, subscribers_import

logger = logging.getLogger(__name__)
PROGRESS_WRITE_SECONDS = 1.0


def import_progress_key(import_id: int) -> str:
    return f"subscribers:import:{import_id}:progress"


def subscriber_import_progress(*, job: SubscriberImport) -> tuple[int, int]:
    """(bytes done, bytes in all) of an import: from the cache while it runs, from its row once it ended."""
    if job.status == SubscriberImport.Status.RUNNING:
        done, total = cache.get(import_progress_key(job.pk), (0, job.bytes_total))
        return int(done), int(total)
    return job.bytes_done, job.bytes_total


@transaction.atomic
def subscriber_import_start(
    *, mailing_list: MailingList, upload: UploadedFile, options: ImportOptions, created_by: Any = None
) -> SubscriberImport:
    """Store the upload and queue its import; the worker starts once this transaction commits."""
    from subscribers.tasks import subscriber_import_task

    job = SubscriberImport(
        mailing_list=mailing_list,
        options={
            "update_existing": options.update_existing,
            "dry_run": options.dry_run,
            "resubscribe": options.resubscribe,
            "encoding": options.encoding,
            "column_map": options.column_map,
        },
        bytes_total=upload.size or 0,
        created_by=created_by if getattr(created_by, "pk", None) else None,
    )
    job.file.save(Path(upload.name or "import.csv").name, upload, save=False)
    job.save()
    transaction.on_commit(lambda: subscriber_import_task.delay(job.pk))
    return job


def subscriber_import_run(*, import_id: int) -> SubscriberImport:
    """Run a queued import. Safe to run twice: only a queued import starts (a second delivery finds it taken)."""
    claimed = SubscriberImport.objects.filter(pk=import_id, status=SubscriberImport.Status.QUEUED).update(
        status=SubscriberImport.Status.RUNNING, started_at=timezone.now()
    )
    job = SubscriberImport.objects.select_related("mailing_list").get(pk=import_id)
    if not claimed:
        return job
    path = Path(job.file.path)
    errors_path = path.with_name(path.name + ".errors.csv")
    last_write = 0.0

    def progress(done: int, total: int) -> None:
        # Into the cache, not the row: the import holds its database connection (inside one transaction,
        # in the middle of a COPY on PostgreSQL), and the page must see progress before that commits.
        nonlocal last_write
        if time.monotonic() - last_write >= PROGRESS_WRITE_SECONDS or done >= total:
            last_write = time.monotonic()
            cache.set(import_progress_key(import_id), (done, total), timeout=24 * 3600)

    fields: dict[str, Any]
    try:
        summary = subscribers_import(
            path=path,
            mailing_list=job.mailing_list,
            options=ImportOptions(**job.options),
            errors_path=errors_path,
            progress=progress,
        )
    except ImportFileInvalid as exc:
        fields = {"status": SubscriberImport.Status.FAILED, "error": exc.message}
    except Exception as exc:  # noqa: BLE001 - the page must say it failed, whatever the cause; the log has the rest
        logger.exception("import %s failed", import_id)
        fields = {"status": SubscriberImport.Status.FAILED, "error": f"The import failed unexpectedly: {exc}"}
    else:
        fields = {
            "status": SubscriberImport.Status.DONE,
            "summary": summary.as_dict(),
            "errors_file": summary.errors_path,
            "bytes_done": path.stat().st_size,
        }
    SubscriberImport.objects.filter(pk=import_id).update(finished_at=timezone.now(), **fields)
    job.refresh_from_db()
    return job
