"""The engine within its limits: daily and warming caps, the circuit breaker, reputation, the rate limit."""

from datetime import timedelta

import pytest
from django.utils import timezone

from delivery.circuit import circuit_state
from delivery.models import Message, Provider, SendAttempt, WarmingPlan
from delivery.providers import provider_connection
from delivery.services import mailing_send_chunk
from tests.factories import MailingFactory, MessageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_providers():
    """A preferred Postmark and a fallback SendGrid, both to the sandbox."""
    Provider.objects.all().delete()
    first = Provider.objects.create(name="first", kind=Provider.Kind.POSTMARK, priority=1)
    second = Provider.objects.create(name="second", kind=Provider.Kind.SENDGRID, priority=2)
    return first, second


def _due_again() -> None:
    Message.objects.filter(status=Message.Status.QUEUED).update(next_attempt_at=None)


def _sent_by() -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in Message.objects.filter(status=Message.Status.SENT).values_list("provider__name", flat=True):
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_a_full_daily_cap_sends_the_rest_through_the_next_provider(sandbox, two_providers):
    first, _ = two_providers
    Provider.objects.filter(pk=first.pk).update(daily_cap=3)
    mailing = MailingFactory()
    MessageFactory.create_batch(5, mailing=mailing)

    one = mailing_send_chunk(mailing_id=mailing.pk)
    _due_again()
    two = mailing_send_chunk(mailing_id=mailing.pk)

    assert (one.sent, one.released) == (3, 2)
    assert two.sent == 2
    assert _sent_by() == {"first": 3, "second": 2}
    held = SendAttempt.objects.filter(provider=first).count()
    assert held == 3  # the two over the cap were never tried on it


def test_nothing_is_sent_past_the_cap_when_no_other_provider_is_left(sandbox, two_providers):
    first, second = two_providers
    Provider.objects.filter(pk=first.pk).update(daily_cap=2)
    Provider.objects.filter(pk=second.pk).update(is_enabled=False)
    mailing = MailingFactory()
    MessageFactory.create_batch(4, mailing=mailing)

    mailing_send_chunk(mailing_id=mailing.pk)
    _due_again()
    again = mailing_send_chunk(mailing_id=mailing.pk)

    assert _sent_by() == {"first": 2}
    assert again.released == 2
    waiting = Message.objects.filter(status=Message.Status.QUEUED)
    assert set(waiting.values_list("last_error", flat=True)) == {"not tried: first: today's cap of 2 is used up"}
    assert set(waiting.values_list("attempts", flat=True)) == {0}


def test_a_warming_provider_sends_no_more_than_its_plan_allows_today(sandbox, two_providers):
    first, _ = two_providers
    plan = WarmingPlan.objects.create(name="tiny", daily_caps=[2, 4])
    Provider.objects.filter(pk=first.pk).update(
        warming_plan=plan, warming_day=1, warming_day_started_on=timezone.localdate(), daily_cap=100
    )
    mailing = MailingFactory()
    MessageFactory.create_batch(3, mailing=mailing)

    mailing_send_chunk(mailing_id=mailing.pk)
    _due_again()
    mailing_send_chunk(mailing_id=mailing.pk)

    assert _sent_by() == {"first": 2, "second": 1}


def test_repeated_failures_open_the_circuit_and_traffic_moves_to_the_other_provider(sandbox, two_providers, settings):
    settings.MAILER_CIRCUIT_FAILURES = 2
    settings.MAILER_MAX_ATTEMPTS = 10
    first, second = two_providers
    mailing = MailingFactory(provider=None)
    mailing.providers.set([first, second])
    MessageFactory.create_batch(3, mailing=mailing)
    sandbox.configure(fail_next=[{"esp": "postmark", "status": 503, "times": 100}])

    # Each failing try sends the message to the other provider next time, so the first provider sees a
    # fresh message each chunk: two chunks, two failures, and its circuit opens.
    for _ in range(4):
        mailing_send_chunk(mailing_id=mailing.pk, chunk_size=1)
        _due_again()

    assert circuit_state(provider_id=first.pk) == "open"
    for _ in range(3):
        mailing_send_chunk(mailing_id=mailing.pk)
        _due_again()
    assert _sent_by() == {"second": 3}
    assert SendAttempt.objects.filter(provider=first).count() == 2


def test_a_provider_whose_bounce_rate_is_too_high_is_left_out(sandbox, two_providers):
    first, _ = two_providers
    old = MailingFactory()
    now = timezone.now()
    for index in range(200):  # 200 sent in the last day, 10 bounced: 5 %, above the 2 % threshold
        status = Message.Status.BOUNCED if index < 10 else Message.Status.DELIVERED
        MessageFactory(mailing=old, provider=first, status=status, sent_at=now - timedelta(hours=2))
    mailing = MailingFactory()
    MessageFactory.create_batch(2, mailing=mailing)

    mailing_send_chunk(mailing_id=mailing.pk)

    assert _sent_by() == {"second": 2}


def test_the_rate_limit_holds_in_every_second_and_everything_is_sent(sandbox, two_providers):
    first, second = two_providers
    Provider.objects.filter(pk=first.pk).update(max_rate=4)
    Provider.objects.filter(pk=second.pk).update(is_enabled=False)
    mailing = MailingFactory()
    MessageFactory.create_batch(10, mailing=mailing)

    for _ in range(10):
        mailing_send_chunk(mailing_id=mailing.pk)
        _due_again()
        if not Message.objects.filter(status=Message.Status.QUEUED).exists():
            break

    assert _sent_by() == {"first": 10}
    starts = sorted(SendAttempt.objects.values_list("started_at", flat=True))
    for index, start in enumerate(starts):
        in_window = [s for s in starts[index:] if s - start < timedelta(seconds=1)]
        assert len(in_window) <= 4


def test_a_provider_takes_its_secret_stream_and_configuration_set_from_its_row_and_the_environment(monkeypatch):
    monkeypatch.setenv("MAILER_TEST_POSTMARK_TOKEN", "pm-secret")
    monkeypatch.setenv("MAILER_TEST_SES_KEYS", "AKIAEXAMPLE:ses-secret")
    postmark = Provider(name="pm", kind=Provider.Kind.POSTMARK, secret_env="MAILER_TEST_POSTMARK_TOKEN",
                        message_stream="broadcast")  # fmt: skip
    ses = Provider(name="ses", kind=Provider.Kind.AMAZON_SES, secret_env="MAILER_TEST_SES_KEYS",
                   configuration_set="tracking")  # fmt: skip

    pm_backend, ses_backend = provider_connection(postmark), provider_connection(ses)

    assert (pm_backend.server_token, pm_backend.message_stream) == ("pm-secret", "broadcast")
    assert ses_backend.configuration_set_name == "tracking"
    assert ses_backend.client_params["aws_access_key_id"] == "AKIAEXAMPLE"
    assert ses_backend.client_params["aws_secret_access_key"] == "ses-secret"


def test_a_provider_whose_secret_is_missing_is_passed_over_with_the_reason(sandbox, two_providers, monkeypatch):
    first, second = two_providers
    monkeypatch.delenv("MAILER_TEST_ABSENT", raising=False)
    Provider.objects.filter(pk=first.pk).update(secret_env="MAILER_TEST_ABSENT")
    mailing = MailingFactory()
    MessageFactory.create_batch(2, mailing=mailing)

    mailing_send_chunk(mailing_id=mailing.pk)
    assert _sent_by() == {"second": 2}

    Provider.objects.filter(pk=second.pk).update(is_enabled=False)
    lone = MessageFactory(mailing=mailing)
    result = mailing_send_chunk(mailing_id=mailing.pk)
    lone.refresh_from_db()
    assert (result.released, lone.attempts) == (1, 0)
    assert lone.last_error == "not tried: Provider 'first': the environment variable MAILER_TEST_ABSENT is not set."
