"""Postmark: the email, batch and template endpoints as Postmark answers them, and its tracking webhooks."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from email.utils import getaddresses, parseaddr
from typing import Any

from .faults import fault_message
from .http import Reply, json_reply
from .messages import SandboxMessage, addr_specs, now
from .outcomes import SES_SIMULATOR_DOMAIN
from .vocabulary import (
    BOUNCED,
    CLICKED,
    COMPLAINED,
    DELIVERED,
    OPEN_USER_AGENT,
    OPENED,
    POSTMARK,
    SANDBOX_IP,
    SMTP_OK,
    SMTP_SUPPRESSED,
    SMTP_USER_UNKNOWN,
    iso_ms,
)

POSTMARK_MAX_BATCH = 500
POSTMARK_MAX_RECIPIENTS = 50
WEBHOOK_HEADERS = {"Content-Type": "application/json", "User-Agent": "Postmark"}

_postmark_record_ids = itertools.count(int(time.time()) % 1_000_000 * 1000)


# --- error shapes


def _postmark_error(status: int, code: int, message: str) -> Reply:
    return json_reply(status, {"ErrorCode": code, "Message": message})


def check_auth(headers: Mapping[str, str]) -> Reply | None:
    """Postmark's refusal for a missing server token; any token is accepted."""
    if not (headers.get("X-Postmark-Server-Token") or "").strip():
        return _postmark_error(401, 10, "No Server API token was supplied in the X-Postmark-Server-Token header.")
    return None


def fault_reply(status: int) -> Reply:
    code = {400: 300, 401: 10, 422: 300, 429: 429, 503: 100}.get(status, status)
    return _postmark_error(status, code, fault_message(status))


def bad_json_reply() -> Reply:
    return _postmark_error(422, 402, "Received invalid JSON input.")


# --- the endpoints


def _postmark_message(item: Any, *, template: bool, call_id: str) -> tuple[dict[str, Any], list[SandboxMessage]]:
    """Validate one Postmark message: its result object (as in a batch reply) and per-recipient records."""
    if not isinstance(item, dict):
        return {"ErrorCode": 402, "Message": "Received invalid JSON input."}, []
    from_email = parseaddr(item.get("From") or "")[1]
    if "@" not in from_email:
        return {"ErrorCode": 300, "Message": f"Invalid 'From' address: '{item.get('From') or ''}'."}, []
    for kind in ("To", "Cc", "Bcc"):
        for _, addr in getaddresses([item.get(kind) or ""]):
            if addr and "@" not in addr:
                return {"ErrorCode": 300, "Message": f"Invalid '{kind}' address: '{addr}'."}, []
    recipients = addr_specs(item.get("To"), item.get("Cc"), item.get("Bcc"))
    if not recipients:
        return {"ErrorCode": 300, "Message": "Zero recipients specified"}, []
    if len(recipients) > POSTMARK_MAX_RECIPIENTS:
        return {"ErrorCode": 300, "Message": f"Too many recipients ({len(recipients)}); the limit is 50."}, []
    inactive = [addr for addr in recipients if _is_inactive(addr)]
    if inactive:
        return {
            "To": item.get("To") or "",
            "ErrorCode": 406,
            "Message": "You tried to send to recipient(s) that have been marked as inactive. Found inactive addresses: "
            f"{', '.join(inactive)}. Inactive recipients are ones that have generated a hard bounce, a spam "
            "complaint, or a manual suppression.",
        }, []
    if template and not (item.get("TemplateId") or item.get("TemplateAlias")):
        return {"ErrorCode": 1101, "Message": "A TemplateId or TemplateAlias is required."}, []
    if not template and not (item.get("HtmlBody") or item.get("TextBody")):
        return {"ErrorCode": 300, "Message": "Provide either email TextBody or HtmlBody or both."}, []
    message_id = str(uuid.uuid4())
    received_at = now()
    result: dict[str, Any] = {"SubmittedAt": received_at.isoformat(), "MessageID": message_id}
    if item.get("To"):
        result = {"To": item["To"], **result}
    result.update(ErrorCode=0, Message="OK")
    headers = {h["Name"]: h["Value"] for h in item.get("Headers") or [] if isinstance(h, dict) and "Name" in h}
    messages = [
        SandboxMessage(
            id=0,
            esp=POSTMARK,
            esp_message_id=message_id,
            from_email=from_email,
            to=[addr],
            subject=item.get("Subject") or "",
            html=item.get("HtmlBody"),
            text=item.get("TextBody"),
            headers=headers,
            metadata=dict(item.get("Metadata") or {}),
            received_at=received_at,
            raw=item,
            tags=[item["Tag"]] if item.get("Tag") else [],
            destination=list(recipients),
            call_id=call_id,
        )
        for addr in recipients
    ]
    return result, messages


def _is_inactive(address: str) -> bool:
    """Postmark refuses, at send time, recipients it has marked inactive (after a hard bounce or a complaint):
    the sandbox plays that for inactive@ (or inactive+label@) the SES simulator domain."""
    local, _, domain = address.lower().rpartition("@")
    return domain == SES_SIMULATOR_DOMAIN and local.split("+", 1)[0] == "inactive"


def _postmark_many(items: Any, *, template: bool) -> tuple[Reply, list[SandboxMessage]]:
    """A Postmark batch: 200 with per-message results in request order, or 422 for the batch as a whole."""
    if not isinstance(items, list):
        return _postmark_error(422, 402, "Received invalid JSON input."), []
    if len(items) > POSTMARK_MAX_BATCH:
        return _postmark_error(422, 410, f"Too many batch messages ({len(items)}); the limit is 500."), []
    call_id = str(uuid.uuid4())
    results, messages = [], []
    for item in items:
        result, recipients = _postmark_message(item, template=template, call_id=call_id)
        results.append(result)
        messages += recipients
    return json_reply(200, results), messages


def send_email(data: Any) -> tuple[Reply, list[SandboxMessage]]:
    result, messages = _postmark_message(data, template=False, call_id=str(uuid.uuid4()))
    return json_reply(200 if result["ErrorCode"] == 0 else 422, result), messages


def send_with_template(data: Any) -> tuple[Reply, list[SandboxMessage]]:
    result, messages = _postmark_message(data, template=True, call_id=str(uuid.uuid4()))
    return json_reply(200 if result["ErrorCode"] == 0 else 422, result), messages


def send_batch(data: Any) -> tuple[Reply, list[SandboxMessage]]:
    return _postmark_many(data, template=False)


def send_batch_with_templates(data: Any) -> tuple[Reply, list[SandboxMessage]]:
    items = data.get("Messages") if isinstance(data, dict) else None
    return _postmark_many(items, template=True)


def outbound_search(query: Mapping[str, list[str]], stored: list[SandboxMessage]) -> Reply:
    """GET /messages/outbound: Postmark's search of sent messages, newest first, filtered by recipient, with
    each message's Metadata (what a sender asks to learn whether a message it lost track of went out)."""
    try:
        count, offset = int(query["count"][0]), int(query["offset"][0])
    except (KeyError, ValueError):
        return _postmark_error(422, 1, "The 'count' and 'offset' query parameters are required integers.")
    if not 0 < count <= 500 or offset < 0 or count + offset > 10_000:
        return _postmark_error(422, 1, "count must be 1-500, and count + offset at most 10,000.")
    recipient = (query.get("recipient") or [""])[0].lower()
    found = [
        msg
        for msg in reversed(stored)
        if msg.esp == POSTMARK and (not recipient or recipient in (a.lower() for a in msg.destination or msg.to))
    ]
    page = [
        {
            "Tag": msg.tags[0] if msg.tags else "",
            "MessageID": msg.esp_message_id,
            "MessageStream": (msg.raw or {}).get("MessageStream") or "outbound",
            "To": [{"Email": addr, "Name": None} for addr in msg.to],
            "Cc": [],
            "Bcc": [],
            "Recipients": list(msg.destination or msg.to),
            "ReceivedAt": msg.received_at.isoformat(),
            "From": msg.from_email,
            "Subject": msg.subject,
            "Attachments": [],
            "Status": "Sent",
            "TrackOpens": False,
            "TrackLinks": "None",
            "Metadata": dict(msg.metadata),
            "Sandboxed": False,
        }
        for msg in found[offset : offset + count]
    ]
    return json_reply(200, {"TotalCount": len(found), "Messages": page})


# --- tracking webhooks

_POSTMARK_CLIENT = {"Name": "Sandbox Mail 1.0", "Company": "Mailer", "Family": "Sandbox Mail"}
_POSTMARK_OS = {"Name": "Linux", "Company": "Linux Foundation", "Family": "Linux"}


def postmark_event(
    msg: SandboxMessage, kind: str, *, when: datetime, url: str | None = None, suppressed: bool = False
) -> dict[str, Any]:
    """One Postmark webhook object (Delivery, Bounce, SpamComplaint, Open or Click record)."""
    stamp = iso_ms(when)
    common: dict[str, Any] = {
        "MessageID": msg.esp_message_id,
        "ServerID": 1,
        "MessageStream": (msg.raw.get("MessageStream") if isinstance(msg.raw, dict) else None) or "outbound",
        "Metadata": dict(msg.metadata),
    }
    if msg.tags:
        common["Tag"] = msg.tags[0]
    addr = msg.to[0]
    if kind == DELIVERED:
        return {
            "RecordType": "Delivery",
            **common,
            "Recipient": addr,
            "DeliveredAt": stamp,
            "Details": SMTP_OK,
        }
    if kind in (BOUNCED, COMPLAINED):
        bounce = kind == BOUNCED
        template = SMTP_SUPPRESSED if suppressed else SMTP_USER_UNKNOWN
        return {
            "RecordType": "Bounce" if bounce else "SpamComplaint",
            "ID": next(_postmark_record_ids),
            "Type": "HardBounce" if bounce else "SpamComplaint",
            "TypeCode": 1 if bounce else 512,
            "Name": "Hard bounce" if bounce else "Spam complaint",
            **common,
            "Description": "The receiving server says this mailbox does not exist." if bounce else "",
            "Details": "smtp;" + template.format(addr=addr) if bounce else "",
            "Email": addr,
            "From": msg.from_email,
            "BouncedAt": stamp,
            "DumpAvailable": False,
            "Inactive": True,
            "CanActivate": bounce,
            "Subject": msg.subject,
        }
    engagement = {
        "Client": dict(_POSTMARK_CLIENT),
        "OS": dict(_POSTMARK_OS),
        "Platform": "Desktop",
        "UserAgent": OPEN_USER_AGENT,
        "Geo": {"IP": SANDBOX_IP},
    }
    if kind == OPENED:
        return {
            "RecordType": "Open",
            **common,
            "FirstOpen": True,
            **engagement,
            "ReadSeconds": 5,
            "ReceivedAt": stamp,
            "Recipient": addr,
        }
    if kind == CLICKED:
        return {
            "RecordType": "Click",
            **common,
            "ClickLocation": "HTML",
            **engagement,
            "OriginalLink": url,
            "ReceivedAt": stamp,
            "Recipient": addr,
        }
    raise ValueError(f"unknown event kind {kind!r}")
