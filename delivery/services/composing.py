"""Composing one message: render the Mailing's templates for one recipient, add the way-out links and headers.

Every bulk message carries `List-Unsubscribe` (a signed https link and a mailto), `List-Unsubscribe-Post`
for one-click, `List-Id`, `Precedence: bulk`, a Message-ID on the sender's domain, and our message id as ESP
metadata so that a webhook finds the message whatever id the ESP gave it.
"""

from __future__ import annotations

import re
from email.utils import make_msgid
from functools import lru_cache
from urllib.parse import quote

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.utils.html import format_html

from core.addresses import email_domain
from delivery.models import Mailing, Message
from delivery.rendering import compiled_mailing
from delivery.unsubscribe import preferences_url, unsubscribe_token_make, unsubscribe_url


def _headers(mailing: Mailing, message: Message, unsubscribe_link: str, token: str) -> dict[str, str]:
    headers = {str(k): str(v) for k, v in (mailing.headers or {}).items()}
    domain = email_domain(_address_only(mailing.from_email)) or "localhost"
    headers["Message-ID"] = make_msgid(idstring=f"m{message.pk}", domain=domain)
    if mailing.is_bulk:
        mailto = settings.MAILER_UNSUBSCRIBE_MAILTO or f"unsubscribe@{domain}"
        headers["List-Unsubscribe"] = f"<{unsubscribe_link}>, <mailto:{mailto}?subject={quote('unsubscribe ' + token)}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        headers["Precedence"] = "bulk"
        if mailing.list_id:
            headers["List-Id"] = mailing.list_id
    return headers


def _address_only(value: str) -> str:
    from email.utils import parseaddr

    return parseaddr(value)[1]


_LINK_NAMES = re.compile(r"\b(?:unsubscribe_url|preferences_url)\b")


@lru_cache(maxsize=128)
def _mentions_links(source: str) -> bool:
    """Whether a template places the unsubscribe or preference link itself; once per template source."""
    return bool(_LINK_NAMES.search(source))


def _html_footer_add(html: str, preferences_link: str, unsubscribe_link: str) -> str:
    footer = format_html(
        '<p style="margin:24px 0 0;font-size:12px;line-height:1.5;color:#5a5f69">'
        '<a href="{}" style="color:#1f5fbf">Manage your subscriptions</a> &middot; '
        '<a href="{}" style="color:#1f5fbf">Unsubscribe</a></p>',
        preferences_link,
        unsubscribe_link,
    )
    # Inside the body when there is one: content after </html> is dropped or misplaced by some clients.
    end = html.lower().rfind("</body>")
    return html[:end] + footer + html[end:] if end != -1 else html + footer


def _text_footer_add(text: str, preferences_link: str, unsubscribe_link: str) -> str:
    body = f"{text.rstrip()}\n\n" if text.strip() else ""
    return f"{body}--\nManage your subscriptions: {preferences_link}\nUnsubscribe: {unsubscribe_link}\n"


def message_build(mailing: Mailing, message: Message) -> EmailMultiAlternatives:
    """Render one message from the Mailing's compiled templates and the Message's own context.

    Every bulk message carries a way out: a part (HTML or text) whose template places neither the unsubscribe nor
    the preference link gets a small footer with both. A text part derived from the HTML gets it too, since
    stripping the tags loses the links' addresses.
    """
    compiled = compiled_mailing(mailing.pk, mailing.subject_template, mailing.html_template, mailing.text_template)
    context = dict(message.context or {})
    context.setdefault("email", message.to_email)
    context.setdefault("subscriber", dict(context))
    token = unsubscribe_token_make(message.pk) if mailing.is_bulk else ""
    link = unsubscribe_url(message.pk, token) if mailing.is_bulk else ""
    preferences_link = preferences_url(message.pk) if mailing.is_bulk else ""
    if mailing.is_bulk:
        context["unsubscribe_url"] = link
        context["preferences_url"] = preferences_link
    rendered = compiled.render(context)
    html = rendered.html
    text = rendered.text  # generated from the HTML (links kept) when the mailing has no text template
    if mailing.is_bulk:
        if html and not _mentions_links(mailing.html_template):
            html = _html_footer_add(html, preferences_link, link)
        if not _mentions_links(compiled.text_source):
            text = _text_footer_add(text, preferences_link, link)
    email = EmailMultiAlternatives(
        subject=rendered.subject,
        body=text,
        from_email=mailing.from_email,
        to=[message.to_email],
        reply_to=[mailing.reply_to] if mailing.reply_to else None,
        headers=_headers(mailing, message, link, token),
    )
    if html:
        email.attach_alternative(html, "text/html")
    # Our own id travels with the message, so a webhook finds it whatever id the ESP gave it.
    email.metadata = {"mailer_msg": str(message.pk)}  # type: ignore[attr-defined]
    return email
