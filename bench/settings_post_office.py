"""Bench-only settings: the project's settings plus django-post-office, for bench/dispatch.py's baseline.

The environment picks its backend and sending knobs (bench/dispatch.py sets them): BENCH_PO_BACKEND (an
anymail backend path), BENCH_PO_THREADS (threads per sending process), BENCH_PO_BATCH (emails per batch).
"""

import os

from mailer_project.settings import *  # noqa: F403
from mailer_project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "post_office"]

POST_OFFICE = {
    "BACKENDS": {"default": os.environ.get("BENCH_PO_BACKEND", "anymail.backends.postmark.EmailBackend")},
    "THREADS_PER_PROCESS": int(os.environ.get("BENCH_PO_THREADS", "16")),
    "BATCH_SIZE": int(os.environ.get("BENCH_PO_BATCH", "1000")),
    "CELERY_ENABLED": False,
    "MESSAGE_ID_ENABLED": True,
}
