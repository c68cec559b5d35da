"""Provider reputation: how many messages a provider sent in a window, and how many of them bounced or drew a complaint.

These are reads (selectors). They sit beside the warming service, their first user, and serve the engine's routing,
which leaves a provider out while its last 24 hours are above the thresholds.

Counting: a message counts as sent by provider P in a window when P sent it (Message.provider) and its send was
recorded in the window (sent_at), whatever happened to it since: `sent`, `delivered`, `bounced` or `complained`.
A bounce or complaint is thus charged to the day the message went out, not to the day the ESP reported it; ESPs
compute their own rates the same way, over the mail sent.

Small samples: below settings.MAILER_REPUTATION_MIN_SENT messages (100 by default) the rates do not condemn a
provider. One bounce in 20 messages is 5 % and says little; the thresholds are meant for the volumes at which
mailbox providers and ESPs judge a sender. So the first warming days, whose caps are below that, always pass.

Who reads them: routing (delivery.services.sending) leaves a provider out while its last 24 hours are above the
thresholds (the cached figures, at most a minute old); warming (delivery.services.warming) holds a plan on the
figures of the day before and alerts; the provider admin shows the 24-hour rates. And providers_reputation_watch,
run after ESP events that bounce or complain are applied, raises the alert when a provider's 24-hour rates cross a
threshold: a WARNING log line and mail to the admins, once per crossing, and an INFO line when it is back under.

A bounce here is every message whose status became `bounced`, hard or soft (the status does not tell them apart):
stricter than SES's own bounce rate, which counts hard bounces only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.core.mail import mail_admins
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from delivery.models import Message, Provider, WarmingPlan

logger = logging.getLogger(__name__)

# The statuses of a message whose send was recorded; later ones are what the ESP reported about it.
SENT_STATUSES = (Message.Status.SENT, Message.Status.DELIVERED, Message.Status.BOUNCED, Message.Status.COMPLAINED)

REPUTATION_CACHE_KEY = "delivery:reputation:24h"


@dataclass(frozen=True)
class Reputation:
    sent: int = 0
    bounced: int = 0
    complained: int = 0

    @property
    def bounce_rate(self) -> float:
        return self.bounced / self.sent if self.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complained / self.sent if self.sent else 0.0


def _sent_in(since: datetime, until: datetime) -> QuerySet[Message]:
    return Message.objects.filter(sent_at__gte=since, sent_at__lt=until, status__in=SENT_STATUSES)


_SENT = Count("pk")
_BOUNCED = Count("pk", filter=Q(status=Message.Status.BOUNCED))
_COMPLAINED = Count("pk", filter=Q(status=Message.Status.COMPLAINED))


def provider_reputation(*, provider_id: int, since: datetime, until: datetime) -> Reputation:
    """Counts for one provider over [since, until): one query."""
    counts = (
        _sent_in(since, until)
        .filter(provider_id=provider_id)
        .aggregate(sent=_SENT, bounced=_BOUNCED, complained=_COMPLAINED)
    )
    return Reputation(sent=counts["sent"], bounced=counts["bounced"], complained=counts["complained"])


def providers_reputation_24h(*, now: datetime | None = None) -> dict[int, Reputation]:
    """Counts for every provider over the last 24 hours, in one grouped query.

    A provider that sent nothing in the window is absent: read it with `.get(provider_id, Reputation())`.
    """
    until = now or timezone.now()
    rows = (
        _sent_in(until - timedelta(hours=24), until)
        .filter(provider__isnull=False)
        .values("provider_id")
        .order_by()
        .annotate(sent=_SENT, bounced=_BOUNCED, complained=_COMPLAINED)
    )
    return {
        row["provider_id"]: Reputation(sent=row["sent"], bounced=row["bounced"], complained=row["complained"])
        for row in rows
    }


def providers_reputation_24h_cached(*, max_age_seconds: int = 60) -> dict[int, Reputation]:
    """The same, computed at most once a minute for all workers (the shared cache).

    For routing, which would otherwise run the grouped query over a day of messages for every chunk. A rate a minute
    old is as good as a fresh one: bounces and complaints reach us minutes to hours after the send anyway.
    """
    cached = cache.get(REPUTATION_CACHE_KEY)
    if cached is None:
        fresh = providers_reputation_24h()
        cached = {pk: (r.sent, r.bounced, r.complained) for pk, r in fresh.items()}
        cache.set(REPUTATION_CACHE_KEY, cached, timeout=max_age_seconds)
    return {pk: Reputation(sent=s, bounced=b, complained=c) for pk, (s, b, c) in cached.items()}


def reputation_thresholds(*, plan: WarmingPlan | None) -> tuple[float, float]:
    """(max bounce rate, max complaint rate): the plan's when the provider has one, else the settings'."""
    if plan is not None:
        return plan.max_bounce_rate, plan.max_complaint_rate
    return settings.MAILER_MAX_BOUNCE_RATE, settings.MAILER_MAX_COMPLAINT_RATE


def provider_reputation_problem(*, reputation: Reputation, plan: WarmingPlan | None = None) -> str:
    """What is wrong with these figures, in words with the numbers; empty when nothing is.

    A rate equal to its threshold passes: only a rate above it holds a plan or takes a provider out of routing.
    """
    if reputation.sent < settings.MAILER_REPUTATION_MIN_SENT:
        return ""
    max_bounce_rate, max_complaint_rate = reputation_thresholds(plan=plan)
    problems = []
    if reputation.bounce_rate > max_bounce_rate:
        problems.append(
            f"bounce rate {reputation.bounce_rate:.2%} ({reputation.bounced} of {reputation.sent}) "
            f"above {max_bounce_rate:.2%}"
        )
    if reputation.complaint_rate > max_complaint_rate:
        problems.append(
            f"complaint rate {reputation.complaint_rate:.2%} ({reputation.complained} of {reputation.sent}) "
            f"above {max_complaint_rate:.2%}"
        )
    return "; ".join(problems)


def provider_reputation_ok(*, reputation: Reputation, plan: WarmingPlan | None = None) -> bool:
    return not provider_reputation_problem(reputation=reputation, plan=plan)


# One alert per provider and crossing: the flag lives in the shared cache, so one worker alerts however many apply
# events; it lapses after a day, so a provider that stays above its thresholds is reported again daily.
REPUTATION_ALERT_KEY = "delivery:reputation:alert:{}"
REPUTATION_ALERT_TTL = 24 * 3600


def providers_reputation_watch() -> list[str]:
    """Alert on every provider whose 24-hour bounce or complaint rate is above its threshold and was not a moment
    ago (the figures routing uses, at most a minute old). Returns the alerts raised, one line per provider."""
    reputations = providers_reputation_24h_cached()
    alerts = []
    for provider in Provider.objects.filter(pk__in=list(reputations)).select_related("warming_plan").order_by("pk"):
        problem = provider_reputation_problem(reputation=reputations[provider.pk], plan=provider.warming_plan)
        key = REPUTATION_ALERT_KEY.format(provider.pk)
        if not problem:
            if cache.get(key) is not None:
                cache.delete(key)
                logger.info("provider %s back within its reputation thresholds over the last 24 hours", provider.name)
            continue
        if not cache.add(key, problem, timeout=REPUTATION_ALERT_TTL):
            continue  # alerted already
        line = f"{provider.name}: {problem} over the last 24 hours; routing leaves it out until it is back under"
        logger.warning("provider reputation alert: %s", line)
        mail_admins(
            subject=f"Provider {provider.name} above its reputation thresholds", message=line, fail_silently=True
        )
        alerts.append(line)
    return alerts
