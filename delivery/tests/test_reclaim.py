"""A worker lost between the ESP's answer and its record: the provider is asked before anything is sent again."""

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from delivery.models import Message, Provider, SendAttempt
from delivery.services import mailing_send_chunk, messages_reclaim_expired, sending
from delivery.services import reclaim as reclaim_module
from tests.factories import MailingFactory, MessageFactory, ProviderFactory

pytestmark = pytest.mark.django_db


def _die_before_recording(monkeypatch) -> None:
    """The worker is killed right after the provider answered, before the outcome is written."""

    def killed(*args, **kwargs):
        raise SystemExit("worker killed")

    monkeypatch.setattr(sending, "messages_record", killed)


def _lease_runs_out(minutes: float = 1) -> None:
    Message.objects.filter(status=Message.Status.SENDING).update(
        lease_expires_at=timezone.now() - timedelta(minutes=minutes)
    )


def test_messages_the_provider_accepted_are_recorded_sent_and_never_sent_again(sandbox, settings, monkeypatch):
    settings.MAILER_SEND_THREADS = 1
    mailing = MailingFactory(provider=ProviderFactory(kind=Provider.Kind.POSTMARK))
    messages = MessageFactory.create_batch(3, mailing=mailing)
    _die_before_recording(monkeypatch)
    with pytest.raises(SystemExit):
        mailing_send_chunk(mailing_id=mailing.pk)
    monkeypatch.undo()
    assert len(sandbox.messages) == 3
    assert set(Message.objects.values_list("status", flat=True)) == {Message.Status.SENDING}
    _lease_runs_out()

    assert messages_reclaim_expired() == 3

    by_address = {m.to[0]: m for m in sandbox.messages}
    for message in messages:
        message.refresh_from_db()
        assert message.status == Message.Status.SENT
        assert message.esp_message_id == by_address[message.to_email].esp_message_id
        attempt = message.attempts_log.get()
        assert (attempt.outcome, attempt.error) == (SendAttempt.Outcome.SENT, reclaim_module.CONFIRMED_NOTE)
        assert attempt.finished_at is not None
    assert mailing_send_chunk(mailing_id=mailing.pk).claimed == 0
    assert Counter(m.to[0] for m in sandbox.messages) == Counter({m.to_email: 1 for m in messages})


def test_messages_the_provider_never_got_go_back_to_the_queue_and_out_once(sandbox, settings, monkeypatch):
    settings.MAILER_SEND_THREADS = 1
    mailing = MailingFactory(provider=ProviderFactory(kind=Provider.Kind.POSTMARK))
    messages = MessageFactory.create_batch(2, mailing=mailing)
    # Killed inside the call, before the provider answered: the attempts are open, the provider has nothing.
    monkeypatch.setattr(sending, "_call", lambda backend, emails: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        mailing_send_chunk(mailing_id=mailing.pk)
    monkeypatch.undo()
    _lease_runs_out()

    assert messages_reclaim_expired() == 2

    assert set(Message.objects.values_list("status", flat=True)) == {Message.Status.QUEUED}
    assert mailing_send_chunk(mailing_id=mailing.pk).sent == 2
    assert sorted(m.to[0] for m in sandbox.messages) == sorted(m.to_email for m in messages)


def test_a_provider_that_cannot_be_asked_is_not_asked(sandbox, settings, monkeypatch):
    """SendGrid has no search by our id: its lost messages are queued again without a question."""
    settings.MAILER_SEND_THREADS = 1
    mailing = MailingFactory(provider=ProviderFactory(kind=Provider.Kind.SENDGRID))
    MessageFactory(mailing=mailing)
    _die_before_recording(monkeypatch)
    with pytest.raises(SystemExit):
        mailing_send_chunk(mailing_id=mailing.pk)
    monkeypatch.undo()
    _lease_runs_out()

    assert messages_reclaim_expired() == 1

    assert Message.objects.get().status == Message.Status.QUEUED


def test_while_the_provider_cannot_answer_the_message_waits_and_after_an_hour_is_queued(sandbox, settings, monkeypatch):
    settings.MAILER_SEND_THREADS = 1
    provider = ProviderFactory(kind=Provider.Kind.POSTMARK)
    mailing = MailingFactory(provider=provider)
    message = MessageFactory(mailing=mailing)
    _die_before_recording(monkeypatch)
    with pytest.raises(SystemExit):
        mailing_send_chunk(mailing_id=mailing.pk)
    monkeypatch.undo()
    monkeypatch.delenv("MAILER_TEST_GONE_TOKEN", raising=False)
    Provider.objects.filter(pk=provider.pk).update(secret_env="MAILER_TEST_GONE_TOKEN")  # can no longer ask
    _lease_runs_out()

    assert messages_reclaim_expired() == 0
    message.refresh_from_db()
    assert message.status == Message.Status.SENDING  # neither sent again nor given up on

    _lease_runs_out(minutes=61)
    assert messages_reclaim_expired() == 1
    message.refresh_from_db()
    assert message.status == Message.Status.QUEUED


def test_a_live_lease_is_left_alone(sandbox):
    mailing = MailingFactory(provider=ProviderFactory(kind=Provider.Kind.POSTMARK))
    message = MessageFactory(mailing=mailing, status=Message.Status.SENDING)
    Message.objects.filter(pk=message.pk).update(lease_expires_at=timezone.now() + timedelta(minutes=5))

    assert messages_reclaim_expired() == 0
    message.refresh_from_db()
    assert message.status == Message.Status.SENDING
