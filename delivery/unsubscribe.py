"""Signed links in every bulk message: one-click unsubscribe and the preference page. A token names a Message;
whoever owns the Mailing decides what the link means (the subscribers app unsubscribes from the lists the mailing
went to, or shows the recipient's lists). Each kind of link has its own salt, so one cannot stand in for the other.
"""

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
def _url_pattern(base_url: str, url_name: str) -> str:
    """The URL with a placeholder for the token: reverse() once, not per message."""
    return base_url + reverse(url_name, args=[_PLACEHOLDER])


def unsubscribe_url(message_id: int, token: str | None = None) -> str:
    pattern = _url_pattern(settings.MAILER_BASE_URL, "unsubscribe")
    return pattern.replace(_PLACEHOLDER, token or unsubscribe_token_make(message_id))


_PREFERENCES_SALT = "mailer.preferences"


def preferences_token_make(message_id: int) -> str:
    return signing.dumps(message_id, salt=_PREFERENCES_SALT, compress=False)


def preferences_token_read(token: str) -> int | None:
    """The Message id, or None when the token was altered. No expiry, like the unsubscribe link: the page must
    still open from an old message."""
    try:
        value = signing.loads(token, salt=_PREFERENCES_SALT)
    except signing.BadSignature:
        return None
    return value if isinstance(value, int) else None


def preferences_url(message_id: int) -> str:
    pattern = _url_pattern(settings.MAILER_BASE_URL, "preferences")
    return pattern.replace(_PLACEHOLDER, preferences_token_make(message_id))
