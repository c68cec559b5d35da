"""`manage.py run_sandbox`: the ESP sandbox in the foreground, for the embedded setup and manual testing."""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from delivery.sandbox import SandboxServer


def _auth_pair(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise CommandError("--webhook-auth must look like user:password")
    return user, password


class Command(BaseCommand):
    help = (
        "Run a local stand-in for SendGrid, Postmark and Amazon SES that anymail's real backends can send "
        "to, and that posts tracking webhooks back to this app."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_event = threading.Event()  # set by tests (or anything embedding the command) to return

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8025)
        parser.add_argument(
            "--webhook-url",
            default="http://127.0.0.1:8000",
            help="Base URL of this app; events go to <url>/webhooks/<esp>/tracking/. Empty: post nothing.",
        )
        parser.add_argument(
            "--webhook-auth",
            default=None,
            help="user:password for the webhooks' basic auth (default: first of MAILER_WEBHOOK_SECRETS).",
        )
        parser.add_argument("--open-rate", type=float, default=0.3)
        parser.add_argument("--click-rate", type=float, default=0.1)
        parser.add_argument("--latency-ms", type=float, default=0)
        parser.add_argument("--webhook-delay-ms", type=float, default=0)
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument(
            "--simulate-domain",
            dest="simulate_domains",
            action="append",
            default=[],
            help="Apply the bounce@/complaint@ address rules at this domain too (repeatable).",
        )

    def build_server(self, options: dict[str, Any]) -> SandboxServer:
        auth = options.get("webhook_auth")
        if auth is None:
            secrets = getattr(settings, "MAILER_WEBHOOK_SECRETS", None) or []
            auth = secrets[0] if secrets else None
        try:
            return SandboxServer(
                host=options["host"],
                port=options["port"],
                webhook_url=options["webhook_url"] or None,
                webhook_auth=_auth_pair(auth) if auth else None,
                open_rate=options["open_rate"],
                click_rate=options["click_rate"],
                latency_ms=options["latency_ms"],
                webhook_delay_ms=options["webhook_delay_ms"],
                simulate_domains=options["simulate_domains"],
                seed=options["seed"],
            )
        except (TypeError, ValueError) as err:
            raise CommandError(str(err)) from err

    def handle(self, *args: Any, **options: Any) -> None:
        server = self.build_server(options)
        try:
            server.start()
        except OSError as err:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {err}") from err
        config = server.config
        lines = [
            f"ESP sandbox listening on {server.url}  (inbox: {server.url}/)",
            f"  SENDGRID_API_URL = {server.sendgrid_api_url}",
            f"  POSTMARK_API_URL = {server.postmark_api_url}",
            f"  AMAZON_SES_CLIENT_PARAMS endpoint_url = {server.ses_endpoint_url}",
        ]
        if config["webhook_url"]:
            user = config["webhook_auth"][0] if config["webhook_auth"] else None
            lines.append(
                f"  webhooks -> {config['webhook_url']}/webhooks/<esp>/tracking/"
                + (f" (basic auth as {user})" if user else " (no auth)")
            )
        else:
            lines.append("  webhooks: off")
        lines.append("Quit with CONTROL-C.")
        self.stdout.write("\n".join(lines))
        try:
            self.stop_event.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
