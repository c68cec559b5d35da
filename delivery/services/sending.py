"""Sending: claim a chunk, render, send through one reused provider connection, record every outcome.

The order of steps is what keeps the promise "no message is lost, and a message is sent twice only if a
worker died during its very API call":
1. claim (one short transaction): queued -> sending with a lease;
2. ESP calls, outside any transaction;
3. record (one short transaction), only for rows still `sending`.
A worker that dies between 1 and 3 leaves `sending` rows whose lease expires; messages_reclaim_expired puts
them back in the queue.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import make_msgid
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.html import format_html, strip_tags

from core.addresses import address_hash, email_domain
from delivery.exceptions import TemplateRenderFailed
from delivery.models import Mailing, Message, Provider, Suppression
from delivery.providers import provider_connection, send_error_classify
from delivery.rendering import compiled_mailing
from delivery.unsubscribe import preferences_url, unsubscribe_token_make, unsubscribe_url

logger = logging.getLogger(__name__)


@dataclass
class ChunkResult:
    claimed: int = 0
    sent: int = 0
    suppressed: int = 0
    failed: int = 0
    retrying: int = 0
    released: int = 0
    errors: list[str] = field(default_factory=list)


def _due_queued(mailing_id: int):
    now = timezone.now()
    return Message.objects.filter(mailing_id=mailing_id, status=Message.Status.QUEUED).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )


def messages_claim(*, mailing_id: int, limit: int) -> list[Message]:
    """Take up to `limit` due messages for this worker: queued -> sending, with a lease.

    PostgreSQL skips rows another worker has locked; SQLite has no row locks, but its IMMEDIATE transactions
    run one at a time, and the status filter on the UPDATE keeps a row from being claimed twice either way.
    """
    lease = timezone.now() + timedelta(seconds=settings.MAILER_LEASE_SECONDS)
    with transaction.atomic():
        query = _due_queued(mailing_id).order_by("pk")
        if connection.features.has_select_for_update_skip_locked:
            query = query.select_for_update(skip_locked=True)
        ids = list(query.values_list("pk", flat=True)[:limit])
        if not ids:
            return []
        Message.objects.filter(pk__in=ids, status=Message.Status.QUEUED).update(
            status=Message.Status.SENDING, lease_expires_at=lease
        )
    return list(Message.objects.filter(pk__in=ids, status=Message.Status.SENDING).order_by("pk"))


def mailing_provider(mailing: Mailing) -> Provider | None:
    if mailing.provider is not None and mailing.provider.is_enabled:
        return mailing.provider
    return Provider.objects.filter(is_enabled=True).order_by("priority", "pk").first()


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
    text = rendered.text or (strip_tags(html).strip() if html else "")
    if mailing.is_bulk:
        if html and not _mentions_links(mailing.html_template):
            html = _html_footer_add(html, preferences_link, link)
        if not (rendered.text and _mentions_links(mailing.text_template)):
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


def _retry_at(attempts: int) -> datetime:
    """Exponential backoff with jitter: 30 s, 1 min, 2 min ... capped at an hour, each +-50 %."""
    base = min(30 * (2 ** max(attempts - 1, 0)), 3600)
    return timezone.now() + timedelta(seconds=base * random.uniform(0.5, 1.5))  # noqa: S311


def mailing_send_chunk(*, mailing_id: int, chunk_size: int | None = None) -> ChunkResult:
    """Send one chunk of a mailing's due messages. Safe to run in many workers at once."""
    result = ChunkResult()
    messages = messages_claim(mailing_id=mailing_id, limit=chunk_size or settings.MAILER_CHUNK_SIZE)
    result.claimed = len(messages)
    if not messages:
        return result
    mailing = Mailing.objects.select_related("provider").get(pk=mailing_id)

    # The suppression list is checked after the claim, as close to the send as it can be. By hash: an erased
    # person's row keeps only the hash of the address, and it must stop the send as surely as the address would.
    hashes = {message.pk: address_hash(message.to_email) for message in messages}
    suppressed = set(
        Suppression.objects.filter(email_hash__in=set(hashes.values())).values_list("email_hash", flat=True)
    )
    now = timezone.now()
    done: list[Message] = []
    to_send: list[Message] = []
    for message in messages:
        if hashes[message.pk] in suppressed:
            message.status = Message.Status.SUPPRESSED
            message.last_error = "address is on the suppression list"
            done.append(message)
            result.suppressed += 1
        else:
            to_send.append(message)

    provider = mailing_provider(mailing)
    if provider is None:
        for message in to_send:
            message.status = Message.Status.QUEUED
            message.next_attempt_at = now + timedelta(minutes=1)
            message.last_error = "no enabled provider"
        done.extend(to_send)
        result.released += len(to_send)
        result.errors.append("no enabled provider")
        _record(done)
        return result

    backend = provider_connection(provider)
    stopped_by: str | None = None
    with backend:
        for message in to_send:
            if stopped_by is not None:
                # The provider is failing: put the rest back without spending an attempt on them.
                message.status = Message.Status.QUEUED
                message.next_attempt_at = _retry_at(message.attempts + 1)
                message.last_error = f"not tried: {stopped_by}"
                done.append(message)
                result.released += 1
                continue
            message.provider = provider
            try:
                email = message_build(mailing, message)
            except TemplateRenderFailed as exc:
                message.status = Message.Status.FAILED
                message.last_error = exc.message
                done.append(message)
                result.failed += 1
                continue
            message.attempts += 1
            try:
                backend.send_messages([email])
            except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded, none escapes
                error = send_error_classify(exc)
                message.last_error = error.reason
                if error.retryable and message.attempts < settings.MAILER_MAX_ATTEMPTS:
                    message.status = Message.Status.QUEUED
                    message.next_attempt_at = _retry_at(message.attempts)
                    result.retrying += 1
                    stopped_by = error.reason
                else:
                    message.status = Message.Status.FAILED
                    if error.retryable:
                        message.last_error = f"gave up after {message.attempts} attempts: {error.reason}"
                    result.failed += 1
                result.errors.append(f"{message.to_email}: {error.reason}")
                done.append(message)
                continue
            status = getattr(email, "anymail_status", None)
            recipient = status.recipients.get(message.to_email) if status is not None else None
            message.esp_message_id = str(recipient.message_id or "") if recipient else ""
            message.status = Message.Status.SENT
            message.sent_at = timezone.now()
            message.last_error = ""
            done.append(message)
            result.sent += 1
    _record(done)
    if result.errors:
        logger.warning("mailing %s chunk: %s", mailing_id, "; ".join(result.errors[:5]))
    return result


_RECORD_COLUMNS = ("id", "status", "provider_id", "esp_message_id", "attempts", "last_error", "next_attempt_at",
                   "sent_at")  # fmt: skip
# PostgreSQL needs the VALUES columns typed where a whole column may be NULL; SQLite takes them as they come.
_PG_CASTS = {"id": "bigint", "provider_id": "bigint", "attempts": "integer", "next_attempt_at": "timestamptz",
             "sent_at": "timestamptz"}  # fmt: skip


def _record(messages: list[Message]) -> None:
    """Write outcomes back in one statement, only over rows this worker still holds (`sending`).

    One UPDATE ... FROM (VALUES ...) for the whole chunk: Django's bulk_update builds a CASE per field and
    row, which cost more than the ESP calls themselves.
    """
    if not messages:
        return
    ops = connection.ops
    is_pg = connection.vendor == "postgresql"
    rows: list[str] = []
    params: list[Any] = []
    for message in messages:
        rows.append("(" + ", ".join(["%s"] * len(_RECORD_COLUMNS)) + ")")
        params += [
            message.pk,
            message.status,
            message.provider_id,
            message.esp_message_id,
            message.attempts,
            message.last_error,
            ops.adapt_datetimefield_value(message.next_attempt_at),
            ops.adapt_datetimefield_value(message.sent_at),
        ]
    table = ops.quote_name(Message._meta.db_table)

    def col(name: str) -> str:
        return f"v.{name}::{_PG_CASTS[name]}" if is_pg and name in _PG_CASTS else f"v.{name}"

    assignments = ", ".join(f"{name} = {col(name)}" for name in _RECORD_COLUMNS[1:])
    # Names are ours, values are parameters.
    sql = (
        f"WITH v ({', '.join(_RECORD_COLUMNS)}) AS (VALUES {', '.join(rows)}) "  # noqa: S608
        f"UPDATE {table} SET {assignments}, lease_expires_at = NULL, updated_at = %s "
        f"FROM v WHERE {table}.id = {col('id')} AND {table}.status = %s"
    )
    params += [ops.adapt_datetimefield_value(timezone.now()), Message.Status.SENDING]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


def messages_reclaim_expired() -> int:
    """Put `sending` rows whose worker vanished back in the queue."""
    return Message.objects.filter(status=Message.Status.SENDING, lease_expires_at__lt=timezone.now()).update(
        status=Message.Status.QUEUED, lease_expires_at=None, last_error="lease expired; worker lost"
    )


def mailings_pump() -> list[int]:
    """Mailings with messages due now: the callers start sending tasks for them."""
    now = timezone.now()
    return list(
        Message.objects.filter(status=Message.Status.QUEUED)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .values_list("mailing_id", flat=True)
        .distinct()
        .order_by("mailing_id")[:100]
    )
