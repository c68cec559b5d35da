from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from subscribers.models import MailingList
from subscribers.services.optin import optin_confirmations_resend, optin_expired_pending


class Command(BaseCommand):
    help = (
        "Send a fresh confirmation link to pending double opt-in subscriptions whose link has expired "
        "(older than MAILER_OPTIN_EXPIRY_DAYS)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--list", dest="list_slug", metavar="SLUG", help="Only this list's subscriptions.")
        parser.add_argument("--dry-run", action="store_true", help="Only count them; send nothing.")

    def handle(self, *args: Any, list_slug: str | None, dry_run: bool, **options: Any) -> None:
        mailing_list = None
        if list_slug is not None:
            mailing_list = MailingList.objects.filter(slug=list_slug).first()
            if mailing_list is None:
                raise CommandError(f"No mailing list with slug '{list_slug}'.")
        scope = f" on '{list_slug}'" if list_slug else ""
        if dry_run:
            count = optin_expired_pending(mailing_list=mailing_list).count()
            self.stdout.write(f"Dry run, nothing sent: {count} expired confirmation(s){scope} would be re-sent.")
            return
        sent = optin_confirmations_resend(mailing_list=mailing_list)
        self.stdout.write(f"Re-sent {sent} expired confirmation(s){scope}.")
