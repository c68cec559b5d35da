from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from subscribers.models import MailingList, Segment
from subscribers.segments import SegmentRuleInvalid, segment_subscribers
from subscribers.services import subscribers_export_csv


class Command(BaseCommand):
    help = (
        "Export subscribers as CSV: everyone, one list's with their status on it (list_status), or those a "
        "segment matches (within the list, when both are given)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--list", dest="list_slug", metavar="SLUG", help="Only this list's subscribers.")
        parser.add_argument("--segment", metavar="NAME", help="Only the subscribers this saved segment matches.")
        parser.add_argument("--output", default="-", metavar="FILE", help="Where to write; - for stdout (default).")

    def handle(self, *args: Any, list_slug: str | None, segment: str | None, output: str, **options: Any) -> None:
        mailing_list = None
        if list_slug is not None:
            mailing_list = MailingList.objects.filter(slug=list_slug).first()
            if mailing_list is None:
                raise CommandError(f"No mailing list with slug '{list_slug}'.")
        matching = None
        if segment is not None:
            saved = Segment.objects.filter(name=segment).first()
            if saved is None:
                raise CommandError(f"No segment named '{segment}'.")
            try:
                matching = segment_subscribers(saved.rules)
            except SegmentRuleInvalid as exc:
                raise CommandError(f"Segment '{segment}': {exc.message}") from exc
        blocks = subscribers_export_csv(mailing_list=mailing_list, subscribers=matching)
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
        scope = (
            " of ".join(
                part
                for part in (f"segment '{segment}'" if segment else "", f"list '{list_slug}'" if list_slug else "")
                if part
            )
            or "all subscribers"
        )
        self.stderr.write(f"Exported {scope} to {output}.")
