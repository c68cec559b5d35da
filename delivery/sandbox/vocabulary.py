"""Names every part of the sandbox shares: the ESPs, the event kinds, and what the simulated mail servers say."""

from __future__ import annotations

from datetime import UTC, datetime

SENDGRID = "sendgrid"
POSTMARK = "postmark"
AMAZON_SES = "amazon_ses"
ESPS = (SENDGRID, POSTMARK, AMAZON_SES)

# Event kinds, named as anymail normalizes them so one vocabulary serves all three ESPs.
DELIVERED = "delivered"
BOUNCED = "bounced"
COMPLAINED = "complained"
OPENED = "opened"
CLICKED = "clicked"

SMTP_OK = "250 2.0.0 OK: queued as sandbox"
SMTP_USER_UNKNOWN = "550 5.1.1 {addr}: Recipient address rejected: User unknown in virtual mailbox table"
SMTP_SUPPRESSED = "550 5.1.1 {addr}: sending suppressed, the address is on the account suppression list"
SANDBOX_IP = "127.0.0.1"
OPEN_USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) SandboxMail/1.0"
FEEDBACK_LOOP_AGENT = "Mailer Sandbox Feedback Loop (1.0)"


def iso_ms(when: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, the way SES and SNS write times."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
