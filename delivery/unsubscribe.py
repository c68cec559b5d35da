"""Signed one-click unsubscribe tokens. The token names a Message; whoever owns the Mailing decides what leaving
means (the subscribers app unsubscribes from the lists the mailing went to)."""

from __future__ import annotations

from functools import lru_cache

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


_PLACEHOLDER = "TOKEN"


@lru_cache(maxsize=8)
def _url_pattern(base_url: str) -> str:
    """The URL with a placeholder for the token: reverse() once, not per message."""
    return base_url + reverse("unsubscribe", args=[_PLACEHOLDER])


def unsubscribe_url(message_id: int, token: str | None = None) -> str:
    return _url_pattern(settings.MAILER_BASE_URL).replace(_PLACEHOLDER, token or unsubscribe_token_make(message_id))
