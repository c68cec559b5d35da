"""SendGrid v3: `mail/send` as SendGrid answers it (validation, limits, error shapes) and its Event Webhook."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .faults import fault_message
from .http import Reply, json_reply
from .messages import SandboxMessage, now
from .vocabulary import (
    BOUNCED,
    CLICKED,
    COMPLAINED,
    DELIVERED,
    OPEN_USER_AGENT,
    OPENED,
    SANDBOX_IP,
    SENDGRID,
    SMTP_OK,
    SMTP_SUPPRESSED,
    SMTP_USER_UNKNOWN,
)

SENDGRID_MAX_PERSONALIZATIONS = 1000
SENDGRID_MAX_RECIPIENTS = 1000
WEBHOOK_HEADERS = {"Content-Type": "application/json", "User-Agent": "SendGrid Event API"}


# --- error shapes


def _sendgrid_error(status: int, message: str, field_name: str | None = None) -> Reply:
    headers: dict[str, str] = {}
    if status == 429:
        headers = {
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time()) + 1),
        }
    return json_reply(status, {"errors": [{"message": message, "field": field_name, "help": None}]}, headers)


def check_auth(headers: Mapping[str, str]) -> Reply | None:
    """SendGrid's refusal for a missing bearer token; any token is accepted."""
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _sendgrid_error(401, "The provided authorization grant is invalid, expired, or revoked")
    return None


def fault_reply(status: int) -> Reply:
    return _sendgrid_error(status, fault_message(status))


def bad_json_reply() -> Reply:
    return _sendgrid_error(400, "Bad Request: the body is not valid JSON")


# --- mail/send


def _sendgrid_validate(data: Any) -> tuple[str, str | None] | None:
    """The first problem SendGrid would answer 400 for, as (message, field)."""
    if not isinstance(data, dict):
        return "Bad Request", None
    personalizations = data.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        return "You must have at least one personalization.", "personalizations"
    if len(personalizations) > SENDGRID_MAX_PERSONALIZATIONS:
        return (
            f"At most {SENDGRID_MAX_PERSONALIZATIONS} personalizations are allowed per request;"
            f" this request has {len(personalizations)}.",
            "personalizations",
        )
    sender = data.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        return "The from object must be provided for every email send.", "from.email"
    seen: set[str] = set()
    for i, personalization in enumerate(personalizations):
        if not isinstance(personalization, dict) or not personalization.get("to"):
            return (
                "Every personalization needs a to array with at least one address.",
                f"personalizations.{i}.to",
            )
        for kind in ("to", "cc", "bcc"):
            for j, recipient in enumerate(personalization.get(kind) or []):
                addr = recipient.get("email") if isinstance(recipient, dict) else None
                if not isinstance(addr, str) or "@" not in addr:
                    return "Does not contain a valid address.", f"personalizations.{i}.{kind}.{j}.email"
                if addr.lower() in seen:
                    return (
                        f"Each address may appear only once across the personalizations; {addr} is repeated.",
                        f"personalizations.{i}.{kind}",
                    )
                seen.add(addr.lower())
    if len(seen) > SENDGRID_MAX_RECIPIENTS:
        return (
            f"At most {SENDGRID_MAX_RECIPIENTS} recipients (to + cc + bcc) are allowed per request.",
            "personalizations",
        )
    template_id = data.get("template_id")
    content = data.get("content")
    if not template_id:
        if not isinstance(content, list) or not content:
            return "Unless a valid template_id is provided, the content parameter is required.", "content"
        for j, block in enumerate(content):
            if not isinstance(block, dict) or not block.get("value"):
                return (
                    "The content value must be a string at least one character in length.",
                    f"content.{j}.value",
                )
        if not data.get("subject") and not all(p.get("subject") for p in personalizations):
            return (
                "The subject is required unless a template or every personalization provides one.",
                "subject",
            )
    return None


def _substitute(text: str | None, substitutions: Mapping[str, Any]) -> str | None:
    if text is None:
        return None
    for key, value in substitutions.items():
        text = text.replace(key, "" if value is None else str(value))
    return text


def mail_send(data: Any) -> tuple[Reply, list[SandboxMessage]]:
    error = _sendgrid_validate(data)
    if error is not None:
        return _sendgrid_error(400, error[0], error[1]), []
    call_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    received_at = now()
    content = data.get("content") or []
    text = next((c.get("value") for c in content if c.get("type") == "text/plain"), None)
    html_body = next((c.get("value") for c in content if c.get("type") == "text/html"), None)
    from_email = data["from"]["email"]
    categories = [c for c in data.get("categories") or [] if isinstance(c, str)]
    top = {k: v for k, v in data.items() if k != "personalizations"}
    messages = []
    for personalization in data["personalizations"]:
        substitutions = personalization.get("substitutions") or {}
        args = {**(data.get("custom_args") or {}), **(personalization.get("custom_args") or {})}
        esp_message_id = args.pop("anymail_id", None) or sendgrid_smtp_id(call_id)
        recipients = [
            r["email"] for kind in ("to", "cc", "bcc") for r in personalization.get(kind) or [] if isinstance(r, dict)
        ]
        headers = {**(data.get("headers") or {}), **(personalization.get("headers") or {})}
        subject = personalization.get("subject", data.get("subject", ""))
        raw = {**top, "personalizations": [personalization]}
        for addr in recipients:
            messages.append(
                SandboxMessage(
                    id=0,
                    esp=SENDGRID,
                    esp_message_id=esp_message_id,
                    from_email=from_email,
                    to=[addr],
                    subject=_substitute(subject, substitutions) or "",
                    html=_substitute(html_body, substitutions),
                    text=_substitute(text, substitutions),
                    headers=dict(headers),
                    metadata=dict(args),
                    received_at=received_at,
                    raw=raw,
                    tags=list(categories),
                    destination=list(recipients),
                    call_id=call_id,
                )
            )
    return (202, b"", {"X-Message-Id": call_id}), messages


# --- the Event Webhook


def _url_token(nbytes: int = 16) -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes[:nbytes]).rstrip(b"=").decode()


def sendgrid_smtp_id(call_id: str) -> str:
    """SendGrid's `smtp-id` for one mail/send call; also the message id when anymail sent no anymail_id."""
    return f"<{call_id}@sandbox.sendgrid.net>"


def sendgrid_event(
    msg: SandboxMessage, kind: str, *, when: datetime, url: str | None = None, suppressed: bool = False
) -> dict[str, Any]:
    """One SendGrid Event Webhook object.

    Custom args are flattened into the event, as SendGrid does; only keys anymail knows as SendGrid's own are
    added next to them, so anymail's "everything else is metadata" rule recovers exactly what was sent.
    """
    smtp_id = sendgrid_smtp_id(msg.call_id)
    event: dict[str, Any] = dict(msg.metadata)
    event.update(
        {
            "email": msg.to[0],
            "timestamp": int(when.timestamp()),
            "smtp-id": smtp_id,
            "sg_event_id": _url_token(),
            "sg_message_id": f"{msg.call_id}.sandbox{msg.id}.0",
        }
    )
    if msg.esp_message_id and msg.esp_message_id != smtp_id:
        event["anymail_id"] = msg.esp_message_id
    if msg.tags:
        event["category"] = list(msg.tags)
    if kind == DELIVERED:
        event.update(event="delivered", response=SMTP_OK, ip=SANDBOX_IP, tls=1)
    elif kind == BOUNCED:
        template = SMTP_SUPPRESSED if suppressed else SMTP_USER_UNKNOWN
        event.update(
            event="bounce",
            type="bounce",
            status="5.1.1",
            reason=template.format(addr=msg.to[0]),
            ip=SANDBOX_IP,
            tls=1,
        )
    elif kind == COMPLAINED:
        event.update(event="spamreport")
    elif kind == OPENED:
        event.update(event="open", useragent=OPEN_USER_AGENT, ip=SANDBOX_IP)
    elif kind == CLICKED:
        event.update(
            event="click",
            url=url,
            url_offset={"index": 0, "type": "html"},
            useragent=OPEN_USER_AGENT,
            ip=SANDBOX_IP,
        )
    else:
        raise ValueError(f"unknown event kind {kind!r}")
    return event
