"""Which provider sends a message: the mailing's candidates, each recipient's domain rules, health, and failover.

The candidates of a mailing: its pinned provider if it has one, else its pool, else every enabled provider;
disabled providers never. They are ordered by priority (lower first); among equal priorities the order is
drawn by weight, once per chunk, so traffic splits in the weights' proportions across chunks.

For each message the first candidate that routes the recipient's domain (Provider.routing_domains, `*`
wildcards; empty routes every domain) and is healthy (its circuit lets calls through) is chosen; a message
whose previous try failed on a provider goes to another eligible one when there is one (failover).
Healthy, as the engine asks it: the circuit lets calls through, the 24-hour bounce and complaint rates are
within the thresholds, and the day's cap (its own, or its warming plan's) is not used up. The rate limit is
applied per call, by the engine.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from core.addresses import email_domain
from delivery.models import Mailing, Message, Provider


def mailing_candidates(mailing: Mailing, *, rng: random.Random | None = None) -> list[Provider]:
    """The providers this mailing may use, in the order to try them."""
    if mailing.provider_id is not None:
        pinned = mailing.provider
        return [pinned] if pinned is not None and pinned.is_enabled else []
    pool = list(mailing.providers.filter(is_enabled=True).select_related("warming_plan")) if mailing.pk else []
    providers = pool or list(Provider.objects.filter(is_enabled=True).select_related("warming_plan"))
    return providers_order(providers, rng=rng)


def providers_order(providers: Iterable[Provider], *, rng: random.Random | None = None) -> list[Provider]:
    """By priority; within one priority, a weighted random order (weight 0 comes last)."""
    draw = rng or random.Random()  # noqa: S311 - load spreading, not security
    by_priority: dict[int, list[Provider]] = {}
    for provider in providers:
        by_priority.setdefault(provider.priority, []).append(provider)
    ordered: list[Provider] = []
    for priority in sorted(by_priority):
        group = sorted(by_priority[priority], key=lambda p: p.pk)
        while group:
            weights = [max(p.weight, 0) for p in group]
            if sum(weights) == 0:
                ordered.extend(group)
                break
            chosen = draw.choices(group, weights=weights)[0]
            ordered.append(chosen)
            group.remove(chosen)
    return ordered


def provider_routes_domain(provider: Provider, domain: str) -> bool:
    patterns = provider.routing_domains if isinstance(provider.routing_domains, list) else []
    if not patterns:
        return True
    domain = domain.lower()
    return any(fnmatchcase(domain, str(pattern).lower().strip()) for pattern in patterns)


@dataclass
class RoutePlan:
    groups: dict[int, list[Message]] = field(default_factory=dict)  # provider id -> messages, in claim order
    providers: dict[int, Provider] = field(default_factory=dict)
    unroutable: list[Message] = field(default_factory=list)  # no candidate serves the domain: a config error
    unhealthy: list[Message] = field(default_factory=list)  # some candidate serves it, none is healthy now


def route_messages(
    messages: Iterable[Message], candidates: list[Provider], *, is_healthy: Callable[[Provider], bool]
) -> RoutePlan:
    """Assign each message to a provider (see the module docstring). `is_healthy` is asked once per provider."""
    plan = RoutePlan()
    health: dict[int, bool] = {}

    def healthy(provider: Provider) -> bool:
        if provider.pk not in health:
            health[provider.pk] = is_healthy(provider)
        return health[provider.pk]

    for message in messages:
        domain = email_domain(message.to_email)
        serving = [p for p in candidates if provider_routes_domain(p, domain)]
        if not serving:
            plan.unroutable.append(message)
            continue
        # Health is asked in order and only as far as needed: asking a half-open circuit uses up its one trial.
        chosen: Provider | None = None
        previous: Provider | None = None
        for provider in serving:
            if not healthy(provider):
                continue
            if message.attempts and provider.pk == message.provider_id and previous is None:
                # The last try failed on this provider (or its worker was lost): another one gets the next.
                previous = provider
                continue
            chosen = provider
            break
        chosen = chosen or previous
        if chosen is None:
            plan.unhealthy.append(message)
            continue
        plan.providers[chosen.pk] = chosen
        plan.groups.setdefault(chosen.pk, []).append(message)
    return plan
