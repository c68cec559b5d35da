import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.exceptions import ApplicationError
from subscribers.services import subscriber_data_export, subscriber_erase, subscriber_get_by_email


class Command(BaseCommand):
    help = "A subscriber's privacy request: export everything held about them as JSON, or erase them."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{export,erase}")
        export = actions.add_parser("export", help="Write everything held about the subscriber as JSON.")
        export.add_argument("email")
        export.add_argument("--output", default="-", metavar="FILE", help="Where to write; - for stdout (default).")
        erase = actions.add_parser("erase", help="Erase the subscriber; only the hash of the address is kept.")
        erase.add_argument("email")
        erase.add_argument("--yes", action="store_true", help="Confirm: erasure cannot be undone.")

    def handle(self, *args: Any, action: str, email: str, **options: Any) -> None:
        try:
            subscriber = subscriber_get_by_email(email=email)
            if action == "export":
                self._export(subscriber_data_export(subscriber=subscriber), options["output"])
            else:
                if not options["yes"]:
                    raise CommandError(f"Erasing {subscriber.email} cannot be undone; add --yes to go ahead.")
                result = subscriber_erase(subscriber=subscriber, source="command:subscriber_privacy")
                self.stdout.write(f"Erased {subscriber.email}: {result.describe()}.")
        except ApplicationError as error:
            raise CommandError(error.message) from error

    def _export(self, data: dict[str, Any], output: str) -> None:
        text = json.dumps(data, indent=2, ensure_ascii=False)
        if output == "-":
            self.stdout.write(text)
            return
        try:
            with open(output, "w", encoding="utf-8") as stream:
                stream.write(text + "\n")
        except OSError as error:
            raise CommandError(f"Cannot write {output}: {error.strerror}.") from error
        self.stderr.write(f"Exported {data['profile']['email']} to {output}.")
