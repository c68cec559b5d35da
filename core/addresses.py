"""Email address normalization shared by every app: one spelling per mailbox."""

from __future__ import annotations

import hashlib

from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator

from core.exceptions import ApplicationError

_validator = EmailValidator()


class InvalidEmailAddress(ApplicationError):
    code = "invalid_email"


def normalize_email(address: str) -> str:
    """Trim and lower-case the whole address.

    Strictly the local part is case-sensitive, but no mailbox provider treats it so, and two spellings of one
    address must never become two subscribers (or slip past a suppression).
    """
    return (address or "").strip().lower()


def email_clean(address: str) -> str:
    """Normalize and validate an address, or raise InvalidEmailAddress naming it."""
    normalized = normalize_email(address)
    try:
        _validator(normalized)
    except ValidationError as exc:
        raise InvalidEmailAddress(f"{address!r} is not a valid email address.", {"email": address}) from exc
    return normalized


def email_domain(address: str) -> str:
    return address.rpartition("@")[2]


def address_hash(address: str) -> str:
    """SHA-256 (hex) of the normalized address: what the suppression list keeps of an erased person, so that a
    later import or sign-up of the same address is refused without the address itself being stored."""
    return hashlib.sha256(normalize_email(address).encode("utf-8")).hexdigest()
