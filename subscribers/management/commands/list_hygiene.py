from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.exceptions import ApplicationError
from subscribers.models import MailingList
from subscribers.services.hygiene import (
    DEFAULT_CHECKS,
    DEFAULT_INACTIVE_AFTER,
    MX_TIMEOUT_SECONDS,
    HygieneAction,
    HygieneReason,
    list_hygiene_apply,
    list_hygiene_csv,
    list_hygiene_report,
)


class Command(BaseCommand):
    help = (
        "Report subscribers with an invalid, disposable or role address, inactive ones, and (with --mx) those whose "
        "domain receives no mail; with --apply, unsubscribe or suppress them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--list", dest="list_slug", metavar="SLUG", help="Only this list (default: everyone).")
        parser.add_argument(
            "--inactive-after",
            type=int,
            default=DEFAULT_INACTIVE_AFTER,
            metavar="N",
            help=f"Inactive: N campaigns sent since the last open (default {DEFAULT_INACTIVE_AFTER}).",
        )
        parser.add_argument(
            "--min-age",
            type=int,
            default=0,
            metavar="DAYS",
            help="Only subscribers older than this count as inactive (default 0).",
        )
        parser.add_argument("--mx", action="store_true", help="Also check that each domain receives mail (DNS).")
        parser.add_argument(
            "--mx-timeout",
            type=float,
            default=MX_TIMEOUT_SECONDS,
            metavar="SECONDS",
            help=f"Per DNS lookup (default {MX_TIMEOUT_SECONDS:g}).",
        )
        parser.add_argument(
            "--only", metavar="CHECKS", help=f"Comma-separated checks among {','.join(HygieneReason.values)}."
        )
        parser.add_argument(
            "--apply",
            choices=HygieneAction.values,
            help="Unsubscribe (from the list, or from everything) or suppress the flagged ones.",
        )
        parser.add_argument("--output", metavar="FILE", help="Write the flagged rows (email, reasons) as CSV.")

    def handle(self, *args: Any, list_slug: str | None, **options: Any) -> None:
        mailing_list = None
        if list_slug is not None:
            mailing_list = MailingList.objects.filter(slug=list_slug).first()
            if mailing_list is None:
                raise CommandError(f"No mailing list with slug '{list_slug}'.")
        checks = set(DEFAULT_CHECKS)
        if options["only"]:
            checks = {name.strip() for name in options["only"].split(",") if name.strip()}
        if options["mx"]:
            checks.add(HygieneReason.MX)
        try:
            report = list_hygiene_report(
                mailing_list=mailing_list,
                checks=checks,
                inactive_after=options["inactive_after"],
                min_age_days=options["min_age"],
                mx_timeout=options["mx_timeout"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc

        scope = f" of list '{list_slug}'" if list_slug else ""
        self.stdout.write(f"Checked {report.checked:,} subscribers{scope}: {report.flagged_count:,} flagged.")
        for reason in report.checks:
            self.stdout.write(f"  {reason:<11}{report.counts[reason]:>9,}  {HygieneReason(reason).label}")
        if HygieneReason.MX in report.checks and report.mx_unknown:
            self.stdout.write(f"  {report.mx_unknown:,} not checked for mail: their domain's DNS did not answer.")

        if options["output"]:
            try:
                with open(options["output"], "w", newline="", encoding="utf-8") as stream:
                    for block in list_hygiene_csv(report=report):
                        stream.write(block)
            except OSError as error:
                raise CommandError(f"Cannot write {options['output']}: {error.strerror}.") from error
            self.stdout.write(f"Flagged rows written to {options['output']}.")

        action = options["apply"]
        if action is None:
            return
        changed = list_hygiene_apply(report=report, action=action)
        if action == HygieneAction.UNSUBSCRIBE:
            self.stdout.write(
                f"Unsubscribed {changed:,} from " + (f"list '{list_slug}'." if list_slug else "everything.")
            )
        else:
            self.stdout.write(f"Suppressed {changed:,} addresses.")
