"""Test settings: the same settings, with test secrets filled in before they are read."""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key")
os.environ.setdefault("WEBHOOK_SECRET", "mailer:webhook-test-secret,mailer:previous-secret")
# The tests' own broker and cache folders, so that a `make run` on the same checkout cannot take their tasks.
_var = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "var")
os.environ.setdefault("MAILER_BROKER_DIR", os.path.join(_var, "test-broker"))
os.environ.setdefault("MAILER_CACHE_DIR", os.path.join(_var, "test-cache"))
os.environ.setdefault("MAILER_LIMITS_FILE", os.path.join(_var, "test-limits-state.sqlite3"))

from mailer_project.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
