from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from django.db import transaction
from django.db.models import Case, CharField, F, TextField, Value, When
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from core.addresses import normalize_email
from core.bulk import rows_update
from delivery.models import Mailing, Message, Provider

# How far along a message is. A status only moves to a higher rank, so a late `delivered` never
# overwrites a bounce or a complaint.
STATUS_RANK: dict[str, int] = {
    Message.Status.QUEUED: 0,
    Message.Status.SENDING: 1,
    Message.Status.FAILED: 2,
    Message.Status.CANCELLED: 2,
    Message.Status.DEAD: 2,
    Message.Status.SENT: 3,
    Message.Status.DELIVERED: 4,
    Message.Status.BOUNCED: 5,
    Message.Status.COMPLAINED: 6,
    Message.Status.SUPPRESSED: 7,
}


def mailing_create(
    *,
    subject_template: str,
    html_template: str,
    text_template: str,
    from_email: str,
    kind: str = Mailing.Kind.CAMPAIGN,
    name: str = "",
    reply_to: str = "",
    headers: dict[str, str] | None = None,
    provider: Provider | None = None,
    list_id: str = "",
    owner_data: dict[str, Any] | None = None,
) -> Mailing:
    return Mailing.objects.create(
        kind=kind,
        name=name,
        subject_template=subject_template,
        html_template=html_template,
        text_template=text_template,
        from_email=from_email,
        reply_to=reply_to,
        headers=headers or {},
        provider=provider,
        list_id=list_id,
        owner_data=owner_data or {},
    )


class MessageReportState(Protocol):
    """What message_report_apply reads and changes: a Message, or a lighter object with the same fields (an
    apply of many events reads a thousand messages at once, and model instances cost more than the apply)."""

    status: str
    delivered_at: datetime | None
    opened_at: datetime | None
    clicked_at: datetime | None
    last_error: str


def message_report_apply(
    message: MessageReportState, *, status: str, occurred_at: datetime, error: str = ""
) -> list[str]:
    """What the ESP reported about a message, applied to it in memory; returns the fields that changed.

    The status only moves forward (STATUS_RANK), so a late `delivered` never overwrites a bounce. The first
    delivery, open and click keep their time: a report of an earlier one (events arrive out of order) moves the
    stamp back, a later one leaves it. Opens and clicks are not statuses: they only stamp. A delivery is stamped
    whatever the status, so that a complaint applied before its delivery still leaves the delivery counted.
    """
    fields: list[str] = []
    stamp = {"opened": "opened_at", "clicked": "clicked_at", Message.Status.DELIVERED: "delivered_at"}.get(status)
    if stamp is not None:
        first = getattr(message, stamp)
        if first is None or occurred_at < first:
            setattr(message, stamp, occurred_at)
            fields.append(stamp)
    if status in ("opened", "clicked"):
        return fields
    if STATUS_RANK.get(status, -1) > STATUS_RANK.get(message.status, -1):
        message.status = status
        fields.append("status")
        if error:
            message.last_error = error[:2000]
            fields.append("last_error")
    return fields


def message_status_apply(*, message: Message, status: str, occurred_at: datetime, error: str = "") -> bool:
    """Apply one report to one message and save it (message_report_apply has the rules). Returns whether anything
    changed."""
    fields = message_report_apply(message, status=status, occurred_at=occurred_at, error=error)
    if fields:
        message.save(update_fields=[*fields, "updated_at"])
    return bool(fields)


# The fields message_report_apply may change, written by messages_reports_save.
REPORT_FIELDS = ("status", "delivered_at", "opened_at", "clicked_at", "last_error")


def messages_reports_save(*, messages: Sequence[Any]) -> int:
    """Write the reports applied in memory to many messages (Messages or objects with an `id` and REPORT_FIELDS):
    one statement."""
    return rows_update(model=Message, objects=messages, fields=REPORT_FIELDS, touch="updated_at")


def mailing_cancel(*, mailing: Mailing) -> int:
    """Stop a mailing: messages not yet handed to a worker end `cancelled`; a chunk in flight finishes."""
    return Message.objects.filter(mailing=mailing, status=Message.Status.QUEUED).update(
        status=Message.Status.CANCELLED, last_error="mailing cancelled"
    )


ERASED_DOMAIN = "erased.invalid"


@transaction.atomic
def messages_erase_address(*, email: str) -> tuple[int, int]:
    """Forget an address in every message to it: returns (messages stopped, messages anonymized).

    Messages still queued end `suppressed`; a message already claimed by a worker may still go out, and its
    outcome is recorded over the anonymized row. Each row keeps its status and dates (the mailing's counts
    stay right) but gets a placeholder address unique per row, since a mailing holds each address once, and
    loses its personal context, and its last error where that quotes the address (MTA responses often do).
    """
    address = normalize_email(email)
    messages = Message.objects.filter(to_email=address)
    stopped = messages.filter(status=Message.Status.QUEUED).update(
        status=Message.Status.SUPPRESSED, last_error="address erased on request"
    )
    anonymized = messages.update(
        to_email=Concat(
            Value("erased-"), Cast("pk", CharField()), Value(f"@{ERASED_DOMAIN}"), output_field=CharField()
        ),
        context={},
        last_error=Case(
            When(last_error__icontains=address, then=Value("")), default=F("last_error"), output_field=TextField()
        ),
        updated_at=timezone.now(),
    )
    return stopped, anonymized


def mailing_pause(*, mailing: Mailing) -> bool:
    """Stop claiming: takes effect at the next chunk; a chunk already in flight finishes and is recorded."""
    return bool(Mailing.objects.filter(pk=mailing.pk, is_paused=False).update(is_paused=True))


def mailing_resume(*, mailing: Mailing) -> bool:
    """Claim again. Only queued messages are ever claimed, so nothing sent before the pause goes twice."""
    from delivery.tasks import mailing_send_start

    resumed = bool(Mailing.objects.filter(pk=mailing.pk, is_paused=True).update(is_paused=False))
    if resumed:
        mailing_send_start(mailing.pk)
    return resumed
