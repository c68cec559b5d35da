"""The sandbox's run-time settings: what the constructor and configure() accept, validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .faults import validate_status


@dataclass(frozen=True)
class Config:
    webhook_url: str | None = None
    webhook_auth: tuple[str, str] | None = None
    open_rate: float = 0.0
    click_rate: float = 0.0
    latency_ms: float = 0
    simulate_domains: tuple[str, ...] = ()
    webhook_delay_ms: float = 0
    seed: int | None = None
    max_messages: int = 200_000
    fail_rate: float = 0.0
    fail_status: int = 503
    # A share of calls that stall for timeout_seconds before being answered (and accepted), so the client's
    # read timeout fires on a message the ESP has in fact taken: the ambiguous case a sender must live with.
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0


CONFIG_OPTIONS = {f for f in Config.__dataclass_fields__}


def validate_option(name: str, value: Any) -> Any:
    if name == "webhook_url":
        return (str(value).rstrip("/") or None) if value else None
    if name == "webhook_auth":
        if not value:
            return None
        if isinstance(value, str):
            user, sep, password = value.partition(":")
            if not sep:
                raise ValueError("webhook_auth must be 'user:password' or a (user, password) pair")
            return (user, password)
        user, password = value
        return (str(user), str(password))
    if name in ("open_rate", "click_rate", "fail_rate", "timeout_rate"):
        rate = float(value)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
        return rate
    if name in ("latency_ms", "webhook_delay_ms", "timeout_seconds"):
        if float(value) < 0:
            raise ValueError(f"{name} must not be negative")
        return float(value)
    if name == "simulate_domains":
        if isinstance(value, str):
            value = [value]
        return tuple(str(d).lower().strip() for d in value or ())
    if name == "seed":
        return None if value is None else int(value)
    if name == "max_messages":
        if int(value) < 1:
            raise ValueError("max_messages must be at least 1")
        return int(value)
    if name == "fail_status":
        return validate_status(value)
    raise TypeError(f"unknown sandbox option {name}")
