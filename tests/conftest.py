"""A real Celery worker for the end-to-end tests, on the same database and broker as the test process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """The URL of the database this test process is using (the test database, not the configured one)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def _purge_broker() -> None:
    from mailer_project.celery import app

    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        for item in folder.glob("*"):
            item.unlink()
    else:
        app.control.purge()


@pytest.fixture
def celery_worker_process(live_server, sandbox_with_webhooks) -> Iterator[subprocess.Popen]:
    """`celery worker` in its own process (prefork, 2 children), sending to the sandbox."""
    _purge_broker()
    # Flags left by earlier tests (for example "an apply task is queued", whose task was just purged).
    cache.clear()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mailer_project.settings_test",
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "ESP_SANDBOX_URL": sandbox_with_webhooks.url,
        "MAILER_BASE_URL": live_server.url,
        "MAILER_LIMITS_KEY_PREFIX": settings.MAILER_LIMITS_KEY_PREFIX,
    }
    log_path = ROOT / "var" / "test-worker.log"
    log = log_path.open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "mailer_project", "worker", "-P", "prefork", "-c", "2",
         "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield worker
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """Poll a condition with a deadline (no fixed sleeps); the message says what was being waited for."""

    def wait(condition: Callable[[], bool], *, timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{_diagnosis()}")

    return wait


def _diagnosis() -> str:
    """What the database and the worker were doing, to read when a wait times out."""
    from django.db.models import Count

    from delivery.models import Message
    from webhooks.models import EspEvent

    messages = dict(Message.objects.values_list("status").annotate(n=Count("pk")).values_list("status", "n"))
    events = list(
        EspEvent.objects.values_list("event_type", "outcome")
        .annotate(n=Count("pk"))
        .values_list("event_type", "outcome", "n")
    )
    log_path = ROOT / "var" / "test-worker.log"
    log = log_path.read_text()[-4000:] if log_path.exists() else ""
    return f"messages by status: {messages}\nevents (type, outcome, count): {events}\n--- worker log tail ---\n{log}"
