"""Sending through anymail's real SendGrid, Postmark and SES backends into the ESP sandbox."""

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from delivery.models import Message, Provider, SendAttempt
from delivery.services import mailing_send_chunk, messages_reclaim_expired, suppression_add
from delivery.unsubscribe import unsubscribe_token_read
from tests.factories import MailingFactory, MessageFactory, ProviderFactory

pytestmark = pytest.mark.django_db


def _mailing(kind: str, **fields):
    return MailingFactory(provider=ProviderFactory(kind=kind), **fields)


@pytest.mark.parametrize("kind", [Provider.Kind.SENDGRID, Provider.Kind.POSTMARK, Provider.Kind.AMAZON_SES])
def test_each_backend_sends_rendered_messages_with_one_click_unsubscribe(sandbox, kind):
    mailing = _mailing(kind, list_id="<news.mailer.example>")
    ann = MessageFactory(mailing=mailing, to_email="ann@example.org", context={"name": "Ann"})
    bob = MessageFactory(mailing=mailing, to_email="bob@example.org", context={"name": "Bob"})

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert (result.claimed, result.sent, result.failed) == (2, 2, 0)
    received = {m.to[0]: m for m in sandbox.messages}
    assert set(received) == {"ann@example.org", "bob@example.org"}
    for message, name in ((ann, "Ann"), (bob, "Bob")):
        got = received[message.to_email]
        assert got.esp == kind
        assert got.subject == f"Hi {name}"
        assert f"Hello {name}" in got.html
        assert got.metadata.get("mailer_msg") == str(message.pk)
        headers = {k.lower(): v for k, v in got.headers.items()}
        assert headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
        https_part, mailto_part = [p.strip(" <>") for p in headers["list-unsubscribe"].split(",")]
        assert https_part.startswith("http") and mailto_part.startswith("mailto:")
        token = https_part.rstrip("/").rsplit("/", 1)[1]
        assert unsubscribe_token_read(token) == message.pk
        assert headers["list-id"] == "<news.mailer.example>"
        message.refresh_from_db()
        assert message.status == Message.Status.SENT
        assert message.esp_message_id == str(got.esp_message_id)
        assert message.attempts == 1


def test_a_suppressed_address_is_never_sent_to(sandbox):
    mailing = _mailing(Provider.Kind.POSTMARK)
    kept = MessageFactory(mailing=mailing, to_email="kept@example.org")
    gone = MessageFactory(mailing=mailing, to_email="gone@example.org")
    suppression_add(email="GONE@example.org", reason="manual", source="test")

    mailing_send_chunk(mailing_id=mailing.pk)

    assert [m.to[0] for m in sandbox.messages] == ["kept@example.org"]
    gone.refresh_from_db()
    kept.refresh_from_db()
    assert (gone.status, kept.status) == (Message.Status.SUPPRESSED, Message.Status.SENT)


def test_suppression_found_at_send_time_stops_a_claimed_message(sandbox):
    """The fan-out excluded nobody, then the address was suppressed while the message sat queued."""
    mailing = _mailing(Provider.Kind.SENDGRID)
    message = MessageFactory(mailing=mailing, to_email="late@example.org")
    Message.objects.filter(pk=message.pk).update(status=Message.Status.QUEUED)
    from delivery.models import Suppression

    Suppression.objects.create(email="late@example.org", reason="complaint")

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert result.suppressed == 1
    assert sandbox.messages == []


@pytest.mark.parametrize(
    ("kind", "status"),
    [(Provider.Kind.SENDGRID, 429), (Provider.Kind.SENDGRID, 503), (Provider.Kind.AMAZON_SES, 429)],
)
def test_a_retryable_error_requeues_with_backoff_and_releases_the_rest_of_the_chunk(sandbox, kind, status, settings):
    settings.MAILER_SEND_THREADS = 1  # one connection: the second message is not yet in flight when the first fails
    mailing = _mailing(kind)
    first, second = MessageFactory(mailing=mailing), MessageFactory(mailing=mailing)
    sandbox.configure(fail_next=[{"esp": "*", "status": status, "times": 1}])

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert (result.retrying, result.released, result.sent) == (1, 1, 0)
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == second.status == Message.Status.QUEUED
    assert first.attempts == 1 and second.attempts == 0
    assert first.next_attempt_at > timezone.now()
    assert str(status) in first.last_error or "TooManyRequests" in first.last_error
    assert sandbox.messages == []

    # Once due again, the retry goes out and nothing is sent twice.
    Message.objects.filter(mailing=mailing).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert mailing_send_chunk(mailing_id=mailing.pk).sent == 2
    assert sorted(m.to[0] for m in sandbox.messages) == sorted([first.to_email, second.to_email])


def test_a_permanent_error_fails_the_message_with_the_reason(sandbox):
    mailing = _mailing(Provider.Kind.SENDGRID)
    message = MessageFactory(mailing=mailing)
    sandbox.configure(fail_next=[{"esp": "sendgrid", "status": 400, "times": 1}])

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert result.failed == 1
    message.refresh_from_db()
    assert message.status == Message.Status.FAILED
    assert message.last_error.startswith("HTTP 400")


def test_a_message_that_keeps_failing_is_dead_after_the_maximum_attempts_with_each_try_logged(sandbox, settings):
    settings.MAILER_MAX_ATTEMPTS = 2
    mailing = _mailing(Provider.Kind.POSTMARK)
    message = MessageFactory(mailing=mailing)
    sandbox.configure(fail_next=[{"esp": "*", "status": 500, "times": 5}])

    mailing_send_chunk(mailing_id=mailing.pk)
    Message.objects.filter(pk=message.pk).update(next_attempt_at=None)
    mailing_send_chunk(mailing_id=mailing.pk)

    message.refresh_from_db()
    assert message.status == Message.Status.DEAD
    assert message.last_error.startswith("gave up after 2 attempts")
    tries = list(message.attempts_log.order_by("started_at").values_list("provider_id", "outcome"))
    assert tries == [(mailing.provider_id, "retry"), (mailing.provider_id, "retry")]
    assert all(t.finished_at and t.error.startswith("HTTP 500") for t in message.attempts_log.all())


def test_an_expired_lease_is_reclaimed_and_a_live_one_is_not():
    mailing = MailingFactory()
    lost = MessageFactory(mailing=mailing, status=Message.Status.SENDING)
    live = MessageFactory(mailing=mailing, status=Message.Status.SENDING)
    Message.objects.filter(pk=lost.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    Message.objects.filter(pk=live.pk).update(lease_expires_at=timezone.now() + timedelta(minutes=5))

    assert messages_reclaim_expired() == 1

    lost.refresh_from_db()
    live.refresh_from_db()
    assert (lost.status, live.status) == (Message.Status.QUEUED, Message.Status.SENDING)


def test_a_message_already_recorded_by_another_path_is_not_overwritten(sandbox):
    """The record step writes only over rows still `sending`."""
    mailing = _mailing(Provider.Kind.POSTMARK)
    message = MessageFactory(mailing=mailing)
    from delivery.services.recording import messages_record as _record
    from delivery.services.sending import messages_claim

    claimed = messages_claim(mailing_id=mailing.pk, limit=10)
    Message.objects.filter(pk=message.pk).update(status=Message.Status.CANCELLED)
    claimed[0].status = Message.Status.SENT
    _record(claimed)

    message.refresh_from_db()
    assert message.status == Message.Status.CANCELLED


def test_several_threads_send_every_message_once_with_one_attempt_row_each(sandbox, settings):
    settings.MAILER_SEND_THREADS = 4
    mailing = _mailing(Provider.Kind.SENDGRID)
    messages = MessageFactory.create_batch(40, mailing=mailing)

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert (result.sent, result.failed, result.released) == (40, 0, 0)
    assert sorted(m.to[0] for m in sandbox.messages) == sorted(m.to_email for m in messages)
    assert Message.objects.filter(status=Message.Status.SENT).count() == 40
    assert set(SendAttempt.objects.values_list("outcome", flat=True)) == {"sent"}
    assert SendAttempt.objects.count() == 40


def test_a_failing_provider_stops_every_thread_and_leaves_no_attempt_for_messages_never_tried(sandbox, settings):
    settings.MAILER_SEND_THREADS = 4
    mailing = _mailing(Provider.Kind.SENDGRID)  # one message per call (Postmark batches: test_batching.py)
    MessageFactory.create_batch(40, mailing=mailing)
    sandbox.configure(fail_next=[{"esp": "sendgrid", "status": 503, "times": 1}])

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert result.retrying == 1
    assert result.sent + result.retrying + result.released == 40
    assert result.released > 0  # the other threads stopped instead of sending on
    tried = Message.objects.filter(attempts__gt=0)
    assert SendAttempt.objects.count() == tried.count() == result.sent + 1
    assert not Message.objects.filter(status=Message.Status.SENDING).exists()


def test_a_template_variable_missing_for_one_recipient_fails_that_message_only(sandbox):
    mailing = _mailing(Provider.Kind.POSTMARK, html_template="<p>Your code: {{ attributes.coupon.code }}</p>")
    ok = MessageFactory(mailing=mailing, context={"name": "Ann", "attributes": {"coupon": {"code": "X1"}}})
    lacking = MessageFactory(mailing=mailing, context={"name": "Bob", "attributes": {}})

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert (result.sent, result.failed) == (1, 1)
    lacking.refresh_from_db()
    ok.refresh_from_db()
    assert ok.status == Message.Status.SENT
    assert lacking.status == Message.Status.FAILED
    assert "coupon" in lacking.last_error and lacking.last_error.startswith("Template")
    assert [m.to[0] for m in sandbox.messages] == [ok.to_email]


@pytest.mark.parametrize(
    ("kind", "sent_before"),
    # One message per call: the 24 built before the stop went out. A Postmark batch is built whole before its
    # one call: nothing went out.
    [(Provider.Kind.SENDGRID, 24), (Provider.Kind.POSTMARK, 0)],
)
def test_a_chunk_interrupted_midway_has_recorded_what_it_sent_and_frees_what_it_never_tried(
    sandbox, settings, monkeypatch, kind, sent_before
):
    settings.MAILER_SEND_THREADS = 1
    mailing = _mailing(kind)
    MessageFactory.create_batch(30, mailing=mailing)
    from delivery.services import composing, sending

    calls = []

    def build_then_die(mailing, message):
        calls.append(message.pk)
        if len(calls) == 25:
            raise SystemExit("worker stopped")  # as a killed or shut-down worker would, mid-chunk
        return composing.message_build(mailing, message)

    monkeypatch.setattr(sending, "message_build", build_then_die)

    with pytest.raises(SystemExit):
        mailing_send_chunk(mailing_id=mailing.pk)

    statuses = dict(
        (status, count) for status, count in Counter(Message.objects.values_list("status", flat=True)).items()
    )
    # Sent ones are written as they go: none that was answered is left unrecorded.
    assert statuses.get(Message.Status.SENT, 0) == sent_before
    assert statuses.get(Message.Status.SENDING, 0) == 0
    # The never-tried rest is back in the queue at once, without an attempt spent.
    queued = Message.objects.filter(status=Message.Status.QUEUED)
    assert queued.count() == 30 - sent_before and set(queued.values_list("attempts", flat=True)) == {0}
    assert len(sandbox.messages) == sent_before
