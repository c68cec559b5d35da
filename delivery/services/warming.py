"""Warming: a new provider sends a little more each day, following its WarmingPlan, while its figures stay good.

Days are local days (settings.TIME_ZONE): day N of a plan starts at a local midnight. The beat task runs
providers_warming_advance every hour, and each run does the work only for providers whose day started before today,
so the step happens in the first run after midnight, and runs missed while beat slept are caught up by the next one.

Each step looks at what the provider sent since its current day started (normally: yesterday, midnight to midnight):
- figures within the plan's thresholds (or too few messages to judge: see reputation.py) -> the next day;
- above them -> the provider is held on the same day, its reason written on the provider (the admin shows it), and
  an alert goes out (a WARNING log line and Django's mail_admins). It is judged again the next day, on that day's
  figures alone.

Catching up: when beat missed days, the provider moves one day, not one per missed day. It sent at the same cap all
along, so it has proved that volume only; the missed days are judged together, as one larger sample.

After the plan's last day the provider keeps its plan and stands on day len(daily_caps) + 1: the plan no longer
caps it (cap_for_day is None), the admin shows it as done, and its thresholds still guide routing.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.mail import mail_admins
from django.db.models import Q
from django.utils import timezone

from delivery.exceptions import WarmingPlanInvalid
from delivery.models import Provider, WarmingPlan
from delivery.services.reputation import provider_reputation, provider_reputation_problem

logger = logging.getLogger(__name__)

DEFAULT_WARMING_PLAN_NAME = "Default 30-day warm-up"  # created by migration delivery 0007
MAX_PLAN_DAYS = 365


def local_today() -> date:
    """Today in settings.TIME_ZONE, whatever time zone a request may have activated."""
    return timezone.localdate(timezone=ZoneInfo(settings.TIME_ZONE))


def local_midnight(day: date) -> datetime:
    """The aware instant a local day starts (DST-safe: zoneinfo resolves the wall time)."""
    return datetime.combine(day, time.min, tzinfo=ZoneInfo(settings.TIME_ZONE))


def warming_plan_errors(*, daily_caps: Any, max_bounce_rate: Any, max_complaint_rate: Any) -> dict[str, str]:
    """What is wrong with a plan's values, by field name; empty when they are fine. The admin form and
    warming_start share it, so a plan typed in and a plan used are held to the same rules."""
    errors: dict[str, str] = {}
    if not isinstance(daily_caps, list) or not daily_caps:
        errors["daily_caps"] = "Enter a list of daily caps, one whole number per day, e.g. [50, 100, 200]."
    elif len(daily_caps) > MAX_PLAN_DAYS:
        errors["daily_caps"] = f"A plan has at most {MAX_PLAN_DAYS} days; this one has {len(daily_caps)}."
    else:
        for day, cap in enumerate(daily_caps, start=1):
            # bool is an int in Python; `true` in the JSON is a typing mistake, not a cap of 1.
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                errors["daily_caps"] = f"Day {day}: {cap!r} is not a positive whole number of messages."
                break
    for field, value in (("max_bounce_rate", max_bounce_rate), ("max_complaint_rate", max_complaint_rate)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            errors[field] = f"{value!r} is not a rate between 0 and 1 (0.02 means 2 %)."
    return errors


def warming_cap_today(*, provider: Provider) -> int | None:
    """How many messages the warming plan allows the provider today; None when it is not warming or has finished.

    The cap of the day the provider stands on: until the hourly beat moves it after midnight, yesterday's (lower)
    cap still holds, which errs on the safe side for at most an hour. Load providers with
    select_related("warming_plan") to keep this free of queries.
    """
    if provider.warming_plan_id is None or provider.warming_day < 1:
        return None
    plan = provider.warming_plan
    return plan.cap_for_day(provider.warming_day) if plan is not None else None


def provider_daily_cap_today(*, provider: Provider) -> int | None:
    """The tighter of the provider's own daily cap and its warming cap; None: no daily limit."""
    caps = [cap for cap in (provider.daily_cap, warming_cap_today(provider=provider)) if cap is not None]
    return min(caps) if caps else None


def warming_start(*, provider: Provider, plan: WarmingPlan, today: date | None = None) -> Provider:
    """Put the provider on day 1 of `plan` from today. Starting again restarts from day 1."""
    errors = warming_plan_errors(
        daily_caps=plan.daily_caps, max_bounce_rate=plan.max_bounce_rate, max_complaint_rate=plan.max_complaint_rate
    )
    if errors:
        raise WarmingPlanInvalid(f"The warming plan {plan.name!r} cannot be used: {' '.join(errors.values())}", errors)
    provider.warming_plan = plan
    provider.warming_day = 1
    provider.warming_day_started_on = today or local_today()
    provider.warming_held_reason = ""
    provider.save(
        update_fields=["warming_plan", "warming_day", "warming_day_started_on", "warming_held_reason", "updated_at"]
    )
    return provider


def providers_warming_advance(*, today: date | None = None) -> list[str]:
    """Move every warming provider whose day started before today (see the module docstring). Returns one line per
    provider it moved, held or finished; an empty list when there was nothing to do (the other runs of the day)."""
    today = today or local_today()
    due = (
        Provider.objects.filter(warming_plan__isnull=False, warming_day__gte=1)
        .filter(Q(warming_day_started_on__lt=today) | Q(warming_day_started_on__isnull=True))
        .select_related("warming_plan")
        .order_by("pk")
    )
    report = []
    for provider in due:
        line = _provider_warming_advance(provider, today)
        if line:
            report.append(line)
    return report


def _provider_warming_advance(provider: Provider, today: date) -> str:
    plan = provider.warming_plan
    day, started_on = provider.warming_day, provider.warming_day_started_on
    if plan is None or plan.cap_for_day(day) is None:
        return ""  # finished (or its plan was shortened under it): nothing left to advance
    # Written only if the row is still as read: two overlapping runs move a provider once and alert once.
    unchanged = Provider.objects.filter(
        pk=provider.pk, warming_plan=plan, warming_day=day, warming_day_started_on=started_on
    )
    now = timezone.now()
    if started_on is None:
        # A day set by hand without its date: it starts today, and is judged tomorrow.
        unchanged.update(warming_day_started_on=today, updated_at=now)
        return f"{provider.name}: day {day} of {plan.name!r} starts today"

    reputation = provider_reputation(
        provider_id=provider.pk, since=local_midnight(started_on), until=local_midnight(today)
    )
    problem = provider_reputation_problem(reputation=reputation, plan=plan)
    last = today - timedelta(days=1)
    period = f"on {last}" if started_on == last else f"from {started_on} to {last}"
    if problem:
        reason = f"Held on day {day} (cap {plan.cap_for_day(day)}): {problem} {period}."[:300]
        if not unchanged.update(warming_day_started_on=today, warming_held_reason=reason, updated_at=now):
            return ""
        _alert_held(provider, reason)
        return f"{provider.name}: {reason}"

    if not unchanged.update(warming_day=day + 1, warming_day_started_on=today, warming_held_reason="", updated_at=now):
        return ""
    figures = f"{reputation.sent} sent, {reputation.bounced} bounced, {reputation.complained} complained {period}"
    if plan.cap_for_day(day + 1) is None:
        logger.info("provider %s finished warming plan %r (%s)", provider.name, plan.name, figures)
        return f"{provider.name}: finished {plan.name!r} ({figures})"
    return f"{provider.name}: day {day} -> {day + 1}, cap {plan.cap_for_day(day + 1)} ({figures})"


def _alert_held(provider: Provider, reason: str) -> None:
    """After the row is written (no transaction is open here): a mail is network I/O, and it may fail."""
    logger.warning("warming of provider %s held: %s", provider.name, reason)
    mail_admins(
        subject=f"Warming held for provider {provider.name}",
        message=f"{reason}\n\nThe provider stays on this day's cap and is judged again after the next midnight.",
        fail_silently=True,
    )
