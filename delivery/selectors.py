from __future__ import annotations

from django.db.models import Count

from core.addresses import address_hash
from delivery.models import Message, Suppression


def message_status_counts(*, mailing_id: int) -> dict[str, int]:
    """Counts per status, with every status present (zeros included) so pages and APIs show a stable shape."""
    counts = {status: 0 for status in Message.Status.values}
    rows = Message.objects.filter(mailing_id=mailing_id).values_list("status").order_by()
    for status, count in rows.annotate(n=Count("pk")).values_list("status", "n"):
        counts[status] = count
    return counts


def mailing_has_pending(*, mailing_id: int) -> bool:
    return Message.objects.filter(mailing_id=mailing_id, status__in=Message.PENDING_STATUSES).exists()


def suppression_is_suppressed(*, email: str) -> bool:
    """By hash: an erased person's suppression keeps only the hash of the address, and must still count."""
    return Suppression.objects.filter(email_hash=address_hash(email)).exists()


def suppression_is_erased(*, email: str) -> bool:
    """Whether the address's owner had it erased: the suppression list keeps its hash and no address."""
    return Suppression.objects.filter(email_hash=address_hash(email), email=None).exists()
