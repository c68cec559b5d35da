import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.exceptions import ApplicationError
from subscribers.models import MailingList
from subscribers.services.importing import ImportOptions, subscribers_import


def _mapping(values: list[str]) -> dict[str, str]:
    mapping = {}
    for value in values:
        source, sep, target = value.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise CommandError(f"--map {value!r}: expected 'file column=email|name|attribute'.")
        mapping[source.strip()] = target.strip()
    return mapping


class Command(BaseCommand):
    help = "Import subscribers from a CSV file into a list (email required; name; other columns become attributes)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--list", dest="list_slug", required=True, help="Slug of the list to import into.")
        parser.add_argument("--create-list", action="store_true", help="Create the list if it does not exist.")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--update", action="store_true", help="Merge into existing subscribers (the default).")
        mode.add_argument("--skip-existing", action="store_true", help="Leave existing subscribers as they are.")
        parser.add_argument("--dry-run", action="store_true", help="Report what would change; change nothing.")
        parser.add_argument("--resubscribe", action="store_true", help="Subscribe again people who unsubscribed.")
        parser.add_argument("--encoding", default="utf-8", choices=["utf-8", "latin-1"])
        parser.add_argument("--map", action="append", default=[], metavar="COLUMN=FIELD",
                            help="Rename a column, e.g. --map 'E-mail address=email' (repeatable).")  # fmt: skip
        parser.add_argument("--errors", type=Path, help="Where to write rejected rows (default: FILE.errors.csv).")
        parser.add_argument("--check-dns", action="store_true", help="Also check that each domain receives mail.")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        slug = options["list_slug"]
        mailing_list = MailingList.objects.filter(slug=slug).first()
        if mailing_list is None:
            if not options["create_list"]:
                raise CommandError(f"No list with the slug {slug!r}; create it first or pass --create-list.")
            mailing_list = MailingList.objects.create(slug=slug, name=slug.replace("-", " ").title())
        import_options = ImportOptions(
            update_existing=not options["skip_existing"],
            dry_run=options["dry_run"],
            resubscribe=options["resubscribe"],
            encoding=options["encoding"],
            column_map=_mapping(options["map"]),
            check_deliverability=options["check_dns"],
        )
        errors_path = options["errors"] or path.with_name(path.name + ".errors.csv")
        started = time.monotonic()
        try:
            summary = subscribers_import(
                path=path, mailing_list=mailing_list, options=import_options, errors_path=errors_path,
                progress=self._progress,
            )  # fmt: skip
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        finally:
            sys.stderr.write("\n")
        elapsed = time.monotonic() - started
        rate = summary.rows / elapsed if elapsed else 0
        self.stdout.write(
            ("Dry run, nothing changed: " if summary.dry_run else "")
            + f"{summary.rows:,} rows in {elapsed:.1f} s ({rate:,.0f} rows/s) into '{mailing_list.slug}': "
            f"{summary.created:,} created, {summary.updated:,} updated, {summary.unchanged:,} unchanged, "
            f"{summary.invalid:,} invalid, {summary.duplicate:,} duplicate, {summary.suppressed:,} suppressed; "
            f"{summary.subscribed:,} newly subscribed, {summary.resubscribed:,} resubscribed."
        )
        if summary.errors_path:
            self.stdout.write(f"Rejected rows, with line and reason: {summary.errors_path}")

    def _progress(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\r[{bar:<30}] {share:6.1%} of {total / 1e6:,.1f} MB")
        sys.stderr.flush()
