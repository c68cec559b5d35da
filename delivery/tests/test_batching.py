"""Postmark batches: many different messages per call, each message's result applied to that message alone."""

from collections import Counter
from datetime import timedelta

import pytest
from django.core.mail import EmailMultiAlternatives
from django.utils import timezone

from delivery import batching
from delivery.models import Message, Provider, SendAttempt
from delivery.providers import provider_connection
from delivery.services import mailing_send_chunk
from tests.factories import MailingFactory, MessageFactory, ProviderFactory

pytestmark = pytest.mark.django_db


def _postmark_mailing(**provider_fields):
    return MailingFactory(provider=ProviderFactory(kind=Provider.Kind.POSTMARK, **provider_fields))


def _calls(sandbox) -> Counter:
    return Counter(m.call_id for m in sandbox.messages)


def test_a_chunk_goes_out_in_one_call_each_message_rendered_for_its_recipient(sandbox, settings):
    settings.MAILER_SEND_THREADS = 1
    mailing = _postmark_mailing()
    messages = [MessageFactory(mailing=mailing, context={"name": f"N{i}"}) for i in range(120)]

    result = mailing_send_chunk(mailing_id=mailing.pk, chunk_size=200)

    assert (result.claimed, result.sent) == (120, 120)
    assert list(_calls(sandbox).values()) == [120]  # one /email/batch call
    received = {m.to[0]: m for m in sandbox.messages}
    for index, message in enumerate(messages):
        got = received[message.to_email]
        assert got.subject == f"Hi N{index}"
        assert got.metadata["mailer_msg"] == str(message.pk)
        assert {k.lower() for k in got.headers} >= {"list-unsubscribe", "list-unsubscribe-post", "message-id"}
        message.refresh_from_db()
        assert (message.status, message.attempts) == (Message.Status.SENT, 1)
        assert message.esp_message_id == got.esp_message_id
    attempts = SendAttempt.objects.filter(message__mailing=mailing)
    assert attempts.count() == 120
    assert set(attempts.values_list("outcome", flat=True)) == {SendAttempt.Outcome.SENT}


def test_threads_split_a_large_group_into_parallel_batches(sandbox, settings):
    settings.MAILER_SEND_THREADS = 4
    mailing = _postmark_mailing()
    MessageFactory.create_batch(400, mailing=mailing)

    result = mailing_send_chunk(mailing_id=mailing.pk, chunk_size=400)

    assert result.sent == 400
    assert sorted(_calls(sandbox).values()) == [100, 100, 100, 100]
    assert len({m.to[0] for m in sandbox.messages}) == 400


def test_one_refused_message_in_a_batch_fails_alone_and_the_accepted_ones_are_never_sent_again(sandbox, settings):
    """Postmark answers a batch with one result per message; an inactive recipient is refused (ErrorCode 406)
    while the rest are accepted in the same call."""
    settings.MAILER_SEND_THREADS = 1
    mailing = _postmark_mailing()
    before = MessageFactory.create_batch(2, mailing=mailing)
    refused = MessageFactory(mailing=mailing, to_email="inactive@simulator.amazonses.com")
    after = MessageFactory.create_batch(2, mailing=mailing)

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert (result.sent, result.failed, result.retrying) == (4, 1, 0)
    refused.refresh_from_db()
    assert refused.status == Message.Status.FAILED
    assert refused.last_error.startswith("recipient refused: Postmark ErrorCode 406")
    assert refused.attempts_log.get().outcome == SendAttempt.Outcome.FAILED
    for message in before + after:
        message.refresh_from_db()
        assert message.status == Message.Status.SENT
    assert sorted(m.to[0] for m in sandbox.messages) == sorted(m.to_email for m in before + after)

    # Nothing is left to send: the accepted four are not sent again, the refused one is not retried.
    assert mailing_send_chunk(mailing_id=mailing.pk).claimed == 0
    assert len(sandbox.messages) == 4


def test_a_batch_call_that_fails_as_a_whole_retries_each_message_once_due(sandbox, settings):
    settings.MAILER_SEND_THREADS = 1
    mailing = _postmark_mailing()
    messages = MessageFactory.create_batch(3, mailing=mailing)
    sandbox.configure(fail_next=[{"esp": "postmark", "status": 503, "times": 1}])

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert (result.retrying, result.sent) == (3, 0)
    for message in messages:
        message.refresh_from_db()
        assert (message.status, message.attempts) == (Message.Status.QUEUED, 1)
        assert message.last_error.startswith("HTTP 503: ErrorCode 100")
        assert message.next_attempt_at > timezone.now()
    assert sandbox.messages == []

    Message.objects.filter(mailing=mailing).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert mailing_send_chunk(mailing_id=mailing.pk).sent == 3
    assert Counter(m.to[0] for m in sandbox.messages) == Counter({m.to_email: 1 for m in messages})


def test_a_batch_refused_as_a_whole_fails_each_message_with_the_reason(sandbox, settings):
    settings.MAILER_SEND_THREADS = 1
    mailing = _postmark_mailing()
    MessageFactory.create_batch(2, mailing=mailing)
    sandbox.configure(fail_next=[{"esp": "postmark", "status": 422, "times": 1}])

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert (result.failed, result.retrying) == (2, 0)
    assert set(Message.objects.filter(mailing=mailing).values_list("status", flat=True)) == {Message.Status.FAILED}
    assert all(e.startswith("HTTP 422") for e in Message.objects.values_list("last_error", flat=True))


def test_a_batch_never_carries_more_than_the_provider_rate_allows_at_once(sandbox, settings):
    settings.MAILER_SEND_THREADS = 1
    mailing = _postmark_mailing(max_rate=10)
    MessageFactory.create_batch(20, mailing=mailing)

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert result.sent + result.released == 20
    assert result.sent >= 10
    assert max(_calls(sandbox).values()) == 10


def test_send_batch_splits_calls_by_size_and_keeps_outcomes_in_order(sandbox, monkeypatch):
    monkeypatch.setattr(batching, "POSTMARK_MAX_BATCH_BYTES", 3000)
    provider = ProviderFactory(kind=Provider.Kind.POSTMARK)
    emails = [
        EmailMultiAlternatives(
            subject=f"s{i}", body="x" * 1000, from_email="a@mailer.example", to=[f"r{i}@example.org"]
        )
        for i in range(5)
    ]
    emails[3].to = ["inactive+3@simulator.amazonses.com"]

    with provider_connection(provider) as backend:
        outcomes = backend.send_batch(emails)

    assert [o.accepted for o in outcomes] == [True, True, True, False, True]
    assert "ErrorCode 406" in outcomes[3].error and not outcomes[3].retryable
    by_address = {m.to[0]: m for m in sandbox.messages}
    assert [o.esp_message_id for o in outcomes if o.accepted] == [
        by_address[f"r{i}@example.org"].esp_message_id for i in (0, 1, 2, 4)
    ]
    assert len(_calls(sandbox)) >= 2  # five bodies of ~1 kB do not fit one 3 kB call


def test_a_network_failure_makes_every_message_of_the_call_retryable(settings):
    settings.ANYMAIL = {**settings.ANYMAIL, "POSTMARK_API_URL": "http://127.0.0.1:9/", "POSTMARK_SERVER_TOKEN": "t"}
    provider = ProviderFactory(kind=Provider.Kind.POSTMARK)
    emails = [EmailMultiAlternatives(subject="s", body="b", from_email="a@mailer.example", to=[f"r{i}@example.org"])
              for i in range(2)]  # fmt: skip

    with provider_connection(provider) as backend:
        outcomes = backend.send_batch(emails)

    assert [(o.accepted, o.retryable) for o in outcomes] == [(False, True), (False, True)]
    assert outcomes[0].error.startswith("network error")
