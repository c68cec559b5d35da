from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from subscribers.models import MailingList
from subscribers.services import subscribers_export_csv


class Command(BaseCommand):
    help = "Export subscribers as CSV: everyone, or one list's with their status on it (list_status)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--list", dest="list_slug", metavar="SLUG", help="Only this list's subscribers.")
        parser.add_argument("--output", default="-", metavar="FILE", help="Where to write; - for stdout (default).")

    def handle(self, *args: Any, list_slug: str | None, output: str, **options: Any) -> None:
        mailing_list = None
        if list_slug is not None:
            mailing_list = MailingList.objects.filter(slug=list_slug).first()
            if mailing_list is None:
                raise CommandError(f"No mailing list with slug '{list_slug}'.")
        blocks = subscribers_export_csv(mailing_list=mailing_list)
        if output == "-":
            for block in blocks:
                self.stdout.write(block, ending="")
            return
        try:
            with open(output, "w", newline="", encoding="utf-8") as stream:
                for block in blocks:
                    stream.write(block)
        except OSError as error:
            raise CommandError(f"Cannot write {output}: {error.strerror}.") from error
        scope = f"list '{list_slug}'" if list_slug else "all subscribers"
        self.stderr.write(f"Exported {scope} to {output}.")
