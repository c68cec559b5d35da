"""What an ESP event means for us, per ESP: the vendor differences live here, in tables, and nowhere else."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Postmark bounce types after which the address must not be mailed again.
POSTMARK_HARD_BOUNCE_TYPES = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "SpamNotification"}


def is_hard_bounce(esp: str, event_type: str, esp_event: dict[str, Any], reject_reason: str | None) -> bool:
    """anymail calls many things `bounced`; only a permanent failure may suppress an address.

    SES `Transient` and `Undetermined` are not hard whatever anymail calls them; SendGrid `blocked` is a
    reputation block, not a bad address; a SendGrid `dropped` for a bounced address is hard.
    """
    if event_type == "rejected":
        return reject_reason in ("bounced", "invalid")
    if event_type != "bounced":
        return False
    if esp == "amazon_ses":
        return (esp_event.get("bounce") or {}).get("bounceType") == "Permanent"
    if esp == "sendgrid":
        return esp_event.get("type", "bounce") == "bounce"
    if esp == "postmark":
        return esp_event.get("Type") in POSTMARK_HARD_BOUNCE_TYPES
    return False


def dedupe_key(
    esp: str,
    event_id: str | None,
    event_type: str,
    recipient: str,
    message_id: str | None,
    timestamp: str,
    esp_event: dict[str, Any],
) -> str:
    """A key that is the same each time an ESP repeats an event and differs between distinct events.

    anymail's event_id alone is not that: SES gives every recipient of one notification the same id, and
    Postmark gives ids only to bounces and complaints.
    """
    if esp == "sendgrid" and event_id:
        return f"sg:{event_id}"
    if esp == "amazon_ses" and event_id:
        return f"ses:{event_id}:{recipient}:{event_type}"
    if esp == "postmark" and event_id:
        return f"pm:{event_id}:{event_type}"
    basis = json.dumps(
        [
            esp,
            message_id or "",
            event_type,
            recipient,
            timestamp,
            esp_event.get("url") or esp_event.get("OriginalLink"),
        ],
        sort_keys=True,
        default=str,
    )
    return "h:" + hashlib.sha256(basis.encode()).hexdigest()
