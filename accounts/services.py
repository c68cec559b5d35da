"""accounts: people and keys that may use Mailer. For now, the admin login that `make run` creates."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction


@transaction.atomic
def admin_login_ensure(*, username: str, password_file: Path) -> tuple[str, str, bool]:
    """Create the superuser once with a random password kept in `password_file` (under var/, never in git).

    Returns (username, password, created). If the user exists and the file is gone, the password is unknown
    and reported as such rather than reset behind the operator's back.
    """
    user_model = get_user_model()
    if user_model.objects.filter(username=username).exists():
        password = password_file.read_text().strip() if password_file.exists() else "(unchanged; set before)"
        return username, password, False
    password = secrets.token_urlsafe(12)
    user_model.objects.create_superuser(username=username, email=f"{username}@localhost", password=password)
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    return username, password, True
