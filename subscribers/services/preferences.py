"""The preference page behind the signed link in every bulk message: which lists the recipient is on, and their
choices. The link names a Message; its address (normalized) finds the subscriber. Having the link proves the
mailbox, so a list ticked again is active at once, without another confirmation; never for a suppressed address.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction

from core.addresses import normalize_email
from delivery.models import Message
from delivery.selectors import suppression_is_suppressed
from delivery.unsubscribe import preferences_token_read
from subscribers.exceptions import PreferencesLinkInvalid
from subscribers.models import Subscriber, Subscription
from subscribers.services.optin import subscriptions_activate
from subscribers.services.subscriptions import subscriber_unsubscribe

SOURCE = "preference-page"


def preferences_subscriber_resolve(*, token: str) -> Subscriber | None:
    """The subscriber the link was sent to, or None when there is none any more (erased, or never was one).
    PreferencesLinkInvalid when the token was altered or its message is gone."""
    message_id = preferences_token_read(token)
    to_email = Message.objects.filter(pk=message_id).values_list("to_email", flat=True).first() if message_id else None
    if to_email is None:
        raise PreferencesLinkInvalid("This link is not valid. It may have been altered or cut short.")
    return Subscriber.objects.filter(email=normalize_email(to_email)).first()


def preferences_subscriptions(*, subscriber: Subscriber) -> list[Subscription]:
    """Every list the subscriber has a subscription to, whatever its state, in list order."""
    return list(
        Subscription.objects.filter(subscriber=subscriber)
        .select_related("mailing_list")
        .order_by("mailing_list__name", "mailing_list_id")
    )


@dataclass(frozen=True)
class PreferencesSaved:
    subscribed: int
    unsubscribed: int
    refused: int  # lists ticked again that a suppressed address may not rejoin


@transaction.atomic
def preferences_save(*, subscriber: Subscriber, subscribed_list_ids: Iterable[int]) -> PreferencesSaved:
    """Apply the page's checkboxes: lists left unticked end, ticked ones are active.

    Only the subscriber's own subscriptions count: an id of another list in the form is ignored, so the page
    can change consent but never add a list the person was not on.
    """
    wanted = set(subscribed_list_ids)
    current = {s.mailing_list_id: s.status for s in Subscription.objects.filter(subscriber=subscriber)}
    ended, active = Subscription.Status.UNSUBSCRIBED, Subscription.Status.ACTIVE
    to_leave = [list_id for list_id, status in current.items() if list_id not in wanted and status != ended]
    to_join = [list_id for list_id, status in current.items() if list_id in wanted and status != active]
    unsubscribed = subscriber_unsubscribe(subscriber=subscriber, list_ids=to_leave, source=SOURCE) if to_leave else 0
    subscribed = refused = 0
    if to_join:
        if suppression_is_suppressed(email=subscriber.email):
            refused = len(to_join)
        else:
            subscribed = subscriptions_activate(subscriber=subscriber, list_ids=to_join, source=SOURCE)
    return PreferencesSaved(subscribed=subscribed, unsubscribed=unsubscribed, refused=refused)


def preferences_unsubscribe_all(*, subscriber: Subscriber) -> int:
    """The page's "Unsubscribe from everything": every list, and the subscriber as a whole."""
    return subscriber_unsubscribe(subscriber=subscriber, list_ids=None, source=SOURCE)
