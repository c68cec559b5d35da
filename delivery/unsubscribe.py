"""Signed one-click unsubscribe tokens. The token names a Message; whoever owns the Mailing decides what leaving
means (the subscribers app unsubscribes from the lists the mailing went to)."""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.urls import reverse

_SALT = "mailer.unsubscribe"


def unsubscribe_token_make(message_id: int) -> str:
    return signing.dumps(message_id, salt=_SALT, compress=False)


def unsubscribe_token_read(token: str) -> int | None:
    """The Message id the token was made for, or None when it was altered. Tokens do not expire: a link in an
    old message must still work."""
    try:
        value = signing.loads(token, salt=_SALT)
    except signing.BadSignature:
        return None
    return value if isinstance(value, int) else None


def unsubscribe_url(message_id: int) -> str:
    return settings.MAILER_BASE_URL + reverse("unsubscribe", args=[unsubscribe_token_make(message_id)])
