"""Scheduled work lives in the database, never in long Celery ETA/countdown tasks: Redis hands an unacknowledged
task to another worker after its visibility timeout, so a long ETA runs again and again (celery/celery#2599)."""

import ast
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)
APPS = ["core", "delivery", "subscribers", "campaigns", "webhooks", "accounts", "mailer_project"]
LONGEST_COUNTDOWN_SECONDS = 60


def _constant(module: ast.Module, name: str) -> object:
    for node in module.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def test_no_task_is_sent_with_an_eta_or_a_countdown_longer_than_a_minute():
    found = []
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "tests" in path.parts or "migrations" in path.parts:
                continue
            module = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(module):
                if not isinstance(node, ast.Call):
                    continue
                for keyword in node.keywords:
                    if keyword.arg == "eta":
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: eta=")
                    if keyword.arg == "countdown":
                        value = keyword.value
                        seconds = (
                            _constant(module, value.id) if isinstance(value, ast.Name) else ast.literal_eval(value)
                        )
                        if not isinstance(seconds, int | float) or seconds > LONGEST_COUNTDOWN_SECONDS:
                            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: countdown={seconds!r}")
    assert found == []
