"""What an ESP event means for us, per ESP: the vendor differences live here, in tables, and nowhere else.

anymail normalizes each ESP's events to one vocabulary (delivered, bounced, complained, opened ...), but it is too
coarse to act on: it calls a mailbox-full bounce and a non-existent address both `bounced`, Postmark's transient
bounce `deferred`, and SES's list-management unsubscribes `unknown`. `event_effect` reads the ESP's own fields where
they decide, from the tables below; docs/WEBHOOKS.md ("What each event does") gives the reasoning for each entry.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any


class Effect(StrEnum):
    """What applying an event does (webhooks.services)."""

    DELIVERED = "delivered"
    HARD_BOUNCE = "hard_bounce"  # the address is bad: suppress it at once
    SOFT_BOUNCE = "soft_bounce"  # not delivered this time: counted; enough of them in a window suppress
    COMPLAINT = "complaint"  # suppress, and unsubscribe from every list
    UNSUBSCRIBE = "unsubscribe"  # from every list
    LIST_UNSUBSCRIBE = "list_unsubscribe"  # from the lists the mailing went to (a group or topic opt-out)
    OPEN = "open"
    CLICK = "click"
    FAILED = "failed"  # the ESP did not send it, for a reason that says nothing about the address
    NONE = "none"  # stored, changes nothing: queued, sent, deferred, autoresponded, subscribed, unknown ...


# anymail's event_type -> effect, where the ESP's own fields (below) do not decide otherwise.
EFFECT_BY_EVENT_TYPE: dict[str, Effect] = {
    "delivered": Effect.DELIVERED,
    "bounced": Effect.SOFT_BOUNCE,  # hard only where the ESP says the failure is permanent
    "complained": Effect.COMPLAINT,
    "unsubscribed": Effect.UNSUBSCRIBE,
    "opened": Effect.OPEN,
    "clicked": Effect.CLICK,
    "rejected": Effect.FAILED,
    "failed": Effect.FAILED,
}
# anymail's reject_reason of a `rejected` event (SendGrid `dropped`) that condemns the address.
HARD_REJECT_REASONS = {"bounced", "invalid"}

# SendGrid: a `bounce` event's `type`. A block is the receiver refusing the sender, not a bad address.
SENDGRID_BOUNCE_TYPES: dict[str, Effect] = {"bounce": Effect.HARD_BOUNCE, "blocked": Effect.SOFT_BOUNCE}
# SendGrid `event` values that anymail flattens: a group (ASM) unsubscribe leaves only that kind of mail.
SENDGRID_EVENTS: dict[str, Effect] = {"group_unsubscribe": Effect.LIST_UNSUBSCRIBE}

# Amazon SES: a Bounce's `bounceType`. Transient and Undetermined are never hard, whatever anymail calls them.
SES_BOUNCE_TYPES: dict[str, Effect] = {
    "Permanent": Effect.HARD_BOUNCE,
    "Transient": Effect.SOFT_BOUNCE,
    "Undetermined": Effect.SOFT_BOUNCE,
}

# Postmark: the `Type` of a Bounce (or SpamComplaint) record, from Postmark's bounce-type list. Types not listed
# follow anymail's type: AutoResponder, AddressChange, ChallengeVerification (autoresponded), OpenRelayTest and
# DnsError (deferred), Unknown and Subscribe change nothing.
POSTMARK_BOUNCE_TYPES: dict[str, Effect] = {
    "HardBounce": Effect.HARD_BOUNCE,  # unknown user, mailbox not found
    "BadEmailAddress": Effect.HARD_BOUNCE,  # not a valid address
    "ManuallyDeactivated": Effect.HARD_BOUNCE,  # deactivated on Postmark's side: it will not send there again
    "SpamNotification": Effect.HARD_BOUNCE,  # the receiving side refuses our mail to this address
    "SoftBounce": Effect.SOFT_BOUNCE,  # mailbox full, over quota
    "Transient": Effect.SOFT_BOUNCE,  # "message delayed / undeliverable" (anymail: deferred)
    "Blocked": Effect.SOFT_BOUNCE,  # the receiver blocked the sender: counted like SendGrid's blocks
    "SpamComplaint": Effect.COMPLAINT,
    "Unsubscribe": Effect.UNSUBSCRIBE,  # an unsubscribe or remove request came back as a reply
    "DMARCPolicy": Effect.FAILED,  # our domain's DMARC failed: not the recipient's doing
    "Unconfirmed": Effect.FAILED,
    "SMTPApiError": Effect.FAILED,
    "TemplateRenderingFailed": Effect.FAILED,
    "VirusNotification": Effect.NONE,  # a virus warning about the message, nothing about the address
}
# Postmark: a SubscriptionChange record with SuppressSending true, by its `SuppressionReason`.
POSTMARK_SUPPRESSION_REASONS: dict[str, Effect] = {
    "HardBounce": Effect.HARD_BOUNCE,
    "SpamComplaint": Effect.COMPLAINT,
    "ManualSuppression": Effect.UNSUBSCRIBE,  # the recipient used Postmark's unsubscribe link, or the sender did
}


def _sendgrid_effect(event_type: str, esp_event: dict[str, Any]) -> Effect | None:
    if event_type == "bounced":
        return SENDGRID_BOUNCE_TYPES.get(str(esp_event.get("type", "bounce")), Effect.SOFT_BOUNCE)
    return SENDGRID_EVENTS.get(str(esp_event.get("event", "")))


def _ses_effect(event_type: str, esp_event: dict[str, Any]) -> Effect | None:
    if event_type == "bounced":
        bounce = esp_event.get("bounce")
        kind = bounce.get("bounceType") if isinstance(bounce, dict) else None
        return SES_BOUNCE_TYPES.get(str(kind), Effect.SOFT_BOUNCE)
    if esp_event.get("eventType") == "Subscription":  # list management (anymail: unknown)
        subscription = esp_event.get("subscription")
        preferences = subscription.get("newTopicPreferences") if isinstance(subscription, dict) else None
        if not isinstance(preferences, dict):
            return Effect.NONE
        if preferences.get("unsubscribeAll") is True:
            return Effect.UNSUBSCRIBE
        topics = preferences.get("topicSubscriptionStatus")
        topics = topics if isinstance(topics, list) else []
        if any(isinstance(t, dict) and t.get("subscriptionStatus") == "OptOut" for t in topics):
            return Effect.LIST_UNSUBSCRIBE
        return Effect.NONE
    return None


def _postmark_effect(event_type: str, esp_event: dict[str, Any]) -> Effect | None:
    record = esp_event.get("RecordType")
    if record in ("Bounce", "SpamComplaint"):
        return POSTMARK_BOUNCE_TYPES.get(str(esp_event.get("Type")))
    if record == "SubscriptionChange":
        if esp_event.get("SuppressSending") is not True:
            return Effect.NONE  # reactivated: consent comes back through our own pages, not an ESP's flag
        return POSTMARK_SUPPRESSION_REASONS.get(str(esp_event.get("SuppressionReason")), Effect.UNSUBSCRIBE)
    return None


_ESP_EFFECT = {"sendgrid": _sendgrid_effect, "amazon_ses": _ses_effect, "postmark": _postmark_effect}


def event_effect(
    *, esp: str, event_type: str, esp_event: dict[str, Any], reject_reason: str | None = None, is_hard: bool = False
) -> Effect:
    """What to do with an event: the ESP's own fields first, then anymail's event_type.

    `esp_event` may be a stored payload cut short ({"truncated": ...}): then anymail's type decides, with
    `is_hard` (the flag stored with the event) or `reject_reason` telling a hard bounce from a soft one.
    """
    refine = _ESP_EFFECT.get(esp)
    readable = isinstance(esp_event, dict) and esp_event.get("truncated") is not True
    effect = refine(event_type, esp_event) if refine is not None and readable else None
    if effect is not None:
        return effect
    if event_type in ("bounced", "rejected") and (is_hard or reject_reason in HARD_REJECT_REASONS):
        return Effect.HARD_BOUNCE
    return EFFECT_BY_EVENT_TYPE.get(event_type, Effect.NONE)


def is_hard_bounce(esp: str, event_type: str, esp_event: dict[str, Any], reject_reason: str | None) -> bool:
    """Whether the address must not be mailed again: only a permanent failure (see event_effect)."""
    return event_effect(esp=esp, event_type=event_type, esp_event=esp_event, reject_reason=reject_reason) == (
        Effect.HARD_BOUNCE
    )


# Machine opens: an open that a program made, not a person. Stored, flagged, never counted as engagement.
# SendGrid flags the opens it attributes to Apple's Mail Privacy Protection on the event itself.
MACHINE_OPEN_FLAGS: dict[str, str] = {"sendgrid": "sg_machine_open"}
# Apple's privacy proxy fetches the images of every message as it arrives, with this exact user agent and nothing
# more (ua-parser/uap-core#509); a person's Apple Mail sends its full version string.
APPLE_PRIVACY_PROXY_AGENTS = {"Mozilla/5.0"}
# Security scanners and link checkers that fetch a message's images (lower-case parts of their user agents).
SCANNER_AGENT_PARTS = (
    "barracuda",
    "mimecast",
    "proofpoint",
    "messagelabs",
    "symantec",
    "trendmicro",
    "fortiguard",
    "ironport",
    "bingpreview",
    "headlesschrome",
    "python-requests",
    "go-http-client",
    "curl/",
    "wget/",
    "okhttp",
    "libwww-perl",
)


def is_machine_open(
    *, esp: str, esp_event: dict[str, Any], user_agent: str, seconds_after_delivery: float | None, window: float
) -> bool:
    """Whether an open was a machine's: the ESP says so, the user agent is Apple's privacy proxy or a known
    scanner, or it came within `window` seconds of the delivery (before any person could have opened it: a
    scanner or a proxy fetching the images on arrival; either side of the delivery, as ESP clocks differ)."""
    flag = MACHINE_OPEN_FLAGS.get(esp)
    if flag and isinstance(esp_event, dict) and esp_event.get(flag) is True:
        return True
    agent = user_agent.strip()
    if agent in APPLE_PRIVACY_PROXY_AGENTS:
        return True
    lowered = agent.lower()
    if any(part in lowered for part in SCANNER_AGENT_PARTS):
        return True
    return seconds_after_delivery is not None and abs(seconds_after_delivery) <= window


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
