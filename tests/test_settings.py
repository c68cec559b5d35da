"""Start-up from the environment: production refuses to start without its secrets, and says which."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _start(**env: str) -> subprocess.CompletedProcess:
    unset = {"SECRET_KEY", "WEBHOOK_SECRET", "DEBUG", "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL"}
    clean = {k: v for k, v in os.environ.items() if k not in unset}
    clean.update(env, DJANGO_SETTINGS_MODULE="mailer_project.settings")
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.DATABASES['default']['ENGINE'])"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("env", "missing"),
    [({"DEBUG": "false"}, "SECRET_KEY"), ({"DEBUG": "false", "SECRET_KEY": "s3cret"}, "WEBHOOK_SECRET")],
)
def test_production_without_a_secret_stops_with_one_line_naming_it(env, missing):
    result = _start(**env)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"Configuration error: the environment variable {missing} must be set when DEBUG is off."]


def test_production_starts_with_its_secrets():
    result = _start(DEBUG="false", SECRET_KEY="s3cret", WEBHOOK_SECRET="esp:pw")

    assert result.returncode == 0, result.stderr


def test_development_starts_with_nothing_set_on_sqlite():
    result = _start(DEBUG="true")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "django.db.backends.sqlite3"
