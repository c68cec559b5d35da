"""Double opt-in: a sign-up to a list that asks for it stays pending until the address confirms it by a signed,
expiring link sent through delivery; and an explicit opt-in (that link, or the preference page) activates.

A confirmation is mail the person asked for, not marketing: it goes out as a SYSTEM mailing (no List-Unsubscribe,
no footer), one Mailing per confirmation since each carries its own link, and never to a suppressed address.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from delivery.models import Mailing, Message, Suppression
from delivery.selectors import suppression_is_suppressed
from delivery.services import mailing_create
from delivery.tasks import mailing_send_start
from subscribers.exceptions import OptinLinkExpired, OptinLinkInvalid, OptinRefused
from subscribers.models import MailingList, Subscriber, Subscription

# A repeated sign-up re-sends the confirmation (the first one may have been lost), but not more often than this:
# anyone can type someone else's address into a sign-up form, again and again.
OPTIN_RESEND_THROTTLE = timedelta(minutes=10)

_SALT = "mailer.optin"

CONFIRMATION_SUBJECT = "Please confirm your subscription to {{ list_name }}"
CONFIRMATION_TEXT = """Hello{% if name %} {{ name }}{% endif %},

Someone, hopefully you, asked to subscribe {{ email }} to {{ list_name }}.

To confirm, open this link and press "Confirm subscription":
{{ confirm_url }}

The link works for {{ expiry_days }} day{{ "s" if expiry_days != 1 }}. If you did not ask for this, ignore this email:
you will not be subscribed, and we will not write again.
"""
CONFIRMATION_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Confirm your subscription</title></head>
<body style="margin:0;padding:24px;background:#f4f5f7;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d1f23">
<div style="max-width:32rem;margin:0 auto;background:#fff;padding:24px;border-radius:8px">
<p>Hello{% if name %} {{ name }}{% endif %},</p>
<p>Someone, hopefully you, asked to subscribe <strong>{{ email }}</strong> to <strong>{{ list_name }}</strong>.</p>
<p><a href="{{ confirm_url }}" style="display:inline-block;padding:12px 20px;background:#1f5fbf;color:#fff;text-decoration:none;border-radius:6px">Confirm my subscription</a></p>
<p style="font-size:14px;color:#5a5f69;word-break:break-all">Or paste this link into your browser: {{ confirm_url }}</p>
<p style="font-size:14px;color:#5a5f69">The link works for {{ expiry_days }} day{{ "s" if expiry_days != 1 }}.
If you did not ask for this, ignore this email: you will not be subscribed, and we will not write again.</p>
</div></body></html>
"""  # noqa: E501 - an email's inline styles read better on one line each


def _expiry() -> timedelta:
    return timedelta(days=settings.MAILER_OPTIN_EXPIRY_DAYS)


def optin_token_make(*, subscription_id: int) -> str:
    return signing.dumps(subscription_id, salt=_SALT, compress=False)


def optin_url(*, subscription_id: int) -> str:
    return settings.MAILER_BASE_URL + reverse("optin_confirm", args=[optin_token_make(subscription_id=subscription_id)])


def optin_link_resolve(*, token: str) -> Subscription:
    """The subscription a confirmation link names; OptinLinkExpired past MAILER_OPTIN_EXPIRY_DAYS, OptinLinkInvalid
    when it was altered or names a subscription that no longer exists (an erased subscriber), OptinRefused when
    the subscription was ended since."""
    try:
        subscription_id = signing.loads(token, salt=_SALT, max_age=_expiry())
    except signing.SignatureExpired as exc:
        days = settings.MAILER_OPTIN_EXPIRY_DAYS
        raise OptinLinkExpired(
            f"Confirmation links work for {days} day{'s' if days != 1 else ''}, and this one is older. "
            "To get a new link, sign up again with the same address.",
            {"expiry_days": settings.MAILER_OPTIN_EXPIRY_DAYS},
        ) from exc
    except signing.BadSignature as exc:
        raise OptinLinkInvalid("This confirmation link is not valid. It may have been altered or cut short.") from exc
    subscription = (
        Subscription.objects.select_related("subscriber", "mailing_list").filter(pk=subscription_id).first()
        if isinstance(subscription_id, int)
        else None
    )
    if subscription is None:
        raise OptinLinkInvalid("This confirmation link is not valid any more: there is nothing to confirm.")
    _refuse_if_ended(subscription)
    return subscription


def _refuse_if_ended(subscription: Subscription) -> None:
    """Leaving outranks an older confirmation link: an ended subscription stays ended."""
    if subscription.status == Subscription.Status.UNSUBSCRIBED:
        raise OptinRefused(
            f"This subscription to {subscription.mailing_list.name} was ended after the link was sent. "
            "To subscribe again, sign up again."
        )


@transaction.atomic
def optin_confirmation_send(*, subscription: Subscription, throttle: timedelta | None = None) -> Message | None:
    """Send the confirmation email of a pending subscription; returns its Message, or None when nothing was sent:
    the subscription is not pending, the address is suppressed, or (with `throttle`) one went out more recently.

    confirmation_sent_at is claimed with a conditional UPDATE, so two sign-ups racing each other send one email.
    Sending starts after the transaction commits.
    """
    subscriber = subscription.subscriber
    if suppression_is_suppressed(email=subscriber.email):
        return None
    now = timezone.now()
    claim = Subscription.objects.filter(pk=subscription.pk, status=Subscription.Status.PENDING)
    if throttle is not None:
        claim = claim.filter(Q(confirmation_sent_at__isnull=True) | Q(confirmation_sent_at__lte=now - throttle))
    if not claim.update(confirmation_sent_at=now, updated_at=now):
        return None
    subscription.confirmation_sent_at = now
    mailing_list = subscription.mailing_list
    mailing = mailing_create(
        kind=Mailing.Kind.SYSTEM,
        name=f"Confirmation: {mailing_list.name}"[:200],
        subject_template=CONFIRMATION_SUBJECT,
        html_template=CONFIRMATION_HTML,
        text_template=CONFIRMATION_TEXT,
        from_email=mailing_list.from_email or settings.DEFAULT_FROM_EMAIL,
        owner_data={"optin_subscription_id": subscription.pk},
    )
    message = Message.objects.create(
        mailing=mailing,
        to_email=subscriber.email,
        context={
            "email": subscriber.email,
            "name": subscriber.name,
            "list_name": mailing_list.name,
            "confirm_url": optin_url(subscription_id=subscription.pk),
            "expiry_days": settings.MAILER_OPTIN_EXPIRY_DAYS,
        },
    )
    mailing_send_start(mailing.pk, parallelism=1)
    return message


def subscriptions_activate(*, subscriber: Subscriber, list_ids: list[int], source: str) -> int:
    """Activate the subscriber's pending or unsubscribed subscriptions to these lists, after an explicit opt-in
    from the mailbox itself (a confirmation link, the preference page). Returns how many became active.

    Refused for a suppressed address: the suppression list outranks any list. A subscriber who had left
    everything is active again, or the campaigns' audience would still pass them over.
    """
    if suppression_is_suppressed(email=subscriber.email):
        raise OptinRefused(
            "This address cannot be subscribed: our records say it must not receive email from us.",
            {"email": subscriber.email},
        )
    now = timezone.now()
    activated = (
        Subscription.objects.filter(subscriber=subscriber, mailing_list_id__in=list_ids)
        .exclude(status=Subscription.Status.ACTIVE)
        .update(
            status=Subscription.Status.ACTIVE, confirmed_at=now, unsubscribed_at=None, source=source, updated_at=now
        )
    )
    if activated and subscriber.status == Subscriber.Status.UNSUBSCRIBED:
        subscriber.status = Subscriber.Status.ACTIVE
        subscriber.save(update_fields=["status", "updated_at"])
    return activated


@transaction.atomic
def optin_confirm(*, token: str) -> Subscription:
    """Confirm a pending subscription by its link. Idempotent: an active one is returned as it is.

    A subscription that was ended after the link went out stays ended (OptinRefused): leaving outranks an older
    confirmation. A suppressed address is never activated (OptinRefused).
    """
    subscription = optin_link_resolve(token=token)
    subscription = (
        Subscription.objects.select_for_update().select_related("subscriber", "mailing_list").get(pk=subscription.pk)
    )
    if subscription.status == Subscription.Status.ACTIVE:
        return subscription
    _refuse_if_ended(subscription)
    subscriptions_activate(
        subscriber=subscription.subscriber, list_ids=[subscription.mailing_list_id], source="double-opt-in"
    )
    subscription.refresh_from_db()
    return subscription


def optin_expired_pending(*, mailing_list: MailingList | None = None) -> QuerySet[Subscription]:
    """Pending subscriptions whose confirmation link has expired, suppressed addresses left out."""
    subscriptions = Subscription.objects.filter(
        status=Subscription.Status.PENDING, confirmation_sent_at__lt=timezone.now() - _expiry()
    ).exclude(Exists(Suppression.objects.filter(email=OuterRef("subscriber__email"))))
    if mailing_list is not None:
        subscriptions = subscriptions.filter(mailing_list=mailing_list)
    return subscriptions.select_related("subscriber", "mailing_list").order_by("pk")


def optin_confirmations_resend(*, mailing_list: MailingList | None = None) -> int:
    """Send a fresh link to each pending subscription whose link has expired. Returns how many went out.

    One transaction per subscription, each sending once it commits; the expiry doubles as the throttle, so two runs
    at once send each link once. Each run re-sends to every expired one: run it by hand, not on a schedule.
    """
    sent = 0
    for subscription in list(optin_expired_pending(mailing_list=mailing_list)):
        if optin_confirmation_send(subscription=subscription, throttle=_expiry()) is not None:
            sent += 1
    return sent
