"""Tracking webhooks in each ESP's own wire format: which builder makes each ESP's payloads and headers.

The builders live in each ESP's module and are gathered here. They are pure functions of a stored message so
their shapes can be checked without a network.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .messages import SandboxMessage
from .postmark import WEBHOOK_HEADERS as POSTMARK_WEBHOOK_HEADERS
from .postmark import postmark_event
from .sendgrid import WEBHOOK_HEADERS as SENDGRID_WEBHOOK_HEADERS
from .sendgrid import sendgrid_event, sendgrid_smtp_id
from .ses_events import SNS_TOPIC_ARN, ses_event, sns_headers, sns_notification
from .vocabulary import AMAZON_SES, POSTMARK, SENDGRID

__all__ = [
    "SNS_TOPIC_ARN",
    "build_payload",
    "postmark_event",
    "sendgrid_event",
    "sendgrid_smtp_id",
    "ses_event",
    "sns_notification",
    "webhook_headers",
]


def build_payload(
    msg: SandboxMessage, kind: str, *, when: datetime, url: str | None = None, suppressed: bool = False
) -> dict[str, Any]:
    """The unit each ESP posts: a SendGrid event (batched later), a Postmark record, or an SNS envelope."""
    if msg.esp == SENDGRID:
        return sendgrid_event(msg, kind, when=when, url=url, suppressed=suppressed)
    if msg.esp == POSTMARK:
        return postmark_event(msg, kind, when=when, url=url, suppressed=suppressed)
    if msg.esp == AMAZON_SES:
        return sns_notification(ses_event(msg, kind, when=when, url=url, suppressed=suppressed), when=when)
    raise ValueError(f"unknown esp {msg.esp!r}")


def webhook_headers(esp: str, payload: Any) -> dict[str, str]:
    """The headers each ESP sends with a webhook POST of `payload` (a SendGrid batch, or one payload)."""
    if esp == AMAZON_SES:
        return sns_headers(payload)
    return dict(SENDGRID_WEBHOOK_HEADERS if esp == SENDGRID else POSTMARK_WEBHOOK_HEADERS)
