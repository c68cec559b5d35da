"""Warming plans and provider reputation: the default plan, validation, the daily step and its holds, the counts."""

from __future__ import annotations

import html
import importlib
import itertools
import logging
from datetime import date, datetime, timedelta

import pytest
from django.apps import apps as django_apps
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.periodic import PERIODIC_TASKS
from delivery.exceptions import WarmingPlanInvalid
from delivery.models import Mailing, Message, Provider, WarmingPlan
from delivery.services.reputation import (
    Reputation,
    provider_reputation,
    provider_reputation_ok,
    provider_reputation_problem,
    providers_reputation_24h,
)
from delivery.services.warming import (
    DEFAULT_WARMING_PLAN_NAME,
    local_midnight,
    local_today,
    provider_daily_cap_today,
    providers_warming_advance,
    warming_cap_today,
    warming_plan_errors,
    warming_start,
)
from tests.factories import MailingFactory, ProviderFactory

pytestmark = pytest.mark.django_db

TODAY = date(2026, 11, 25)
YESTERDAY = TODAY - timedelta(days=1)
_addresses = itertools.count()
NOT_A_LIST = "Enter a list of daily caps, one whole number per day, e.g. [50, 100, 200]."


def noon(day: date) -> datetime:
    return local_midnight(day) + timedelta(hours=12)


def record_sends(provider: Provider | None, count: int, *, at: datetime, status: str = Message.Status.DELIVERED,
                 mailing: Mailing | None = None) -> None:  # fmt: skip
    """`count` messages that `provider` sent at `at` and whose outcome is `status`."""
    mailing = mailing or MailingFactory()
    Message.objects.bulk_create(
        Message(
            mailing=mailing, to_email=f"r{next(_addresses)}@example.org", provider=provider, status=status, sent_at=at
        )  # fmt: skip
        for _ in range(count)
    )


def sends_day(provider: Provider, day: date, *, delivered: int, bounced: int = 0, complained: int = 0) -> None:
    record_sends(provider, delivered, at=noon(day))
    record_sends(provider, bounced, at=noon(day), status=Message.Status.BOUNCED)
    record_sends(provider, complained, at=noon(day), status=Message.Status.COMPLAINED)


@pytest.fixture
def plan() -> WarmingPlan:
    return WarmingPlan.objects.create(name="Three days", daily_caps=[50, 70, 98])


@pytest.fixture
def warming(plan) -> Provider:
    """A provider on day 1 of the plan, started yesterday."""
    return ProviderFactory(name="warming", warming_plan=plan, warming_day=1, warming_day_started_on=YESTERDAY)


# The default plan and the plan itself


def test_the_default_plan_is_installed_with_thirty_growing_days_and_the_issue_thresholds():
    plan = WarmingPlan.objects.get(name=DEFAULT_WARMING_PLAN_NAME)

    assert len(plan.daily_caps) == 30
    assert (plan.cap_for_day(1), plan.cap_for_day(10), plan.cap_for_day(22), plan.cap_for_day(30)) == (
        50, 1000, 59000, 860000,
    )  # fmt: skip
    assert all(later > earlier for earlier, later in itertools.pairwise(plan.daily_caps))
    assert (plan.max_bounce_rate, plan.max_complaint_rate) == (0.02, 0.0008)
    assert (
        warming_plan_errors(
            daily_caps=plan.daily_caps, max_bounce_rate=plan.max_bounce_rate, max_complaint_rate=plan.max_complaint_rate
        )
        == {}
    )


def test_the_migration_undone_deletes_the_default_plan_only_when_no_provider_uses_it():
    migration = importlib.import_module("delivery.migrations.0007_default_warming_plan")
    plan = WarmingPlan.objects.get(name=DEFAULT_WARMING_PLAN_NAME)
    provider = ProviderFactory(name="user of the plan", warming_plan=plan, warming_day=3)

    migration.delete_default_plan(django_apps, None)
    assert WarmingPlan.objects.filter(name=DEFAULT_WARMING_PLAN_NAME).exists()

    provider.delete()
    migration.delete_default_plan(django_apps, None)
    assert not WarmingPlan.objects.filter(name=DEFAULT_WARMING_PLAN_NAME).exists()

    migration.create_default_plan(django_apps, None)
    migration.create_default_plan(django_apps, None)
    assert WarmingPlan.objects.filter(name=DEFAULT_WARMING_PLAN_NAME).count() == 1


def test_cap_for_day_counts_from_day_one_and_ends_with_the_plan(plan):
    assert [plan.cap_for_day(day) for day in (0, 1, 2, 3, 4)] == [None, 50, 70, 98, None]


@pytest.mark.parametrize(
    ("values", "errors"),
    [
        ({"daily_caps": []}, {"daily_caps": NOT_A_LIST}),
        ({"daily_caps": {"1": 50}}, {"daily_caps": NOT_A_LIST}),
        ({"daily_caps": [50, 0, 100]}, {"daily_caps": "Day 2: 0 is not a positive whole number of messages."}),
        ({"daily_caps": [50, 100, 2.5]}, {"daily_caps": "Day 3: 2.5 is not a positive whole number of messages."}),
        ({"daily_caps": [True]}, {"daily_caps": "Day 1: True is not a positive whole number of messages."}),
        ({"daily_caps": ["50"]}, {"daily_caps": "Day 1: '50' is not a positive whole number of messages."}),
        ({"daily_caps": [1] * 366}, {"daily_caps": "A plan has at most 365 days; this one has 366."}),
        ({"max_bounce_rate": 2}, {"max_bounce_rate": "2 is not a rate between 0 and 1 (0.02 means 2 %)."}),
        ({"max_complaint_rate": -0.1}, {"max_complaint_rate": "-0.1 is not a rate between 0 and 1 (0.02 means 2 %)."}),
        ({"max_bounce_rate": 0, "max_complaint_rate": 1}, {}),
    ],
)  # fmt: skip
def test_plan_values_are_checked_with_errors_that_name_the_day_and_the_value(values, errors):
    valid = {"daily_caps": [50, 100], "max_bounce_rate": 0.02, "max_complaint_rate": 0.0008}

    assert warming_plan_errors(**{**valid, **values}) == errors


def test_an_invalid_plan_typed_in_the_admin_shows_its_errors_and_nothing_is_stored(admin_client):
    before = WarmingPlan.objects.count()

    response = admin_client.post(
        "/admin/delivery/warmingplan/add/",
        {"name": "Broken", "daily_caps": "[50, -3]", "max_bounce_rate": "1.5", "max_complaint_rate": "0.0008"},
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert "Day 2: -3 is not a positive whole number of messages." in page
    assert "1.5 is not a rate between 0 and 1 (0.02 means 2 %)." in page
    assert WarmingPlan.objects.count() == before


def test_a_plan_that_is_not_json_says_so(admin_client):
    response = admin_client.post(
        "/admin/delivery/warmingplan/add/",
        {"name": "Typo", "daily_caps": "50, 100,", "max_bounce_rate": "0.02", "max_complaint_rate": "0.0008"},
    )

    assert response.status_code == 200
    assert "Enter a valid JSON." in response.content.decode()
    assert not WarmingPlan.objects.filter(name="Typo").exists()


def test_a_valid_plan_is_saved_from_the_admin(admin_client):
    response = admin_client.post(
        "/admin/delivery/warmingplan/add/",
        {"name": "Slow", "daily_caps": "[20, 40, 80]", "max_bounce_rate": "0.01", "max_complaint_rate": "0.0005"},
    )

    assert response.status_code == 302
    plan = WarmingPlan.objects.get(name="Slow")
    assert (plan.daily_caps, plan.max_bounce_rate, plan.max_complaint_rate) == ([20, 40, 80], 0.01, 0.0005)


# Caps


def test_the_cap_today_follows_the_day_and_is_none_when_not_warming_or_done(plan, warming):
    idle = ProviderFactory(name="idle", daily_cap=1000)
    assert warming_cap_today(provider=idle) is None
    assert provider_daily_cap_today(provider=idle) == 1000

    assert warming_cap_today(provider=warming) == 50
    Provider.objects.filter(pk=warming.pk).update(warming_day=3, daily_cap=60)
    warming.refresh_from_db()
    assert warming_cap_today(provider=warming) == 98
    assert provider_daily_cap_today(provider=warming) == 60

    Provider.objects.filter(pk=warming.pk).update(warming_day=4)
    warming.refresh_from_db()
    assert warming_cap_today(provider=warming) is None
    assert provider_daily_cap_today(provider=warming) == 60


def test_warming_start_puts_the_provider_on_day_one_from_today(plan):
    provider = ProviderFactory(name="new", warming_held_reason="old reason")

    warming_start(provider=provider, plan=plan, today=TODAY)

    provider.refresh_from_db()
    assert (provider.warming_plan, provider.warming_day, provider.warming_day_started_on) == (plan, 1, TODAY)
    assert provider.warming_held_reason == ""
    assert warming_cap_today(provider=provider) == 50


def test_warming_start_refuses_a_broken_plan_and_writes_nothing():
    broken = WarmingPlan.objects.create(name="Broken", daily_caps=[])
    provider = ProviderFactory(name="new")

    with pytest.raises(WarmingPlanInvalid, match="cannot be used: Enter a list of daily caps"):
        warming_start(provider=provider, plan=broken, today=TODAY)

    provider.refresh_from_db()
    assert (provider.warming_plan, provider.warming_day) == (None, 0)


# The daily step


def test_a_good_day_moves_the_provider_to_the_next_day(warming):
    sends_day(warming, YESTERDAY, delivered=196, bounced=3, complained=0)  # 1.5 % bounces

    report = providers_warming_advance(today=TODAY)

    warming.refresh_from_db()
    assert (warming.warming_day, warming.warming_day_started_on, warming.warming_held_reason) == (2, TODAY, "")
    assert report == ["warming: day 1 -> 2, cap 70 (199 sent, 3 bounced, 0 complained on 2026-11-24)"]
    assert warming_cap_today(provider=warming) == 70


def test_a_bounce_rate_above_two_percent_holds_the_day_and_alerts(warming, settings, caplog):
    settings.ADMINS = [("Ops", "ops@example.org")]
    sends_day(warming, YESTERDAY, delivered=195, bounced=5)  # 2.5 %

    with caplog.at_level(logging.WARNING, logger="delivery.services.warming"):
        report = providers_warming_advance(today=TODAY)

    reason = "Held on day 1 (cap 50): bounce rate 2.50% (5 of 200) above 2.00% on 2026-11-24."
    warming.refresh_from_db()
    assert (warming.warming_day, warming.warming_day_started_on, warming.warming_held_reason) == (1, TODAY, reason)
    assert report == [f"warming: {reason}"]
    assert [r.getMessage() for r in caplog.records] == [f"warming of provider warming held: {reason}"]
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ops@example.org"]
    assert mail.outbox[0].subject.endswith("Warming held for provider warming")
    assert mail.outbox[0].body.startswith(reason)


def test_a_complaint_rate_above_the_threshold_holds_the_day(warming):
    sends_day(warming, YESTERDAY, delivered=998, bounced=1, complained=1)  # 0.10 % complaints, 0.10 % bounces

    providers_warming_advance(today=TODAY)

    warming.refresh_from_db()
    assert warming.warming_day == 1
    assert warming.warming_held_reason == (
        "Held on day 1 (cap 50): complaint rate 0.10% (1 of 1000) above 0.08% on 2026-11-24."
    )


def test_both_rates_above_are_both_named(warming):
    sends_day(warming, YESTERDAY, delivered=94, bounced=5, complained=1)

    providers_warming_advance(today=TODAY)

    warming.refresh_from_db()
    assert warming.warming_held_reason == (
        "Held on day 1 (cap 50): bounce rate 5.00% (5 of 100) above 2.00%; "
        "complaint rate 1.00% (1 of 100) above 0.08% on 2026-11-24."
    )


def test_a_rate_equal_to_the_threshold_does_not_hold(warming):
    sends_day(warming, YESTERDAY, delivered=196, bounced=4)  # exactly 2 %

    providers_warming_advance(today=TODAY)

    warming.refresh_from_db()
    assert (warming.warming_day, warming.warming_held_reason) == (2, "")


def test_below_the_minimum_volume_rates_do_not_hold(warming):
    sends_day(warming, YESTERDAY, delivered=40, bounced=9, complained=1)  # 99 sent: 9 % bounces, 1 % complaints

    providers_warming_advance(today=TODAY)

    warming.refresh_from_db()
    assert (warming.warming_day, warming.warming_held_reason) == (2, "")


def test_the_plan_thresholds_come_from_the_plan(plan, warming):
    WarmingPlan.objects.filter(pk=plan.pk).update(max_bounce_rate=0.01)
    sends_day(warming, YESTERDAY, delivered=197, bounced=3)  # 1.5 %: fine by the settings, not by this plan

    providers_warming_advance(today=TODAY)

    warming.refresh_from_db()
    assert warming.warming_held_reason.startswith("Held on day 1 (cap 50): bounce rate 1.50% (3 of 200) above 1.00%")


def test_a_held_provider_moves_on_after_a_good_day_and_its_reason_is_cleared(warming):
    sends_day(warming, YESTERDAY, delivered=190, bounced=10)
    providers_warming_advance(today=TODAY)
    # Today is good; yesterday's bounces do not count again tomorrow.
    sends_day(warming, TODAY, delivered=200)

    report = providers_warming_advance(today=TODAY + timedelta(days=1))

    warming.refresh_from_db()
    assert (warming.warming_day, warming.warming_held_reason) == (2, "")
    assert report == ["warming: day 1 -> 2, cap 70 (200 sent, 0 bounced, 0 complained on 2026-11-25)"]


def test_running_again_the_same_day_changes_nothing_and_alerts_once(warming, settings):
    settings.ADMINS = [("Ops", "ops@example.org")]
    sends_day(warming, YESTERDAY, delivered=150, bounced=50)
    first = providers_warming_advance(today=TODAY)
    warming.refresh_from_db()
    state = (warming.warming_day, warming.warming_day_started_on, warming.warming_held_reason)

    assert [providers_warming_advance(today=TODAY) for _ in range(3)] == [[], [], []]

    warming.refresh_from_db()
    assert len(first) == 1
    assert (warming.warming_day, warming.warming_day_started_on, warming.warming_held_reason) == state
    assert len(mail.outbox) == 1


def test_a_good_provider_advances_once_a_day_however_often_beat_runs(warming):
    for _ in range(5):
        providers_warming_advance(today=TODAY)

    warming.refresh_from_db()
    assert (warming.warming_day, warming.warming_day_started_on) == (2, TODAY)


def test_after_missed_days_the_provider_moves_one_day_judged_on_all_the_missed_days(warming):
    three_days_ago = TODAY - timedelta(days=3)
    Provider.objects.filter(pk=warming.pk).update(warming_day_started_on=three_days_ago)
    # Each day alone is under the minimum volume; together they are 180 messages with 3.3 % bounces.
    for day in (three_days_ago, three_days_ago + timedelta(days=1), YESTERDAY):
        sends_day(warming, day, delivered=58, bounced=2)

    providers_warming_advance(today=TODAY)

    warming.refresh_from_db()
    assert (warming.warming_day, warming.warming_day_started_on) == (1, TODAY)
    assert warming.warming_held_reason == (
        "Held on day 1 (cap 50): bounce rate 3.33% (6 of 180) above 2.00% from 2026-11-22 to 2026-11-24."
    )


def test_after_missed_good_days_the_provider_moves_one_day_only(warming):
    Provider.objects.filter(pk=warming.pk).update(warming_day_started_on=TODAY - timedelta(days=4))

    report = providers_warming_advance(today=TODAY)

    warming.refresh_from_db()
    assert (warming.warming_day, warming.warming_day_started_on) == (2, TODAY)
    assert report == ["warming: day 1 -> 2, cap 70 (0 sent, 0 bounced, 0 complained from 2026-11-21 to 2026-11-24)"]


def test_after_the_last_day_the_plan_no_longer_caps_the_provider(plan, warming):
    Provider.objects.filter(pk=warming.pk).update(warming_day=3)

    report = providers_warming_advance(today=TODAY)

    warming.refresh_from_db()
    assert (warming.warming_plan, warming.warming_day, warming.warming_day_started_on) == (plan, 4, TODAY)
    assert warming_cap_today(provider=warming) is None
    assert report == ["warming: finished 'Three days' (0 sent, 0 bounced, 0 complained on 2026-11-24)"]
    assert providers_warming_advance(today=TODAY + timedelta(days=1)) == []
    warming.refresh_from_db()
    assert (warming.warming_day, warming.warming_day_started_on) == (4, TODAY)


def test_providers_not_warming_are_left_alone(plan):
    idle = ProviderFactory(name="idle")
    never_started = ProviderFactory(name="planned", warming_plan=plan, warming_day=0)

    assert providers_warming_advance(today=TODAY) == []

    for provider in (idle, never_started):
        before = (provider.warming_day, provider.warming_day_started_on, provider.updated_at)
        provider.refresh_from_db()
        assert (provider.warming_day, provider.warming_day_started_on, provider.updated_at) == before


def test_a_day_set_by_hand_without_a_date_starts_today(plan):
    provider = ProviderFactory(name="by hand", warming_plan=plan, warming_day=2)

    assert providers_warming_advance(today=TODAY) == ["by hand: day 2 of 'Three days' starts today"]

    provider.refresh_from_db()
    assert (provider.warming_day, provider.warming_day_started_on) == (2, TODAY)


def test_days_are_local_days(warming, settings):
    settings.TIME_ZONE = "America/New_York"
    # 03:00 UTC on the 25th is 22:00 on the 24th in New York: part of yesterday there.
    late_yesterday = datetime.fromisoformat("2026-11-25T03:00:00+00:00")
    record_sends(warming, 190, at=late_yesterday)
    record_sends(warming, 10, at=late_yesterday, status=Message.Status.BOUNCED)
    # 06:00 UTC on the 25th is 01:00 on the 25th in New York: today, not judged yet.
    record_sends(warming, 100, at=datetime.fromisoformat("2026-11-25T06:00:00+00:00"))

    providers_warming_advance(today=TODAY)

    warming.refresh_from_db()
    assert warming.warming_held_reason == (
        "Held on day 1 (cap 50): bounce rate 5.00% (10 of 200) above 2.00% on 2026-11-24."
    )


# Reputation


def test_the_reputation_counts_exactly_the_provider_s_sends_in_the_window():
    provider, other = ProviderFactory(name="one"), ProviderFactory(name="two")
    since, until = local_midnight(YESTERDAY), local_midnight(TODAY)
    record_sends(provider, 3, at=since)  # the window's first instant counts
    record_sends(provider, 2, at=noon(YESTERDAY), status=Message.Status.SENT)
    record_sends(provider, 4, at=noon(YESTERDAY), status=Message.Status.BOUNCED)
    record_sends(provider, 1, at=until - timedelta(microseconds=1), status=Message.Status.COMPLAINED)
    # Not counted: the end of the window, before it, another provider, not sent, sent by nobody recorded.
    record_sends(provider, 5, at=until, status=Message.Status.BOUNCED)
    record_sends(provider, 6, at=since - timedelta(microseconds=1), status=Message.Status.BOUNCED)
    record_sends(other, 7, at=noon(YESTERDAY), status=Message.Status.COMPLAINED)
    record_sends(provider, 8, at=noon(YESTERDAY), status=Message.Status.QUEUED)
    record_sends(provider, 9, at=noon(YESTERDAY), status=Message.Status.FAILED)
    record_sends(None, 10, at=noon(YESTERDAY), status=Message.Status.BOUNCED)

    reputation = provider_reputation(provider_id=provider.pk, since=since, until=until)

    assert reputation == Reputation(sent=10, bounced=4, complained=1)
    assert (reputation.bounce_rate, reputation.complaint_rate) == (0.4, 0.1)
    assert Reputation().bounce_rate == 0.0


def test_the_24_hour_reputation_of_every_provider_is_one_grouped_query(django_assert_num_queries):
    now = noon(TODAY)
    one, two, three = (ProviderFactory(name=name) for name in ("one", "two", "three"))
    record_sends(one, 100, at=now - timedelta(hours=1))
    record_sends(one, 3, at=now - timedelta(hours=23), status=Message.Status.BOUNCED)
    record_sends(one, 50, at=now - timedelta(hours=25), status=Message.Status.BOUNCED)  # too old
    record_sends(two, 20, at=now - timedelta(minutes=5), status=Message.Status.COMPLAINED)
    record_sends(two, 4, at=now + timedelta(minutes=5))  # after `now`
    record_sends(None, 5, at=now - timedelta(hours=1))

    with django_assert_num_queries(1):
        reputations = providers_reputation_24h(now=now)

    assert reputations == {
        one.pk: Reputation(sent=103, bounced=3, complained=0),
        two.pk: Reputation(sent=20, bounced=0, complained=20),
    }
    assert reputations.get(three.pk, Reputation()) == Reputation()


def test_without_a_plan_the_settings_thresholds_apply(settings):
    bad_for_settings = Reputation(sent=1000, bounced=15, complained=0)  # 1.5 %

    settings.MAILER_MAX_BOUNCE_RATE = 0.01
    assert provider_reputation_problem(reputation=bad_for_settings) == "bounce rate 1.50% (15 of 1000) above 1.00%"
    assert not provider_reputation_ok(reputation=bad_for_settings)
    assert provider_reputation_ok(reputation=bad_for_settings, plan=WarmingPlan(daily_caps=[1]))  # the plan's 2 %

    settings.MAILER_REPUTATION_MIN_SENT = 1001
    assert provider_reputation_ok(reputation=bad_for_settings)


# The doors: admin and beat


def test_the_provider_list_shows_warming_and_24_hour_rates_with_queries_independent_of_rows(admin_client, warming):
    Provider.objects.filter(pk=warming.pk).update(warming_held_reason="Held on day 1 (cap 50): the figures.")
    an_hour_ago = timezone.now() - timedelta(hours=1)
    record_sends(warming, 195, at=an_hour_ago)
    record_sends(warming, 5, at=an_hour_ago, status=Message.Status.BOUNCED)
    record_sends(warming, 7, at=an_hour_ago - timedelta(hours=24), status=Message.Status.BOUNCED)  # too old

    with CaptureQueriesContext(connection) as one_warming:
        page = html.unescape(admin_client.get("/admin/delivery/provider/").content.decode())
    for n in range(4):
        more = ProviderFactory(name=f"more {n}", warming_plan=warming.warming_plan, warming_day=2,
                               warming_day_started_on=TODAY)  # fmt: skip
        record_sends(more, 10, at=an_hour_ago)
    with CaptureQueriesContext(connection) as five_warming:
        admin_client.get("/admin/delivery/provider/")

    assert len(five_warming) == len(one_warming)
    assert len([q for q in five_warming if "delivery_message" in q["sql"]]) == 1  # one grouped query
    assert "day 1 of 3, held" in page
    assert "Held on day 1 (cap 50): the figures." in page
    assert '<strong style="color:#b3261e">2.50% (5 of 200)</strong>' in page
    assert "0.00% (0 of 200)" in page


def test_the_admin_action_starts_warming_with_the_default_plan(admin_client):
    provider = ProviderFactory(name="fresh")

    response = admin_client.post(
        "/admin/delivery/provider/",
        {"action": "warming_start_default", "_selected_action": [provider.pk]},
        follow=True,
    )

    provider.refresh_from_db()
    assert provider.warming_plan is not None and provider.warming_plan.name == DEFAULT_WARMING_PLAN_NAME
    assert (provider.warming_day, provider.warming_day_started_on) == (1, local_today())
    page = html.unescape(response.content.decode())
    assert "Warming started on day 1 of 'Default 30-day warm-up' (cap 50) for: fresh." in page
    assert "day 1 of 30" in page


def test_the_warming_task_is_registered_with_the_worker_and_declared_for_beat(warming):
    from celery import current_app as app  # the project's app, made current when its settings were loaded

    Provider.objects.filter(pk=warming.pk).update(warming_day_started_on=local_today() - timedelta(days=1))

    app.loader.import_default_modules()
    name = "delivery.tasks_warming.providers_warming_advance_task"
    assert name in app.tasks
    assert [(e.task, e.every_seconds) for e in PERIODIC_TASKS if e.task == name] == [(name, 3600)]

    app.tasks[name]()

    warming.refresh_from_db()
    assert warming.warming_day == 2  # yesterday sent nothing: nothing to hold it on
