"""Subscribers and their list-level consent: create, unsubscribe, clean."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from core.addresses import email_clean, normalize_email
from delivery.models import Message, Suppression
from delivery.selectors import suppression_is_erased
from delivery.services import suppression_add
from delivery.services.stats import Unsubscribe, message_unsubscribes_record
from delivery.unsubscribe import unsubscribe_token_read
from subscribers.exceptions import AddressErased, UnsubscribeLinkInvalid
from subscribers.models import MailingList, Subscriber, Subscription
from subscribers.services.optin import OPTIN_RESEND_THROTTLE, optin_confirmation_send


@transaction.atomic
def subscriber_upsert(*, email: str, name: str = "", attributes: dict[str, Any] | None = None) -> Subscriber:
    """Create or update a subscriber by normalized address; attributes are merged, never dropped.

    An erased address is refused: its owner asked to be forgotten, and only its hash is left to say so.
    """
    address = email_clean(email)
    if suppression_is_erased(email=address):
        raise AddressErased(
            f"{address} was erased at its owner's request and cannot be added again.", {"email": address}
        )
    subscriber, created = Subscriber.objects.get_or_create(
        email=address, defaults={"name": name, "attributes": attributes or {}}
    )
    if not created:
        changed = []
        if name and name != subscriber.name:
            subscriber.name = name
            changed.append("name")
        if attributes:
            merged = {**subscriber.attributes, **attributes}
            if merged != subscriber.attributes:
                subscriber.attributes = merged
                changed.append("attributes")
        if changed:
            subscriber.save(update_fields=[*changed, "updated_at"])
    return subscriber


@transaction.atomic
def subscription_create(
    *,
    mailing_list: MailingList,
    email: str,
    name: str = "",
    attributes: dict[str, Any] | None = None,
    source: str = "admin",
) -> Subscription:
    """Subscribe an address to a list. An unsubscribed subscription stays unsubscribed: consent given up is
    not taken back silently.

    On a double opt-in list a new subscription is pending, and the address gets a confirmation link once this
    commits. Signing up again while pending re-sends it (the first may have been lost), at most once per
    OPTIN_RESEND_THROTTLE, so that nobody can flood an address through the sign-up form.
    """
    subscriber = subscriber_upsert(email=email, name=name, attributes=attributes)
    initial = Subscription.Status.PENDING if mailing_list.double_opt_in else Subscription.Status.ACTIVE
    subscription, created = Subscription.objects.get_or_create(
        subscriber=subscriber,
        mailing_list=mailing_list,
        defaults={"status": initial, "source": source},
    )
    if subscription.status == Subscription.Status.PENDING:
        optin_confirmation_send(subscription=subscription, throttle=None if created else OPTIN_RESEND_THROTTLE)
    return subscription


@transaction.atomic
def subscriber_unsubscribe(*, subscriber: Subscriber, list_ids: list[int] | None, source: str) -> int:
    """Leave the given lists, or everything when list_ids is None. Returns how many subscriptions ended."""
    now = timezone.now()
    subscriptions = Subscription.objects.filter(subscriber=subscriber).exclude(status=Subscription.Status.UNSUBSCRIBED)
    if list_ids is not None:
        subscriptions = subscriptions.filter(mailing_list_id__in=list_ids)
    ended = subscriptions.update(status=Subscription.Status.UNSUBSCRIBED, unsubscribed_at=now, source=source)
    if list_ids is None and subscriber.status == Subscriber.Status.ACTIVE:
        subscriber.status = Subscriber.Status.UNSUBSCRIBED
        subscriber.save(update_fields=["status", "updated_at"])
    return ended


def unsubscribe_link_resolve(*, token: str) -> Message:
    message_id = unsubscribe_token_read(token)
    message = Message.objects.select_related("mailing").filter(pk=message_id).first() if message_id else None
    if message is None:
        raise UnsubscribeLinkInvalid("This unsubscribe link is not valid. It may have been altered or cut short.")
    return message


@transaction.atomic
def unsubscribe_by_link(*, token: str) -> Message:
    """One-click unsubscribe: leave the lists the message was sent to (everything if it named none).

    Idempotent: a second POST (mail clients and scanners repeat them) changes nothing more.
    """
    message = unsubscribe_link_resolve(token=token)
    subscriber = Subscriber.objects.filter(email=normalize_email(message.to_email)).first()
    list_ids = message.mailing.owner_data.get("list_ids")
    if subscriber is not None:
        subscriber_unsubscribe(subscriber=subscriber, list_ids=list_ids or None, source="unsubscribe-link")
    elif not list_ids:
        # Not a subscriber (a one-off mailing): make sure that address hears from us no more.
        suppression_add(email=message.to_email, reason=Suppression.Reason.UNSUBSCRIBE, source="unsubscribe-link")
    # The mailing's `unsubscribed` number: once per message, whether the link, the ESP or both report it.
    unsubscribe = Unsubscribe(message.pk, message.mailing_id, timezone.now(), "unsubscribe-link")
    message_unsubscribes_record(unsubscribes=[unsubscribe])
    return message


@transaction.atomic
def subscriber_clean(*, email: str, reason: str) -> bool:
    """After a hard bounce or complaint: the subscriber is cleaned; a complaint also ends every subscription."""
    subscriber = Subscriber.objects.filter(email=normalize_email(email)).first()
    if subscriber is None:
        return False
    if reason == Suppression.Reason.COMPLAINT:
        subscriber_unsubscribe(subscriber=subscriber, list_ids=None, source="complaint")
    if subscriber.status != Subscriber.Status.CLEANED:
        subscriber.status = Subscriber.Status.CLEANED
        subscriber.save(update_fields=["status", "updated_at"])
    return True


@transaction.atomic
def subscribers_clean(*, reasons: dict[str, str]) -> int:
    """subscriber_clean for many addresses ({address: reason}) in two statements, as applying a batch of ESP
    events needs it; the same end state. Returns the number of subscribers newly cleaned."""
    addresses = {normalize_email(email): reason for email, reason in reasons.items()}
    now = timezone.now()
    complained = [address for address, reason in addresses.items() if reason == Suppression.Reason.COMPLAINT]
    if complained:
        Subscription.objects.filter(subscriber__email__in=complained).exclude(
            status=Subscription.Status.UNSUBSCRIBED
        ).update(status=Subscription.Status.UNSUBSCRIBED, unsubscribed_at=now, source="complaint", updated_at=now)
    return (
        Subscriber.objects.filter(email__in=list(addresses))
        .exclude(status=Subscriber.Status.CLEANED)
        .update(status=Subscriber.Status.CLEANED, updated_at=now)
    )
