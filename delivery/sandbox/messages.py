"""What the sandbox stores for each accepted send, and the helpers every ESP uses to build it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any


@dataclass
class SandboxMessage:
    """One recipient's copy of one accepted send: a batch of N recipients is stored as N of these."""

    id: int
    esp: str
    esp_message_id: str
    from_email: str
    to: list[str]
    subject: str
    html: str | None
    text: str | None
    headers: dict[str, str]
    metadata: dict[str, Any]
    received_at: datetime
    raw: Any
    events: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    destination: list[str] = field(default_factory=list)  # every recipient of the ESP-level message
    call_id: str = ""  # the API call this came from: batch members share it
    replied_at: datetime | None = None  # when the answer to that call started back to the client

    def as_dict(self, *, include_raw: bool = False) -> dict[str, Any]:
        data = {
            "id": self.id,
            "esp": self.esp,
            "esp_message_id": self.esp_message_id,
            "from_email": self.from_email,
            "to": list(self.to),
            "subject": self.subject,
            "html": self.html,
            "text": self.text,
            "headers": dict(self.headers),
            "metadata": dict(self.metadata),
            "tags": list(self.tags),
            "destination": list(self.destination),
            "call_id": self.call_id,
            "received_at": self.received_at.isoformat(),
            "replied_at": self.replied_at.isoformat() if self.replied_at else None,
            "events": list(self.events),
        }
        if include_raw:
            data["raw"] = self.raw.decode("utf-8", "replace") if isinstance(self.raw, bytes) else self.raw
        return data


def now() -> datetime:
    return datetime.now(UTC)


def addr_specs(*fields: Any) -> list[str]:
    """Addr-specs from header-style strings or lists of them ("Name <a@b>, c@d")."""
    values: list[str] = []
    for value in fields:
        if isinstance(value, str):
            values.append(value)
        elif isinstance(value, list):
            values += [v for v in value if isinstance(v, str)]
    return [addr for _, addr in getaddresses(values) if addr]
