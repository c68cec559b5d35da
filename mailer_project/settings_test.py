"""Test settings: the same settings, with test secrets filled in before they are read."""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key")
os.environ.setdefault("WEBHOOK_SECRET", "mailer:webhook-test-secret,mailer:previous-secret")

from mailer_project.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
