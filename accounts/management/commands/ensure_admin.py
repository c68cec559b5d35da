from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from accounts.services import admin_login_ensure


class Command(BaseCommand):
    help = "Create an admin login with a random password (kept in var/admin-password) and print it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, **options: Any) -> None:
        password_file = Path(settings.BASE_DIR) / "var" / "admin-password"
        username, password, created = admin_login_ensure(username=options["username"], password_file=password_file)
        self.stdout.write(f"Admin login: {username} / {password}" + (" (new)" if created else ""))
