"""A circuit breaker per provider, shared by every worker: stop calling a provider that keeps failing.

- closed: calls go through; each retryable failure adds one to a count of consecutive failures, a success
  sets it back to zero. MAILER_CIRCUIT_FAILURES in a row open the circuit.
- open: no calls for MAILER_CIRCUIT_COOLDOWN_SECONDS (the engine fails over to another provider, or waits).
- half_open: the cool-down is over and exactly one caller (atomically, across processes) is let through as
  a trial; everybody else is still refused. The trial's success closes the circuit, its failure opens it for
  another cool-down. A trial that never reports back (its worker died, or the router asked and then chose
  another provider) holds the door for one cool-down; then the next caller becomes the trial.
- Outcomes reported while open are ignored: they belong to calls made before it opened.

Only retryable failures (network, timeout, 5xx, 429, throttling) should be recorded as failures: a refused
recipient says nothing about the provider's health. State lives in the same store as the rate limits
(delivery.limits), and LimiterUnavailable is raised the same way when Redis is unreachable.
"""

from __future__ import annotations

import logging

from django.conf import settings

from delivery.limits import limits_store
from delivery.limits_store import CLOSED, HALF_OPEN, OPEN

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "circuit_allows", "circuit_record", "circuit_reset", "circuit_state"]

logger = logging.getLogger(__name__)


def _key(provider_id: int) -> str:
    return f"{settings.MAILER_LIMITS_KEY_PREFIX}circuit:provider:{provider_id}"


def circuit_allows(*, provider_id: int) -> bool:
    """May a call go to this provider now? In half-open, True for the one caller that gets the trial."""
    return limits_store().circuit_allows(_key(provider_id), float(settings.MAILER_CIRCUIT_COOLDOWN_SECONDS))


def circuit_record(*, provider_id: int, ok: bool) -> str:
    """Report a call's outcome (ok=False only for retryable failures); returns the circuit's new state."""
    cooldown = float(settings.MAILER_CIRCUIT_COOLDOWN_SECONDS)
    change = limits_store().circuit_record(_key(provider_id), ok, settings.MAILER_CIRCUIT_FAILURES, cooldown)
    if change.after == OPEN and change.before != OPEN:
        if change.before == HALF_OPEN:
            logger.warning("provider %s: circuit re-opened, the trial call failed; next trial in %g s",
                           provider_id, cooldown)  # fmt: skip
        else:
            logger.warning("provider %s: circuit opened after %s consecutive failures; next trial in %g s",
                           provider_id, change.failures, cooldown)  # fmt: skip
    elif change.after == CLOSED and change.before != CLOSED:
        logger.warning("provider %s: circuit closed, the trial call succeeded", provider_id)
    return change.after


def circuit_state(*, provider_id: int) -> str:
    """ "closed", "open" or "half_open" (an open circuit whose cool-down is over reads half_open: the next
    caller gets the trial)."""
    return limits_store().circuit_state(_key(provider_id))


def circuit_reset(*, provider_id: int) -> None:
    """Close the circuit and forget its failures (an operator who knows the provider is back; tests)."""
    limits_store().circuit_reset(_key(provider_id))
    logger.info("provider %s: circuit reset to closed", provider_id)
