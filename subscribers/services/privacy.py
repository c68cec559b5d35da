"""Privacy requests from one subscriber: a copy of everything held about them, and erasure.

What subscribers and delivery hold is gathered here; what the apps above hold (webhooks' ESP events) comes
through the contributors they register in subscribers.personal_data, since this app may not import them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.admin.models import LogEntry
from django.db import transaction

from core.addresses import address_hash, normalize_email
from delivery.models import Message, Suppression
from delivery.selectors import suppression_is_erased
from delivery.services import messages_erase_address, suppression_erase_address
from subscribers import personal_data
from subscribers.exceptions import SubscriberNotFound
from subscribers.models import Subscriber, Subscription

logger = logging.getLogger(__name__)

ERASED_LOG_REPR = "(erased)"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def subscriber_get_by_email(*, email: str) -> Subscriber:
    """The subscriber a privacy request names, or an error that says why there is none."""
    address = normalize_email(email)
    subscriber = Subscriber.objects.filter(email=address).first()
    if subscriber is not None:
        return subscriber
    if suppression_is_erased(email=address):
        raise SubscriberNotFound(f"{address} was erased already: nothing is held under it but its hash.")
    raise SubscriberNotFound(f"No subscriber has the address {address}; nothing was exported or erased.")


def subscriber_data_export(*, subscriber: Subscriber) -> dict[str, Any]:
    """Everything held about the subscriber, JSON-ready, one section per kind of record.

    The same data gives the same document (no export time inside), so two exports can be compared.
    """
    address = subscriber.email
    subscriptions = (
        Subscription.objects.filter(subscriber=subscriber).select_related("mailing_list").order_by("created_at", "pk")
    )
    messages = Message.objects.filter(to_email=address).select_related("mailing").order_by("created_at", "pk")
    suppression = Suppression.objects.filter(email_hash=address_hash(address)).first()
    data: dict[str, Any] = {
        "profile": {
            "email": subscriber.email,
            "name": subscriber.name,
            "attributes": subscriber.attributes,
            "status": subscriber.status,
            "created_at": _iso(subscriber.created_at),
            "updated_at": _iso(subscriber.updated_at),
            "engagement": {
                "sent_count": subscriber.sent_count,
                "open_count": subscriber.open_count,
                "click_count": subscriber.click_count,
                "last_sent_at": _iso(subscriber.last_sent_at),
                "last_open_at": _iso(subscriber.last_open_at),
                "last_click_at": _iso(subscriber.last_click_at),
                "score": subscriber.engagement_score,
            },
        },
        "subscriptions": [
            {
                "list": subscription.mailing_list.slug,
                "list_name": subscription.mailing_list.name,
                "status": subscription.status,
                "source": subscription.source,
                "created_at": _iso(subscription.created_at),
                "confirmation_sent_at": _iso(subscription.confirmation_sent_at),
                "confirmed_at": _iso(subscription.confirmed_at),
                "unsubscribed_at": _iso(subscription.unsubscribed_at),
            }
            for subscription in subscriptions
        ],
        "messages": [
            {
                "mailing": str(message.mailing),
                "kind": message.mailing.kind,
                "status": message.status,
                "created_at": _iso(message.created_at),
                "sent_at": _iso(message.sent_at),
                "delivered_at": _iso(message.delivered_at),
                "opened_at": _iso(message.opened_at),
                "clicked_at": _iso(message.clicked_at),
            }
            for message in messages
        ],
        "suppression": None
        if suppression is None
        else {
            "reason": suppression.reason,
            "source": suppression.source,
            "detail": suppression.detail,
            "created_at": _iso(suppression.created_at),
        },
    }
    for contributor in personal_data.contributors():
        data[contributor.name] = contributor.exporter(email=address)
    return data


@dataclass(frozen=True)
class ErasureResult:
    email_hash: str
    subscriptions: int
    messages_stopped: int
    messages_anonymized: int
    suppression_reason: str
    suppression_created: bool
    contributed: dict[str, int]
    admin_log_entries: int

    def describe(self) -> str:
        """One line for the person who asked: what was erased, with counts."""
        parts = [
            f"{self.subscriptions} subscription(s) deleted",
            f"{self.messages_anonymized} message(s) anonymized ({self.messages_stopped} queued stopped)",
            *(f"{count} {name} scrubbed" for name, count in self.contributed.items()),
        ]
        if self.admin_log_entries:
            parts.append(f"{self.admin_log_entries} admin log entr(ies) scrubbed")
        kept = "new" if self.suppression_created else "existing"
        parts.append(f"suppressed by hash only ({kept} entry, reason {self.suppression_reason})")
        return "; ".join(parts)


@transaction.atomic
def subscriber_erase(*, subscriber: Subscriber, source: str) -> ErasureResult:
    """Forget the subscriber's address everywhere, keeping only its hash on the suppression list.

    The subscriber and their subscriptions are deleted; messages keep their status and dates under a
    placeholder address (campaign counts stay right); the contributors registered by other apps erase theirs;
    admin log lines that name the address lose it. The hash then keeps the address from being mailed or
    subscribed again (mailing_send_chunk, subscriber_upsert). All or nothing: one transaction.
    """
    locked = Subscriber.objects.select_for_update().filter(pk=subscriber.pk).first()
    if locked is None:
        raise SubscriberNotFound(f"Subscriber {subscriber.pk} no longer exists; nothing was erased.")
    address = locked.email
    # Contributors go first: they may find their rows through the messages, which still carry the address.
    contributed = {contributor.name: contributor.eraser(email=address) for contributor in personal_data.contributors()}
    stopped, anonymized = messages_erase_address(email=address)
    suppression, created = suppression_erase_address(email=address, source=source)
    subscriptions = Subscription.objects.filter(subscriber=locked).count()
    locked.delete()
    # The admin names objects by their str(), which for subscribers and suppressions is the address.
    log_entries = LogEntry.objects.filter(object_repr__icontains=address).update(object_repr=ERASED_LOG_REPR)
    result = ErasureResult(
        email_hash=suppression.email_hash,
        subscriptions=subscriptions,
        messages_stopped=stopped,
        messages_anonymized=anonymized,
        suppression_reason=suppression.reason,
        suppression_created=created,
        contributed=contributed,
        admin_log_entries=log_entries,
    )
    logger.info("subscriber erased: hash %s, source %s: %s", result.email_hash[:12], source, result.describe())
    return result
