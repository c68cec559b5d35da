"""Shared rate limits, daily caps and circuit breakers, on both stores (Redis, and the SQLite file used without
Redis), with several real processes where the promise is about concurrency."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import date

import pytest
import redis
from django.db import connections

from delivery import limits
from delivery.circuit import circuit_allows, circuit_record, circuit_reset, circuit_state
from delivery.exceptions import LimiterUnavailable
from delivery.limits import (
    SEND_JITTER_ALLOWANCE,
    daily_cap_return,
    daily_cap_take,
    daily_count,
    provider_rate_limits,
    rate_reserve,
    rate_reserve_all,
    rate_wait,
    rate_window,
)

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
WINDOW = 1.0 + SEND_JITTER_ALLOWANCE
DAY = date(2026, 3, 14)

# fork: the children inherit this test's settings (store, key prefix) as they are.
fork = multiprocessing.get_context("fork")


def _redis_reachable() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.exceptions.ConnectionError:
        return False


@pytest.fixture(params=["redis", "file"])
def store(request, settings, tmp_path) -> Iterator[str]:
    """Each test on each store, under a key prefix of its own; its Redis keys are deleted afterwards."""
    prefix = f"test-limits-{uuid.uuid4().hex[:12]}:"
    settings.MAILER_LIMITS_KEY_PREFIX = prefix
    settings.MAILER_GLOBAL_MAX_RATE = None
    settings.MAILER_CIRCUIT_FAILURES = 5
    settings.MAILER_CIRCUIT_COOLDOWN_SECONDS = 60
    if request.param == "redis":
        if not _redis_reachable():
            pytest.skip(f"no Redis at {REDIS_URL}")
        settings.REDIS_URL = REDIS_URL
    else:
        settings.REDIS_URL = ""
        settings.MAILER_LIMITS_FILE = str(tmp_path / "limits.sqlite3")
    yield request.param
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


class _ChildFailed:
    def __init__(self, error: str) -> None:
        self.error = error


def _child(target: Callable[..., None], args: tuple, queue) -> None:
    try:
        target(*args, queue)
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        queue.put(_ChildFailed(traceback.format_exc()))


def _in_processes(target: Callable[..., None], args_for: list[tuple], timeout: float = 60) -> list:
    """Run `target(*args, queue)` in one process per args; return what each put on the queue."""
    connections.close_all()  # a forked child must not share the parent's database connections
    queue = fork.Queue()
    processes = [fork.Process(target=_child, args=(target, args, queue)) for args in args_for]
    for process in processes:
        process.start()
    results = [queue.get(timeout=timeout) for _ in processes]
    for process in processes:
        process.join(timeout=timeout)
    failures = [result.error for result in results if isinstance(result, _ChildFailed)]
    assert not failures, failures[0]
    assert [process.exitcode for process in processes] == [0] * len(processes)
    return results


# --- rates ------------------------------------------------------------------------------------------------


def test_rate_window_is_whole_messages_per_second_or_one_per_period():
    assert rate_window(50) == (50, WINDOW)
    assert rate_window(14.9) == (14, WINDOW)
    assert rate_window(1) == (1, WINDOW)
    assert rate_window(0.5) == (1, 2.0 + SEND_JITTER_ALLOWANCE)
    for bad in (0, -3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number of messages per second"):
            rate_window(bad)


def test_rate_grants_the_limit_then_says_when_the_oldest_ages_out(store):
    before = time.time()
    granted = [rate_reserve(key="p", rate=5) for _ in range(5)]
    wait = rate_reserve(key="p", rate=5)
    after = time.time()

    assert granted == [0.0] * 5
    # The sixth may go when the first grant is one window old.
    assert WINDOW - (after - before) <= wait <= WINDOW


def test_rate_refusal_reserves_nothing(store):
    assert [rate_reserve(key="p", rate=3) for _ in range(3)] == [0.0, 0.0, 0.0]
    waits = [rate_reserve(key="p", rate=3) for _ in range(10)]
    assert all(w > 0 for w in waits)

    # Long enough for the three granted entries to leave the window, however slowly a loaded machine made them.
    time.sleep(max(waits) + 1.1)

    # The refused requests took nothing: the whole limit is free again, and no more.
    assert [rate_reserve(key="p", rate=3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rate_reserve(key="p", rate=3) > 0


def test_rate_counts_a_batch_as_its_messages_all_or_nothing(store):
    assert rate_reserve(key="p", rate=10, count=7) == 0.0
    assert rate_reserve(key="p", rate=10, count=4) > 0  # 11 would pass 10: nothing of the 4 is taken
    assert rate_reserve(key="p", rate=10, count=3) == 0.0
    assert rate_reserve(key="p", rate=10, count=1) > 0
    with pytest.raises(ValueError, match="can never pass"):
        rate_reserve(key="q", rate=10, count=11)


def test_rate_below_one_per_second_allows_one_per_period(store):
    assert rate_reserve(key="slow", rate=0.5) == 0.0
    wait = rate_reserve(key="slow", rate=0.5)
    assert 2.0 < wait <= 2.0 + SEND_JITTER_ALLOWANCE


def test_rate_keys_are_independent(store):
    assert rate_reserve(key="a", rate=1) == 0.0
    assert rate_reserve(key="b", rate=1) == 0.0
    assert rate_reserve(key="a", rate=1) > 0


def test_rate_reserve_all_takes_every_limit_or_none(store):
    both = [("provider:1", 10), ("global", 2)]
    assert rate_reserve_all(limits=both, count=2) == 0.0

    assert rate_reserve_all(limits=both) > 0  # the global limit is full

    # ... and the refusal took nothing from the provider's own limit: 8 of its 10 are still free.
    assert rate_reserve(key="provider:1", rate=10, count=8) == 0.0
    assert rate_reserve(key="provider:1", rate=10) > 0
    assert rate_reserve_all(limits=[]) == 0.0


def test_provider_rate_limits_adds_the_global_rate_when_set(store, settings):
    assert provider_rate_limits(provider_id=7, max_rate=None) == []
    assert provider_rate_limits(provider_id=7, max_rate=20) == [("provider:7", 20)]
    settings.MAILER_GLOBAL_MAX_RATE = 100.0
    assert provider_rate_limits(provider_id=7, max_rate=20) == [("provider:7", 20), ("global", 100.0)]
    assert provider_rate_limits(provider_id=7, max_rate=None) == [("global", 100.0)]


def test_rate_wait_gives_up_at_once_when_the_wait_passes_its_deadline(store):
    assert rate_wait(key="p", rate=1, max_wait=0) is True
    started = time.monotonic()

    assert rate_wait(key="p", rate=1, max_wait=0.2) is False
    assert time.monotonic() - started < 0.2  # told to wait ~1 s, it did not sleep first

    assert rate_wait(key="p", rate=1, max_wait=5) is True


def _send_for(key: str, rate: float, start_at: float, seconds: float, queue) -> None:
    """rate_wait's loop, written out so as to note when each granting call began and ended: the grant's own
    time lies between the two, whatever the scheduler does to this process right after it."""
    grants = []
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    while time.time() < end:
        before = time.time()
        wait = rate_reserve(key=key, rate=rate)
        if wait == 0:
            grants.append((before, time.time()))
        else:
            time.sleep(min(wait, max(end - time.time(), 0)))
    queue.put(grants)


def _surely_within(grants: list[tuple[float, float]], span: float) -> int:
    """The most grants certainly inside one window [s, s + span): those whose whole call lies inside it.

    A lower bound of the true count, so a figure over the limit proves the limiter wrong; a recorded time
    taken after the call, by contrast, can land a grant in the next window when the process is descheduled
    between the grant and the clock reading (seen on a loaded machine), and that would prove nothing."""
    return max((sum(1 for b, a in grants if start <= b and a < start + span) for start, _after in grants), default=0)


def test_four_processes_never_pass_the_rate_in_any_one_second_window(store):
    """The promise of the issue: 4 workers at 50/s; no window of one second holds more than 50 grants."""
    start_at = time.time() + 0.5
    results = _in_processes(_send_for, [("provider:1", 50, start_at, 3.0)] * 4)
    grants = [grant for result in results for grant in result]

    assert _surely_within(grants, 1.0) <= 50
    assert _surely_within(grants, WINDOW) <= 50  # the window the limiter actually keeps
    assert len(grants) >= 100  # it does let traffic through (50 in each window of 1.05 s)


def test_the_window_count_would_catch_a_limiter_that_lets_too_many_through():
    """The measure above is not blind: 60 grants within half a second count 60."""
    grants = [(100.0 + i * 0.008, 100.0 + i * 0.008 + 0.001) for i in range(60)]
    assert _surely_within(grants, 1.0) == 60


# --- daily caps -------------------------------------------------------------------------------------------


def test_daily_cap_grants_up_to_the_cap_and_takes_back_returns(store):
    assert daily_cap_take(key="provider:1", cap=10, count=7, day=DAY) == 7
    assert daily_cap_take(key="provider:1", cap=10, count=5, day=DAY) == 3
    assert daily_cap_take(key="provider:1", cap=10, count=1, day=DAY) == 0
    assert daily_count(key="provider:1", day=DAY) == 10

    assert daily_cap_return(key="provider:1", count=4, day=DAY) == 6
    assert daily_cap_take(key="provider:1", cap=10, count=9, day=DAY) == 4
    assert daily_count(key="provider:1", day=DAY) == 10


def test_daily_cap_days_and_keys_are_apart_and_never_below_zero(store):
    other_day = date(2026, 3, 15)
    assert daily_cap_take(key="provider:1", cap=3, count=3, day=DAY) == 3
    assert daily_cap_take(key="provider:1", cap=3, count=2, day=other_day) == 2
    assert daily_cap_take(key="provider:2", cap=3, count=1, day=DAY) == 1

    assert daily_cap_return(key="provider:1", count=50, day=other_day) == 0
    assert daily_count(key="provider:1", day=other_day) == 0
    assert daily_count(key="provider:1", day=DAY) == 3
    assert daily_count(key="nobody", day=DAY) == 0
    assert daily_cap_take(key="zero", cap=0, count=5, day=DAY) == 0
    assert daily_cap_take(key="provider:2", cap=3, count=0, day=DAY) == 0


def test_daily_cap_lowered_below_the_count_grants_nothing(store):
    assert daily_cap_take(key="p", cap=10, count=8, day=DAY) == 8
    assert daily_cap_take(key="p", cap=5, count=1, day=DAY) == 0
    assert daily_count(key="p", day=DAY) == 8


def _take_until_exhausted(key: str, cap: int, seed: int, queue) -> None:
    granted, step = 0, seed
    while True:
        count = step % 7 + 1
        step += 3
        got = daily_cap_take(key=key, cap=cap, count=count, day=DAY)
        granted += got
        if got < count:  # the cap is reached: everyone from now on gets nothing more
            break
    queue.put(granted)


def test_daily_cap_is_never_exceeded_by_concurrent_processes(store):
    granted = _in_processes(_take_until_exhausted, [("provider:1", 500, seed) for seed in range(6)])

    assert sum(granted) == 500
    assert daily_count(key="provider:1", day=DAY) == 500


# --- circuit breaker --------------------------------------------------------------------------------------


def _wait_for_state(provider_id: int, state: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while circuit_state(provider_id=provider_id) != state:
        assert time.monotonic() < deadline, f"circuit never became {state}"
        time.sleep(0.02)


def test_circuit_opens_after_consecutive_failures_only(store, caplog):
    assert circuit_state(provider_id=1) == "closed"
    assert [circuit_record(provider_id=1, ok=False) for _ in range(4)] == ["closed"] * 4
    assert circuit_record(provider_id=1, ok=True) == "closed"  # a success breaks the run
    assert [circuit_record(provider_id=1, ok=False) for _ in range(4)] == ["closed"] * 4
    assert circuit_allows(provider_id=1) is True

    with caplog.at_level(logging.WARNING, logger="delivery.circuit"):
        assert circuit_record(provider_id=1, ok=False) == "open"

    assert circuit_state(provider_id=1) == "open"
    assert circuit_allows(provider_id=1) is False
    assert circuit_state(provider_id=2) == "closed"  # one provider's circuit is its own
    assert [r.getMessage() for r in caplog.records] == [
        "provider 1: circuit opened after 5 consecutive failures; next trial in 60 s"
    ]


def test_circuit_ignores_outcomes_while_open(store):
    for _ in range(5):
        circuit_record(provider_id=1, ok=False)

    assert circuit_record(provider_id=1, ok=True) == "open"  # a call made before it opened
    assert circuit_record(provider_id=1, ok=False) == "open"
    assert circuit_allows(provider_id=1) is False


def test_circuit_half_opens_after_cooldown_for_one_trial(store, settings, caplog):
    settings.MAILER_CIRCUIT_COOLDOWN_SECONDS = 0.3
    for _ in range(5):
        circuit_record(provider_id=1, ok=False)
    assert circuit_allows(provider_id=1) is False

    _wait_for_state(1, "half_open")
    assert [circuit_allows(provider_id=1) for _ in range(3)] == [True, False, False]

    # The trial fails: open again for another cool-down.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="delivery.circuit"):
        assert circuit_record(provider_id=1, ok=False) == "open"
        assert circuit_allows(provider_id=1) is False
        _wait_for_state(1, "half_open")
        assert circuit_allows(provider_id=1) is True
        # The trial succeeds: closed, for everyone.
        assert circuit_record(provider_id=1, ok=True) == "closed"

    assert [circuit_allows(provider_id=1) for _ in range(3)] == [True, True, True]
    assert [r.getMessage() for r in caplog.records] == [
        "provider 1: circuit re-opened, the trial call failed; next trial in 0.3 s",
        "provider 1: circuit closed, the trial call succeeded",
    ]
    # Closed means a fresh count: it takes five failures again to open it.
    assert [circuit_record(provider_id=1, ok=False) for _ in range(4)] == ["closed"] * 4


def test_circuit_trial_that_never_reports_is_replaced_after_a_cooldown(store, settings):
    settings.MAILER_CIRCUIT_COOLDOWN_SECONDS = 0.3
    for _ in range(5):
        circuit_record(provider_id=1, ok=False)
    _wait_for_state(1, "half_open")
    assert circuit_allows(provider_id=1) is True  # this trial's worker dies without a word

    assert circuit_allows(provider_id=1) is False
    deadline = time.monotonic() + 5
    while not circuit_allows(provider_id=1):
        assert time.monotonic() < deadline, "no new trial after the lost one's lease"
        time.sleep(0.02)
    assert circuit_allows(provider_id=1) is False


def test_circuit_reset_closes_it(store):
    for _ in range(5):
        circuit_record(provider_id=1, ok=False)

    circuit_reset(provider_id=1)

    assert circuit_state(provider_id=1) == "closed"
    assert circuit_allows(provider_id=1) is True


def _ask_for_trial(provider_id: int, start_at: float, queue) -> None:
    while time.time() < start_at:
        time.sleep(0.001)
    queue.put(circuit_allows(provider_id=provider_id))


def test_circuit_gives_exactly_one_trial_to_concurrent_processes(store, settings):
    # The trial holds the door for one cool-down: long enough here that every process asks within it, even on a
    # loaded machine where starting eight processes takes a while.
    settings.MAILER_CIRCUIT_COOLDOWN_SECONDS = 2.0
    for _ in range(5):
        circuit_record(provider_id=1, ok=False)
    _wait_for_state(1, "half_open")

    start_at = time.time() + 1.0
    answers = _in_processes(_ask_for_trial, [(1, start_at)] * 8)

    assert sorted(answers) == [False] * 7 + [True]


# --- an unreachable store ---------------------------------------------------------------------------------


def test_unreachable_redis_raises_limiter_unavailable_and_the_next_call_reconnects(store, settings):
    if store != "redis":
        pytest.skip("Redis only")
    good_url = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there

    for call in (
        lambda: rate_reserve(key="p", rate=5),
        lambda: daily_cap_take(key="p", cap=5, count=1, day=DAY),
        lambda: circuit_allows(provider_id=1),
        lambda: circuit_record(provider_id=1, ok=False),
    ):
        with pytest.raises(LimiterUnavailable):
            call()

    settings.REDIS_URL = good_url
    assert rate_reserve(key="p", rate=5) == 0.0


def test_a_dropped_redis_connection_is_replaced_on_the_next_call(store):
    """What a Redis restart does to the pooled connections: the next call opens a new one and goes on."""
    if store != "redis":
        pytest.skip("Redis only")
    assert rate_reserve(key="p", rate=5) == 0.0
    client = limits.limits_store().client  # type: ignore[attr-defined]
    own_id = client.client_id()
    redis.Redis.from_url(REDIS_URL).client_kill_filter(_id=own_id)

    assert rate_reserve(key="p", rate=5) == 0.0
    assert client.client_id() != own_id


def test_unusable_limits_file_raises_limiter_unavailable(store, settings, tmp_path):
    if store != "file":
        pytest.skip("file only")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    settings.MAILER_LIMITS_FILE = str(blocker / "limits.sqlite3")

    with pytest.raises(LimiterUnavailable, match="not usable"):
        rate_reserve(key="p", rate=5)


def test_circuit_threshold_comes_from_the_settings(store, settings):
    settings.MAILER_CIRCUIT_FAILURES = 2
    assert circuit_record(provider_id=1, ok=False) == "closed"
    assert circuit_record(provider_id=1, ok=False) == "open"


def test_every_redis_key_expires(store, settings):
    """Nothing is kept for ever: rate logs after their window, caps days after their day, circuits a day after
    their last change."""
    if store != "redis":
        pytest.skip("Redis only")
    rate_reserve_all(limits=[("provider:1", 5), ("global", 10)], count=2)
    daily_cap_take(key="provider:1", cap=10, count=3, day=DAY)
    circuit_record(provider_id=1, ok=False)
    for _ in range(5):
        circuit_record(provider_id=2, ok=False)

    client = redis.Redis.from_url(REDIS_URL)
    ttls = {key.decode(): client.ttl(key) for key in client.scan_iter(match=f"{settings.MAILER_LIMITS_KEY_PREFIX}*")}

    assert len(ttls) == 7  # two logs and their sequences, one counter, two circuits
    assert all(0 < ttl <= 3 * 24 * 3600 for ttl in ttls.values()), ttls
