"""Rate limits and daily caps shared by every worker process (and machine) that sends.

Rates. A provider's `max_rate` and the global MAILER_GLOBAL_MAX_RATE are messages per second, and the
promise is about any one-second stretch, not an average: however many workers ask, no window of one second
holds more than `rate` grants. A token bucket cannot keep that (a full bucket plus a refill lets twice the
rate through across a refill boundary), so this is a sliding-window log: every granted message is an entry
with its time, and a request is granted only if the entries younger than the window leave room for it.
- A rate of r >= 1 allows floor(r) per second (whole messages: 14.5/s can only mean 14 in every second);
  a rate below 1 allows one message per 1/r seconds.
- The window is SEND_JITTER_ALLOWANCE longer than the second. A grant is not the send: rendering, the
  connection and the network add a few milliseconds that vary from message to message, so the sends of two
  grants exactly one window apart could land in the same second where they are measured (by us or by the
  ESP). The allowance costs that fraction of throughput at saturation (5 % at 1 s) and buys a margin.
- A request for n messages (a batch API call) is all or nothing; one for more than a window can ever hold
  is a programming error (ValueError).
- A refusal reserves nothing and says how long to wait before asking again: exactly when the oldest
  entries in the way age out (someone else may take the room first; ask again).

Daily caps. A counter per key and local day (the caller passes the date in settings.TIME_ZONE), taken
atomically: `daily_cap_take` grants between 0 and `count`, never past the cap, however many ask at once;
`daily_cap_return` gives back what was taken but not sent. Counters expire a few days after their day.

Store. Redis (settings.REDIS_URL) with one Lua script per operation; without Redis, a SQLite file
(settings.MAILER_LIMITS_FILE) locked for each operation, for the single machine of the embedded setup.
Chosen once per process from the settings. If Redis is unreachable every call raises LimiterUnavailable
(nothing reserved); the next call reconnects.

Keys: `provider_rate_key(id)` ("provider:<id>") and GLOBAL_RATE_KEY ("global") for rates; callers choose
the daily cap keys ("provider:<id>" for a provider's cap, "warming:<id>" for its warming cap, say).
Every key is stored under settings.MAILER_LIMITS_KEY_PREFIX, so several installations (or test runs) can
share one Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import date

from django.conf import settings

from delivery.exceptions import LimiterUnavailable
from delivery.limits_store import FileStore, LimitsStore, RedisStore, Window

__all__ = [
    "GLOBAL_RATE_KEY",
    "SEND_JITTER_ALLOWANCE",
    "LimiterUnavailable",
    "daily_cap_return",
    "daily_cap_take",
    "daily_count",
    "provider_rate_key",
    "provider_rate_limits",
    "rate_reserve",
    "rate_reserve_all",
    "rate_wait",
    "rate_wait_all",
    "rate_window",
]

GLOBAL_RATE_KEY = "global"
SEND_JITTER_ALLOWANCE = 0.05  # seconds added to every rate window; see the module docstring

_store: LimitsStore | None = None
_store_config: tuple[str, str] | None = None


def limits_store() -> LimitsStore:
    """The store for this process, made on first use from the settings (again only if they change: tests)."""
    global _store, _store_config
    config = (settings.REDIS_URL, settings.MAILER_LIMITS_FILE)
    if _store is None or config != _store_config:
        _store = RedisStore(config[0]) if config[0] else FileStore(config[1])
        _store_config = config
    return _store


def _key(kind: str, key: str) -> str:
    return f"{settings.MAILER_LIMITS_KEY_PREFIX}{kind}:{key}"


def provider_rate_key(provider_id: int) -> str:
    return f"provider:{provider_id}"


def provider_rate_limits(*, provider_id: int, max_rate: float | None) -> list[tuple[str, float]]:
    """The rate limits a send through this provider must pass: its own and the global one, where set."""
    limits: list[tuple[str, float]] = []
    if max_rate is not None:
        limits.append((provider_rate_key(provider_id), max_rate))
    if settings.MAILER_GLOBAL_MAX_RATE is not None:
        limits.append((GLOBAL_RATE_KEY, settings.MAILER_GLOBAL_MAX_RATE))
    return limits


def rate_window(rate: float) -> tuple[int, float]:
    """(messages, seconds): at most that many grants in any window of that length, for `rate` per second."""
    if not rate > 0 or math.isinf(rate):
        raise ValueError(f"a rate limit must be a positive number of messages per second, not {rate!r}")
    if rate >= 1:
        return math.floor(rate + 1e-9), 1.0 + SEND_JITTER_ALLOWANCE
    return 1, 1.0 / rate + SEND_JITTER_ALLOWANCE


def rate_reserve_all(*, limits: Sequence[tuple[str, float]], count: int = 1) -> float:
    """Reserve `count` sends under every (key, rate) at once, or none: 0.0 when granted now, else the seconds
    to wait before asking again (nothing was reserved). No limits: granted."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    windows = []
    for key, rate in limits:
        limit, seconds = rate_window(rate)
        if count > limit:
            raise ValueError(f"{count} messages at once can never pass a limit of {rate}/s on {key!r}")
        windows.append(Window(key=_key("rate", key), limit=limit, seconds=seconds))
    if not windows:
        return 0.0
    return limits_store().rate_reserve(windows, count)


def rate_reserve(*, key: str, rate: float, count: int = 1) -> float:
    """Reserve `count` sends under one limit: 0.0 when granted now, else the seconds to wait (nothing taken)."""
    return rate_reserve_all(limits=[(key, rate)], count=count)


def rate_wait_all(*, limits: Sequence[tuple[str, float]], count: int = 1, max_wait: float) -> bool:
    """Reserve, sleeping as told between tries, for at most `max_wait` seconds. False: not granted in time
    (nothing reserved); it gives up at once when the wait it is told already passes the deadline."""
    deadline = time.monotonic() + max_wait
    while True:
        wait = rate_reserve_all(limits=limits, count=count)
        if wait <= 0:
            return True
        if time.monotonic() + wait > deadline:
            return False
        time.sleep(wait)


def rate_wait(*, key: str, rate: float, count: int = 1, max_wait: float) -> bool:
    return rate_wait_all(limits=[(key, rate)], count=count, max_wait=max_wait)


def _cap_key(key: str, day: date) -> str:
    return _key("cap", f"{key}:{day.isoformat()}")


def daily_cap_take(*, key: str, cap: int, count: int, day: date) -> int:
    """Take up to `count` of the day's `cap` for `key`: returns how many were granted (0..count). Atomic: the
    sum granted on one day never passes the cap, whoever asks. A cap of 0 grants nothing."""
    if count < 0:
        raise ValueError(f"count must not be negative, not {count}")
    if count == 0:
        return 0
    return limits_store().cap_take(_cap_key(key, day), cap, count)


def daily_cap_return(*, key: str, count: int, day: date) -> int:
    """Give back `count` taken on `day` but not used (never below zero). Returns the day's count after."""
    if count <= 0:
        return daily_count(key=key, day=day)
    return limits_store().cap_return(_cap_key(key, day), count)


def daily_count(*, key: str, day: date) -> int:
    """How much of `key`'s cap is taken on `day`."""
    return limits_store().cap_count(_cap_key(key, day))
