"""Fault injection: the one-shot fault lists configure() accepts, and how an injected failure is worded.

Each ESP module shapes the failure as that ESP would answer it; the server decides when one is due.
"""

from __future__ import annotations

from typing import Any

from .vocabulary import ESPS

FAULT_OPTIONS = {"fail_next", "timeout_next"}


def validate_status(value: Any) -> int:
    status = int(value)
    if not 400 <= status <= 599:
        raise ValueError("an injected status must be 4xx or 5xx")
    return status


def validate_faults(name: str, value: Any) -> list[dict[str, Any]]:
    faults = []
    for item in value or []:
        if not isinstance(item, dict):
            raise TypeError(f"{name} entries must be objects")
        esp = item.get("esp", "*")
        if esp != "*" and esp not in ESPS:
            raise ValueError(f"{name}: esp must be one of {', '.join(ESPS)} or '*'")
        fault: dict[str, Any] = {"esp": esp, "times": max(int(item.get("times", 1)), 1)}
        if name == "fail_next":
            fault["status"] = validate_status(item.get("status", 500))
        else:
            fault["seconds"] = max(float(item.get("seconds", 30)), 0.0)
        faults.append(fault)
    return faults


def fault_message(status: int) -> str:
    """An injected failure, worded as the ESPs word it; each ESP module gives it that ESP's shape."""
    text = {
        400: "Bad Request",
        429: "Too many requests",
        500: "Internal server error",
        503: "Service unavailable",
    }
    return f"{text.get(status, 'Error')} (sandbox fault injection)"
