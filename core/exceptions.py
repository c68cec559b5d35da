"""One error hierarchy for the whole project: every app raises subclasses of ApplicationError."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A business rule was broken by the caller's input. The message is meant for the person who caused it."""

    code = "invalid"
    status_code = 400

    def __init__(self, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class NotFound(ApplicationError):
    code = "not_found"
    status_code = 404
