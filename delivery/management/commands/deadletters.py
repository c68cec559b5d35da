from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.exceptions import ApplicationError
from delivery.services import deadletters_list, deadletters_purge, deadletters_retry

ERROR_WIDTH = 60


class Command(BaseCommand):
    help = (
        "The dead-letter list: messages the engine gave up on after MAILER_MAX_ATTEMPTS retryable failures. "
        "List them, retry them (back to the queue with fresh attempts), or purge old ones (they end failed; "
        "no message row is deleted)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="list|retry|purge")

        listing = actions.add_parser("list", help="Show dead messages, the most recently given up first.")
        listing.add_argument("--mailing", type=int, metavar="ID", help="Only this mailing's.")
        listing.add_argument("--limit", type=int, default=50, metavar="N", help="Show at most N (default 50).")

        retry = actions.add_parser("retry", help="Put dead messages back in the queue and start sending them.")
        scope = retry.add_mutually_exclusive_group()
        scope.add_argument("--mailing", type=int, metavar="ID", help="Every dead message of this mailing.")
        scope.add_argument(
            "--id", dest="ids", type=int, nargs="+", action="extend", metavar="ID", help="These messages."
        )
        scope.add_argument("--all", dest="all_dead", action="store_true", help="Every dead message.")

        purge = actions.add_parser("purge", help="Discard (end failed) messages dead for longer than DAYS.")
        purge.add_argument("--older-than", dest="older_than", type=int, required=True, metavar="DAYS")
        purge.add_argument("--yes", action="store_true", help="Do it; without it, only count them.")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        try:
            getattr(self, f"_{action}")(**options)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc

    def _list(self, *, mailing: int | None, limit: int, **options: Any) -> None:
        if limit < 1:
            raise CommandError(f"--limit must be at least 1, not {limit}.")
        dead = deadletters_list(mailing_id=mailing)
        total = dead.count()
        scope = f" in mailing {mailing}" if mailing is not None else ""
        if total == 0:
            self.stdout.write(f"No dead letters{scope}.")
            return
        rows = [
            (str(m.pk), m.to_email, str(m.mailing_id), str(m.attempts), _one_line(m.last_error)) for m in dead[:limit]
        ]
        header = ("id", "to", "mailing", "attempts", "last error")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.stdout.write("  ".join([*cells, row[-1]]))
        shown = f"showing {len(rows)} of {total}" if len(rows) < total else f"{total}"
        self.stdout.write(f"Dead letters{scope}: {shown}.")

    def _retry(self, *, mailing: int | None, ids: list[int] | None, all_dead: bool, **options: Any) -> None:
        if mailing is None and not ids and not all_dead:
            raise CommandError("Say which dead letters to retry: --mailing ID, --id ID [ID ...], or --all.")
        result = deadletters_retry(message_ids=ids or None, mailing_id=mailing, all_dead=all_dead)
        text = f"Requeued {result.requeued} dead letter(s)"
        if result.mailing_ids:
            text += f"; sending started for mailing(s) {', '.join(str(pk) for pk in result.mailing_ids)}"
        self.stdout.write(text + ".")
        if result.suppressed:
            self.stdout.write(
                f"{result.suppressed} ended suppressed instead: their address is on the suppression list."
            )
        if ids:
            untouched = len(set(ids)) - result.requeued - result.suppressed
            if untouched:
                self.stdout.write(f"{untouched} of the given id(s) were not dead; left as they are.")

    def _purge(self, *, older_than: int, yes: bool, **options: Any) -> None:
        if not yes:
            count = deadletters_list(older_than_days=older_than).count()
            self.stdout.write(
                f"{count} dead letter(s) older than {older_than} day(s) would be discarded (ended failed; "
                "no row is deleted). Run again with --yes to do it."
            )
            return
        count = deadletters_purge(older_than_days=older_than)
        self.stdout.write(f"Discarded {count} dead letter(s) older than {older_than} day(s); they are kept as failed.")


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= ERROR_WIDTH else flat[: ERROR_WIDTH - 1] + "…"
