"""Amazon SES v2: SendEmail, SendBulkEmail and CreateEmailTemplate as SES answers them.

SES reports events through SNS; those payloads are built in `ses_events.py`.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import json
import re
import threading
import time
import uuid
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

from .faults import fault_message
from .http import Reply, json_reply
from .messages import SandboxMessage, addr_specs, now
from .vocabulary import AMAZON_SES

SES_MAX_RECIPIENTS = 50
SES_MAX_BULK_ENTRIES = 50

# Headers that describe the envelope or MIME structure rather than being "custom headers as sent".
_STRUCTURAL_HEADERS = {
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}
_TEMPLATE_VAR_RE = re.compile(r"\{\{\{?\s*([\w.-]+)\s*\}?\}\}")


# --- error shapes


def _ses_error(status: int, code: str, message: str) -> Reply:
    headers = {"x-amzn-ErrorType": code, "x-amzn-RequestId": str(uuid.uuid4())}
    return json_reply(status, {"__type": code, "message": message}, headers)


def check_auth(headers: Mapping[str, str]) -> Reply | None:
    """SES's refusal for a missing credential; any value is accepted (SigV4 is not verified)."""
    if not headers.get("Authorization"):
        return _ses_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    return None


def fault_reply(status: int) -> Reply:
    codes = {400: "BadRequestException", 429: "TooManyRequestsException", 503: "ServiceUnavailable"}
    code = codes.get(status, "InternalFailure" if status >= 500 else "BadRequestException")
    return _ses_error(status, code, fault_message(status))


def bad_json_reply() -> Reply:
    return _ses_error(400, "SerializationException", "The request body is not valid JSON.")


# --- reading a message the way SES does


def _ses_message_id() -> str:
    """Shaped like real SES ids (time prefix, uuid, suffix) so logs and UIs look familiar."""
    return f"0100{int(time.time() * 1000):012x}-{uuid.uuid4()}-000000"


def _mime_bodies(message: EmailMessage) -> tuple[str | None, str | None]:
    text = html_body = None
    for part in message.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain" and text is None:
            text = part.get_content()
        elif content_type == "text/html" and html_body is None:
            html_body = part.get_content()
    return text, html_body


def _custom_headers(items: list[tuple[str, str]]) -> dict[str, str]:
    """First value of each non-structural header, keeping the sender's spelling of the name."""
    headers: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in items:
        if name.lower() in _STRUCTURAL_HEADERS or name.lower() in seen:
            continue
        seen.add(name.lower())
        headers[name] = value
    return headers


def _header_values(items: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in items if key.lower() == name.lower()]


def _metadata_from_header(items: list[tuple[str, str]]) -> dict[str, Any]:
    """anymail carries SES metadata as JSON in X-Metadata; a malformed value is left out, not guessed."""
    values = _header_values(items, "X-Metadata")
    if not values:
        return {}
    try:
        metadata = json.loads(values[-1])
    except ValueError:
        return {}
    return metadata if isinstance(metadata, dict) else {}


def _render(template: str | None, data: Mapping[str, Any]) -> str | None:
    """Just enough of SES's Handlebars to fill `{{name}}` and `{{a.b}}`; missing values render empty."""
    if template is None:
        return None

    def value(match: re.Match[str]) -> str:
        current: Any = data
        for part in match.group(1).split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        return "" if current is None else str(current)

    return _TEMPLATE_VAR_RE.sub(value, template)


def _ses_destination(destination: Any) -> list[str]:
    if not isinstance(destination, dict):
        return []
    return addr_specs(*(destination.get(k) or [] for k in ("ToAddresses", "CcAddresses", "BccAddresses")))


def _ses_messages(
    message_id: str,
    from_email: str,
    recipients: list[str],
    subject: str,
    html_body: str | None,
    text: str | None,
    items: list[tuple[str, str]],
    raw: Any,
) -> list[SandboxMessage]:
    received_at = now()
    headers = _custom_headers(items)
    metadata = _metadata_from_header(items)
    tags = _header_values(items, "X-Tag")
    return [
        SandboxMessage(
            id=0,
            esp=AMAZON_SES,
            esp_message_id=message_id,
            from_email=from_email,
            to=[addr],
            subject=subject,
            html=html_body,
            text=text,
            headers=dict(headers),
            metadata=dict(metadata),
            received_at=received_at,
            raw=raw,
            tags=list(tags),
            destination=list(recipients),
            call_id=message_id,
        )
        for addr in recipients
    ]


# --- the endpoints


class SesApi:
    """The SES v2 endpoints, with the templates created through them (which outlive a sandbox clear())."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._templates: dict[str, dict[str, str]] = {}

    def send_email(self, data: Any) -> tuple[Reply, list[SandboxMessage]]:
        if not isinstance(data, dict):
            return _ses_error(400, "BadRequestException", "Expected a JSON object."), []
        content = data.get("Content") or {}
        recipients = _ses_destination(data.get("Destination"))
        from_email = parseaddr(data.get("FromEmailAddress") or "")[1]
        raw: Any = data
        if "Raw" in content:
            try:
                raw = base64.b64decode(content["Raw"]["Data"])
            except (KeyError, TypeError, binascii.Error):
                return _ses_error(400, "BadRequestException", "Content.Raw.Data must be base64 MIME."), []
            mime = email.message_from_bytes(raw, policy=email.policy.default)
            items = [(name, str(value)) for name, value in mime.items()]
            from_email = from_email or parseaddr(str(mime.get("From", "")))[1]
            recipients = recipients or addr_specs(*_header_values(items, "To"), *_header_values(items, "Cc"))
            subject = str(mime.get("Subject", ""))
            text, html_body = _mime_bodies(mime)
        elif "Simple" in content:
            simple = content["Simple"] or {}
            body = simple.get("Body") or {}
            subject = (simple.get("Subject") or {}).get("Data", "")
            text = (body.get("Text") or {}).get("Data")
            html_body = (body.get("Html") or {}).get("Data")
            items = [(h["Name"], h["Value"]) for h in simple.get("Headers") or []]
        elif "Template" in content:
            template = content["Template"] or {}
            found = self._template(template)
            if found is None:
                return _ses_error(404, "NotFoundException", f"Template {template.get('TemplateName')} not found."), []
            try:
                merge = json.loads(template.get("TemplateData") or "{}")
            except ValueError:
                return _ses_error(400, "BadRequestException", "TemplateData is not valid JSON."), []
            subject, html_body, text = (_render(found.get(k), merge) for k in ("Subject", "Html", "Text"))
            subject = subject or ""
            items = [(h["Name"], h["Value"]) for h in template.get("Headers") or []]
        else:
            return _ses_error(400, "BadRequestException", "Content must have Raw, Simple or Template."), []
        if not from_email:
            return _ses_error(400, "BadRequestException", "FromEmailAddress is required."), []
        if not recipients:
            return _ses_error(400, "BadRequestException", "At least one destination address is required."), []
        if len(recipients) > SES_MAX_RECIPIENTS:
            return _ses_error(400, "MessageRejected", f"Too many recipients ({len(recipients)}); the limit is 50."), []
        message_id = _ses_message_id()
        messages = _ses_messages(message_id, from_email, recipients, subject, html_body, text, items, raw)
        return json_reply(200, {"MessageId": message_id}), messages

    def send_bulk(self, data: Any) -> tuple[Reply, list[SandboxMessage]]:
        entries = data.get("BulkEmailEntries") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            return _ses_error(400, "BadRequestException", "BulkEmailEntries must hold at least one entry."), []
        if len(entries) > SES_MAX_BULK_ENTRIES:
            message = f"BulkEmailEntries holds {len(entries)} entries; the limit is {SES_MAX_BULK_ENTRIES}."
            return _ses_error(400, "BadRequestException", message), []
        from_email = parseaddr(data.get("FromEmailAddress") or "")[1]
        if not from_email:
            return _ses_error(400, "BadRequestException", "FromEmailAddress is required."), []
        default = (data.get("DefaultContent") or {}).get("Template") or {}
        template = self._template(default)
        if template is None:
            return _ses_error(404, "NotFoundException", f"Template {default.get('TemplateName')} not found."), []
        try:
            default_data = json.loads(default.get("TemplateData") or "{}")
        except ValueError:
            return _ses_error(400, "BadRequestException", "TemplateData is not valid JSON."), []
        default_headers = [(h["Name"], h["Value"]) for h in default.get("Headers") or []]
        results: list[dict[str, str]] = []
        messages: list[SandboxMessage] = []
        shared = {k: v for k, v in data.items() if k != "BulkEmailEntries"}
        for entry in entries:
            recipients = _ses_destination(entry.get("Destination"))
            replacement = ((entry.get("ReplacementEmailContent") or {}).get("ReplacementTemplate") or {}).get(
                "ReplacementTemplateData"
            )
            try:
                merge = {**default_data, **json.loads(replacement or "{}")}
            except ValueError:
                results.append({"Status": "INVALID_PARAMETER", "Error": "ReplacementTemplateData is not valid JSON."})
                continue
            if not recipients or len(recipients) > SES_MAX_RECIPIENTS:
                results.append({"Status": "INVALID_PARAMETER", "Error": "An entry needs 1 to 50 destinations."})
                continue
            message_id = _ses_message_id()
            subject, html_body, text = (_render(template.get(k), merge) for k in ("Subject", "Html", "Text"))
            items = default_headers + [(h["Name"], h["Value"]) for h in entry.get("ReplacementHeaders") or []]
            raw = {**shared, "BulkEmailEntries": [entry]}
            messages += _ses_messages(message_id, from_email, recipients, subject or "", html_body, text, items, raw)
            results.append({"Status": "SUCCESS", "MessageId": message_id})
        return json_reply(200, {"BulkEmailEntryResults": results}), messages

    def create_template(self, data: Any) -> tuple[Reply, list[SandboxMessage]]:
        name = data.get("TemplateName") if isinstance(data, dict) else None
        content = data.get("TemplateContent") if isinstance(data, dict) else None
        if not name or not isinstance(content, dict):
            return _ses_error(400, "BadRequestException", "TemplateName and TemplateContent are required."), []
        with self._lock:
            if name in self._templates:
                return _ses_error(400, "AlreadyExistsException", f"Template {name} already exists."), []
            self._templates[name] = {k: v for k, v in content.items() if isinstance(v, str)}
        return json_reply(200, {}), []

    def _template(self, template: Mapping[str, Any]) -> dict[str, str] | None:
        if isinstance(template.get("TemplateContent"), dict):
            return template["TemplateContent"]
        name = template.get("TemplateName") or str(template.get("TemplateArn", "")).rpartition("/")[2]
        with self._lock:
            return self._templates.get(name)
