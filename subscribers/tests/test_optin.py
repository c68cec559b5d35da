"""Double opt-in: a sign-up to a list that asks for it is pending until the address confirms it by a signed,
expiring link that goes out through delivery and the ESP sandbox."""

import re
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core import signing
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from delivery.models import Mailing, Message
from delivery.services import mailing_send_chunk, suppression_add
from subscribers.exceptions import OptinLinkExpired, OptinLinkInvalid, OptinRefused
from subscribers.models import Subscriber, Subscription
from subscribers.selectors import audience_subscribers
from subscribers.services import subscription_create
from subscribers.services.optin import optin_confirm, optin_token_make
from tests.factories import MailingListFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

LINK = re.compile(r"https?://[^/\s]+(/confirm/[^/\s]+/)")


@pytest.fixture
def news():
    return MailingListFactory(
        name="Weekly News", slug="news", double_opt_in=True, from_email="News <news@mailer.example>"
    )


def sign_up(news, captured, email="ann@example.org", **fields) -> Subscription:
    with captured() as callbacks:
        subscription = subscription_create(mailing_list=news, email=email, source="form", **fields)
    assert len(callbacks) <= 1
    return subscription


def confirmation_messages(email="ann@example.org"):
    return Message.objects.filter(to_email=email, mailing__kind=Mailing.Kind.SYSTEM).order_by("pk")


def expired_token(subscription_id: int, monkeypatch, days: int = 8) -> str:
    """A genuine token signed `days` ago: the signer's clock is set back while it signs."""
    with monkeypatch.context() as patch:
        patch.setattr(
            signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(int(time.time()) - days * 86400)
        )
        return optin_token_make(subscription_id=subscription_id)


def test_a_sign_up_is_pending_and_its_confirmation_goes_out_with_a_working_link(
    news, sandbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        subscription = subscription_create(mailing_list=news, email="Ann@Example.org", name="Ann", source="form")

    assert subscription.status == Subscription.Status.PENDING
    assert subscription.confirmation_sent_at is not None and subscription.confirmed_at is None
    assert len(callbacks) == 1  # sending starts once the sign-up is committed
    message = confirmation_messages().get()
    assert message.mailing.from_email == "News <news@mailer.example>"
    assert message.mailing.is_bulk is False

    result = mailing_send_chunk(mailing_id=message.mailing_id)

    assert (result.sent, result.failed) == (1, 0)
    [received] = sandbox.messages
    assert received.to == ["ann@example.org"]
    assert received.subject == "Please confirm your subscription to Weekly News"
    assert "Hello Ann," in received.text and "Weekly News" in received.html
    assert "7 days" in received.text
    assert "list-unsubscribe" not in {k.lower() for k in received.headers}  # asked-for mail, not a campaign
    path = LINK.search(received.text).group(1)
    assert path in received.html

    page = Client().get(path)
    assert page.status_code == 200
    assert "Weekly News" in page.content.decode() and "Confirm subscription" in page.content.decode()
    assert '<form method="post"' in page.content.decode()
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.PENDING  # GET asks; a link scanner confirms nothing

    done = Client(enforce_csrf_checks=True).post(path)

    assert done.status_code == 200
    assert "Thank you, you are subscribed" in done.content.decode()
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE
    assert subscription.confirmed_at is not None


def test_a_list_without_double_opt_in_subscribes_at_once_and_sends_nothing(django_capture_on_commit_callbacks):
    plain = MailingListFactory(double_opt_in=False)

    subscription = sign_up(plain, django_capture_on_commit_callbacks)

    assert subscription.status == Subscription.Status.ACTIVE
    assert not confirmation_messages().exists()


def test_signing_up_again_resends_only_after_the_throttle(news, django_capture_on_commit_callbacks):
    subscription = sign_up(news, django_capture_on_commit_callbacks)

    sign_up(news, django_capture_on_commit_callbacks)
    sign_up(news, django_capture_on_commit_callbacks)
    assert confirmation_messages().count() == 1

    Subscription.objects.filter(pk=subscription.pk).update(confirmation_sent_at=timezone.now() - timedelta(minutes=11))
    again = sign_up(news, django_capture_on_commit_callbacks)

    assert again.status == Subscription.Status.PENDING
    assert confirmation_messages().count() == 2


@pytest.mark.parametrize("status", [Subscription.Status.ACTIVE, Subscription.Status.UNSUBSCRIBED])
def test_signing_up_again_leaves_an_active_or_unsubscribed_subscription_as_it_is(
    news, status, django_capture_on_commit_callbacks
):
    SubscriptionFactory(mailing_list=news, subscriber__email="ann@example.org", status=status)

    subscription = sign_up(news, django_capture_on_commit_callbacks)

    assert subscription.status == status
    assert not confirmation_messages().exists()


def test_a_suppressed_address_gets_no_confirmation_and_cannot_be_confirmed(news, django_capture_on_commit_callbacks):
    suppression_add(email="ann@example.org", reason="hard_bounce", source="test")

    subscription = sign_up(news, django_capture_on_commit_callbacks)

    assert subscription.status == Subscription.Status.PENDING
    assert not confirmation_messages().exists()
    with pytest.raises(OptinRefused):
        optin_confirm(token=optin_token_make(subscription_id=subscription.pk))
    response = Client().post(f"/confirm/{optin_token_make(subscription_id=subscription.pk)}/")
    assert response.status_code == 409
    subscription.refresh_from_db()
    assert (subscription.status, subscription.confirmed_at) == (Subscription.Status.PENDING, None)


def test_confirming_twice_is_harmless(news, django_capture_on_commit_callbacks):
    subscription = sign_up(news, django_capture_on_commit_callbacks)
    token = optin_token_make(subscription_id=subscription.pk)

    first = optin_confirm(token=token)
    second = optin_confirm(token=token)

    assert first.status == second.status == Subscription.Status.ACTIVE
    assert second.confirmed_at == first.confirmed_at
    page = Client().get(f"/confirm/{token}/").content.decode()
    assert "You are already subscribed" in page and "<form" not in page
    assert Client().post(f"/confirm/{token}/").status_code == 200


def test_a_subscription_ended_after_the_link_went_out_stays_ended(news, django_capture_on_commit_callbacks):
    subscription = sign_up(news, django_capture_on_commit_callbacks)
    Subscription.objects.filter(pk=subscription.pk).update(status=Subscription.Status.UNSUBSCRIBED)
    url = f"/confirm/{optin_token_make(subscription_id=subscription.pk)}/"

    for response in (Client().get(url), Client().post(url)):
        assert response.status_code == 409
        assert "was ended after the link was sent" in response.content.decode()
        assert "<form" not in response.content.decode()
    assert Subscription.objects.get(pk=subscription.pk).status == Subscription.Status.UNSUBSCRIBED


def test_confirming_reactivates_a_subscriber_who_had_left_everything(news, django_capture_on_commit_callbacks):
    subscription = sign_up(news, django_capture_on_commit_callbacks)
    Subscriber.objects.filter(pk=subscription.subscriber_id).update(status=Subscriber.Status.UNSUBSCRIBED)

    optin_confirm(token=optin_token_make(subscription_id=subscription.pk))

    assert Subscriber.objects.get(pk=subscription.subscriber_id).status == Subscriber.Status.ACTIVE


def test_an_expired_link_is_refused_and_says_how_to_get_a_new_one(
    news, monkeypatch, django_capture_on_commit_callbacks
):
    subscription = sign_up(news, django_capture_on_commit_callbacks)
    token = expired_token(subscription.pk, monkeypatch)

    with pytest.raises(OptinLinkExpired):
        optin_confirm(token=token)
    for response in (Client().get(f"/confirm/{token}/"), Client().post(f"/confirm/{token}/")):
        assert response.status_code == 410
        assert "This link has expired" in response.content.decode()
        assert "sign up again" in response.content.decode()
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.PENDING


def test_a_link_within_its_expiry_still_works(news, monkeypatch, django_capture_on_commit_callbacks):
    subscription = sign_up(news, django_capture_on_commit_callbacks)

    optin_confirm(token=expired_token(subscription.pk, monkeypatch, days=6))

    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE


@pytest.mark.parametrize("tamper", ["garbage", "swap-id", "other-salt"])
def test_an_altered_link_is_refused_and_changes_nothing(news, tamper, django_capture_on_commit_callbacks):
    subscription = sign_up(news, django_capture_on_commit_callbacks)
    other = sign_up(news, django_capture_on_commit_callbacks, email="bob@example.org")
    _, signed_part = optin_token_make(subscription_id=subscription.pk).split(":", 1)
    token = {
        "garbage": "garbage",
        "swap-id": signing.b64_encode(str(other.pk).encode()).decode() + ":" + signed_part,
        "other-salt": signing.dumps(subscription.pk, salt="mailer.preferences"),
    }[tamper]

    with pytest.raises(OptinLinkInvalid):
        optin_confirm(token=token)
    response = Client().post(f"/confirm/{token}/")
    assert response.status_code == 404
    assert "not valid" in response.content.decode()
    assert set(Subscription.objects.values_list("status", flat=True)) == {Subscription.Status.PENDING}


def test_pending_subscribers_receive_no_campaign(news, django_capture_on_commit_callbacks):
    sign_up(news, django_capture_on_commit_callbacks, email="pending@example.org")
    confirmed = sign_up(news, django_capture_on_commit_callbacks, email="confirmed@example.org")
    optin_confirm(token=optin_token_make(subscription_id=confirmed.pk))

    # the campaign fan-out's audience (campaigns/tests prove the fan-out sends only to it)
    audience = audience_subscribers(list_ids=[news.pk])
    assert list(audience.values_list("email", flat=True)) == ["confirmed@example.org"]
    assert list(audience_subscribers(list_ids=[], segment_rules={"field": "status", "op": "eq", "value": "active"})
                .values_list("email", flat=True)) == ["confirmed@example.org"]  # fmt: skip


def test_the_resend_command_sends_fresh_links_only_for_expired_confirmations(
    news, settings, django_capture_on_commit_callbacks
):
    other_list = MailingListFactory(slug="other", double_opt_in=True)
    old = sign_up(news, django_capture_on_commit_callbacks, email="old@example.org")
    recent = sign_up(news, django_capture_on_commit_callbacks, email="recent@example.org")
    old_elsewhere = sign_up(other_list, django_capture_on_commit_callbacks, email="elsewhere@example.org")
    confirmed = sign_up(news, django_capture_on_commit_callbacks, email="confirmed@example.org")
    optin_confirm(token=optin_token_make(subscription_id=confirmed.pk))
    long_ago = timezone.now() - timedelta(days=settings.MAILER_OPTIN_EXPIRY_DAYS, minutes=1)
    Subscription.objects.filter(pk__in=[old.pk, old_elsewhere.pk, confirmed.pk]).update(confirmation_sent_at=long_ago)
    Subscription.objects.filter(pk=recent.pk).update(confirmation_sent_at=timezone.now() - timedelta(days=6))
    before = Message.objects.count()

    dry = StringIO()
    call_command("optin_resend", "--list", "news", "--dry-run", stdout=dry)
    assert "Dry run, nothing sent: 1 expired confirmation(s) on 'news' would be re-sent." in dry.getvalue()
    assert Message.objects.count() == before

    out = StringIO()
    with django_capture_on_commit_callbacks() as callbacks:
        call_command("optin_resend", "--list", "news", stdout=out)

    assert "Re-sent 1 expired confirmation(s) on 'news'." in out.getvalue()
    assert len(callbacks) == 1
    assert [m.to_email for m in Message.objects.order_by("pk")[before:]] == ["old@example.org"]
    old.refresh_from_db()
    assert old.confirmation_sent_at > long_ago

    with django_capture_on_commit_callbacks():
        call_command("optin_resend", stdout=(everywhere := StringIO()))
    assert "Re-sent 1 expired confirmation(s)." in everywhere.getvalue()  # the other list's; "old" is fresh now
    assert confirmation_messages("elsewhere@example.org").count() == 2


def test_the_resend_command_names_an_unknown_list():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No mailing list with slug 'nope'"):
        call_command("optin_resend", "--list", "nope")


def test_the_list_admin_shows_and_edits_double_opt_in_and_sender(admin_client, news):
    changelist = admin_client.get("/admin/subscribers/mailinglist/").content.decode()
    form = admin_client.get(f"/admin/subscribers/mailinglist/{news.pk}/change/").content.decode()

    assert "column-double_opt_in" in changelist and "News &lt;news@mailer.example&gt;" in changelist
    assert 'name="double_opt_in"' in form and 'name="from_email"' in form


def test_subscribing_an_address_from_the_admin_asks_a_double_opt_in_list_for_confirmation(
    news, admin_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:  # the send starts after commit
        response = admin_client.post(
            "/admin/subscribers/subscription/add/",
            {"mailing_list": news.pk, "email": " Ann@Example.org ", "name": "Ann"},
            follow=True,
        )

    assert response.status_code == 200
    assert "pending until the address confirms it by email" in response.content.decode()
    subscription = Subscription.objects.get()
    assert (subscription.subscriber.email, subscription.status, subscription.source) == (
        "ann@example.org",
        Subscription.Status.PENDING,
        "admin",
    )
    assert subscription.confirmation_sent_at is not None
    assert Message.objects.get().to_email == "ann@example.org"
    assert len(callbacks) == 1


def test_the_admin_form_refuses_an_invalid_address_and_stores_nothing(news, admin_client):
    response = admin_client.post(
        "/admin/subscribers/subscription/add/", {"mailing_list": news.pk, "email": "not-an-address", "name": ""}
    )

    assert response.status_code == 200
    assert "is not a valid email address" in response.content.decode()
    assert not Subscription.objects.exists() and not Subscriber.objects.exists()
