"""Routing: candidates by pin, pool and priority, weights, recipient-domain rules, and failover between providers."""

import random
from collections import Counter

import pytest

from delivery.models import Message, Provider, SendAttempt
from delivery.routing import mailing_candidates, provider_routes_domain, providers_order, route_messages
from delivery.services import mailing_send_chunk
from tests.factories import MailingFactory, MessageFactory, ProviderFactory

pytestmark = pytest.mark.django_db


def _provider(name: str, kind: str = Provider.Kind.POSTMARK, **fields) -> Provider:
    return Provider.objects.create(name=name, kind=kind, **fields)


def test_candidates_are_the_pin_else_the_pool_else_every_enabled_provider_and_never_a_disabled_one():
    Provider.objects.all().delete()
    first, second = _provider("first", priority=1), _provider("second", priority=2)
    off = _provider("off", priority=0, is_enabled=False)

    assert [p.name for p in mailing_candidates(MailingFactory())] == ["first", "second"]
    assert [p.name for p in mailing_candidates(MailingFactory(provider=second))] == ["second"]
    assert mailing_candidates(MailingFactory(provider=off)) == []
    pooled = MailingFactory()
    pooled.providers.set([second, off])
    assert [p.name for p in mailing_candidates(pooled)] == ["second"]
    assert first  # the pool leaves it out


def test_equal_priorities_split_traffic_by_weight():
    heavy, light = _provider("heavy", weight=3), _provider("light", weight=1)
    rng = random.Random(7)

    firsts = Counter(providers_order([heavy, light], rng=rng)[0].name for _ in range(4000))

    assert 2800 <= firsts["heavy"] <= 3200  # three in four, within a wide margin
    assert firsts["heavy"] + firsts["light"] == 4000


@pytest.mark.parametrize(
    ("patterns", "domain", "routes"),
    [
        ([], "anything.example", True),
        (["gmail.com"], "GMAIL.com", True),
        (["gmail.com"], "mail.gmail.com", False),
        (["*.edu"], "cs.uni.edu", True),
        (["*.edu", "yahoo.*"], "yahoo.co.uk", True),
        (["*.edu"], "edu.example", False),
    ],
)
def test_routing_domains_match_with_wildcards(patterns, domain, routes):
    assert provider_routes_domain(Provider(routing_domains=patterns), domain) is routes


def test_each_message_goes_to_the_first_healthy_provider_that_serves_its_domain():
    edu = _provider("edu", priority=1, routing_domains=["*.edu"])
    general = _provider("general", priority=2, routing_domains=["example.org", "*.edu"])
    broken = _provider("broken", priority=0, routing_domains=["gmail.com"])
    student = Message(pk=1, to_email="a@cs.uni.edu")
    gmail = Message(pk=2, to_email="b@gmail.com")
    other = Message(pk=3, to_email="c@example.org")

    plan = route_messages([student, gmail, other], [broken, edu, general], is_healthy=lambda p: p.name != "broken")

    assert {plan.providers[pid].name: [m.pk for m in msgs] for pid, msgs in plan.groups.items()} == {
        "edu": [1],
        "general": [3],
    }
    assert [m.pk for m in plan.unhealthy] == [2]  # only "broken" serves gmail.com, and it is failing
    assert plan.unroutable == []


def test_a_message_that_failed_on_a_provider_is_retried_on_another(sandbox):
    Provider.objects.all().delete()
    postmark = _provider("postmark-a", kind=Provider.Kind.POSTMARK, priority=1)
    sendgrid = _provider("sendgrid-b", kind=Provider.Kind.SENDGRID, priority=2)
    mailing = MailingFactory()
    message = MessageFactory(mailing=mailing, to_email="ann@example.org")
    sandbox.configure(fail_next=[{"esp": "postmark", "status": 503, "times": 1}])

    first = mailing_send_chunk(mailing_id=mailing.pk)
    Message.objects.filter(pk=message.pk).update(next_attempt_at=None)
    second = mailing_send_chunk(mailing_id=mailing.pk)

    assert (first.retrying, second.sent) == (1, 1)
    message.refresh_from_db()
    assert (message.status, message.provider_id, message.attempts) == (Message.Status.SENT, sendgrid.pk, 2)
    assert [m.esp for m in sandbox.messages] == ["sendgrid"]
    log = list(SendAttempt.objects.filter(message=message).order_by("started_at").values_list("provider_id", "outcome"))
    assert log == [(postmark.pk, "retry"), (sendgrid.pk, "sent")]


def test_a_domain_no_provider_serves_fails_with_the_reason_and_the_rest_is_sent(sandbox):
    Provider.objects.all().delete()
    _provider("edu-only", routing_domains=["*.edu"])
    mailing = MailingFactory()
    student = MessageFactory(mailing=mailing, to_email="a@cs.uni.edu")
    stray = MessageFactory(mailing=mailing, to_email="b@example.org")

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert (result.sent, result.failed) == (1, 1)
    stray.refresh_from_db()
    student.refresh_from_db()
    assert (stray.status, stray.last_error) == (Message.Status.FAILED, "no provider routes mail to example.org")
    assert student.status == Message.Status.SENT
    assert not SendAttempt.objects.filter(message=stray).exists()


def test_a_mailing_pinned_to_a_disabled_provider_waits_and_spends_no_attempt(sandbox):
    mailing = MailingFactory(provider=ProviderFactory(is_enabled=False))
    message = MessageFactory(mailing=mailing)

    result = mailing_send_chunk(mailing_id=mailing.pk)

    message.refresh_from_db()
    assert (result.released, message.status, message.attempts) == (1, Message.Status.QUEUED, 0)
    assert message.last_error == "not tried: no enabled provider"
    assert sandbox.messages == []
