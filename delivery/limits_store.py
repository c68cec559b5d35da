"""Where the shared limits live: Redis (Lua scripts, one round trip each) or, with no Redis, a SQLite file.

Both stores keep the same state with the same rules; delivery.limits and delivery.circuit choose one and
speak only to the small interface below. Every decision reads the clock *inside* the atomic step (Redis
TIME in the script; time.time() after SQLite's write lock is held), so grants are ordered the same way as
their timestamps, which the sliding window depends on: a timestamp read before waiting for the lock could
be older than a grant already stored, and that grant would fall outside the window it was counted in.

Rates are a sliding-window log: one entry per message granted, scored by its time. A request for n is
granted when the entries younger than the window plus n stay within the limit; otherwise it reserves
nothing and the answer is when enough of the oldest entries will have aged out.

Circuits are one record per provider: state (closed, open, half_open), consecutive failures, and `until`
(the end of the cool-down when open, the end of the trial's lease when half-open).
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from delivery.exceptions import LimiterUnavailable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# Daily counters outlive their day by this much (the day is local, the caller's clock may be a bit off).
CAP_TTL_SECONDS = 3 * 24 * 3600
# A circuit left alone this long is forgotten (it reads as closed). Far longer than any cool-down.
CIRCUIT_TTL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Window:
    """`limit` messages at most in any `seconds`-long stretch."""

    key: str
    limit: int
    seconds: float


@dataclass(frozen=True)
class CircuitChange:
    before: str
    after: str
    failures: int


class LimitsStore(Protocol):
    def rate_reserve(self, windows: Sequence[Window], count: int) -> float: ...
    def cap_take(self, key: str, cap: int, count: int) -> int: ...
    def cap_return(self, key: str, count: int) -> int: ...
    def cap_count(self, key: str) -> int: ...
    def circuit_allows(self, key: str, lease: float) -> bool: ...
    def circuit_record(self, key: str, ok: bool, threshold: int, cooldown: float) -> CircuitChange: ...
    def circuit_state(self, key: str) -> str: ...
    def circuit_reset(self, key: str) -> None: ...


# --- Redis ------------------------------------------------------------------------------------------------

_LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: per window, its sorted set then its sequence counter. ARGV: count, then per window limit, seconds.
# All or nothing: if any window is full nothing is added, and the answer is the longest wait among them.
_LUA_RATE = (
    _LUA_NOW
    + """
local count = tonumber(ARGV[1])
local wait = 0
local n = #KEYS / 2
for i = 1, n do
  local key = KEYS[2 * i - 1]
  local limit = tonumber(ARGV[2 * i])
  local seconds = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - seconds)
  local excess = redis.call('ZCARD', key) + count - limit
  if excess > 0 then
    local oldest = redis.call('ZRANGE', key, excess - 1, excess - 1, 'WITHSCORES')
    local w = tonumber(oldest[2]) + seconds - now
    if w > wait then wait = w end
  end
end
if wait > 0 then return tostring(wait) end
for i = 1, n do
  local key, seq_key = KEYS[2 * i - 1], KEYS[2 * i]
  local seconds = tonumber(ARGV[2 * i + 1])
  local last = redis.call('INCRBY', seq_key, count)
  -- One member per message; ZADD in slices, since unpack() has a limit on how many values it can spread.
  local j = 1
  while j <= count do
    local args = {}
    for m = j, math.min(count, j + 499) do
      args[#args + 1] = now
      args[#args + 1] = last - count + m
    end
    redis.call('ZADD', key, unpack(args))
    j = j + 500
  end
  local ttl = math.ceil(seconds * 1000) + 1000
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', seq_key, ttl)
end
return '0'
"""
)

_LUA_CAP_TAKE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - used)
if grant <= 0 then return 0 end
redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return grant
"""

_LUA_CAP_RETURN = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local back = math.min(tonumber(ARGV[1]), used)
if back > 0 then redis.call('DECRBY', KEYS[1], back) end
return used - back
"""

_LUA_CIRCUIT_ALLOWS = (
    _LUA_NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'until')
local state = h[1] or 'closed'
if state == 'closed' then return 1 end
if now < tonumber(h[2] or '0') then return 0 end
-- Open and cooled down, or half-open with a trial that never reported back: this caller is the trial.
redis.call('HSET', KEYS[1], 'state', 'half_open', 'until', tostring(now + tonumber(ARGV[1])))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# ARGV: ok (1/0), threshold, cooldown, ttl. Returns {before, after, failures}.
_LUA_CIRCUIT_RECORD = (
    _LUA_NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'failures')
local state = h[1] or 'closed'
local failures = tonumber(h[2] or '0')
local ok = ARGV[1] == '1'
if state == 'open' then return {state, state, failures} end
if ok then
  if state == 'half_open' or failures > 0 then redis.call('DEL', KEYS[1]) end
  return {state, 'closed', 0}
end
failures = failures + 1
if state == 'half_open' or failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', tostring(now + tonumber(ARGV[3])), 'failures', failures)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {state, 'open', failures}
end
redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', failures)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {state, 'closed', failures}
"""
)

_LUA_CIRCUIT_STATE = (
    _LUA_NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'until')
local state = h[1] or 'closed'
if state == 'open' and now >= tonumber(h[2] or '0') then return 'half_open' end
return state
"""
)


class RedisStore:
    """One connection pool per process (redis-py resets it after a fork); scripts by SHA, reloaded after a
    Redis restart empties its script cache (redis-py's Script does that)."""

    def __init__(self, url: str) -> None:
        # Fail fast when Redis is away: the engine puts the work back and tries later. One immediate retry on a
        # broken connection covers the pooled sockets a Redis restart leaves dead; a timeout is not retried,
        # because the script may have run (a second run would count twice).
        self.pool = redis.ConnectionPool.from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=2,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        )
        self.client = redis.Redis(connection_pool=self.pool)
        self._rate = self.client.register_script(_LUA_RATE)
        self._cap_take = self.client.register_script(_LUA_CAP_TAKE)
        self._cap_return = self.client.register_script(_LUA_CAP_RETURN)
        self._allows = self.client.register_script(_LUA_CIRCUIT_ALLOWS)
        self._record = self.client.register_script(_LUA_CIRCUIT_RECORD)
        self._state = self.client.register_script(_LUA_CIRCUIT_STATE)

    @contextmanager
    def _unavailable_as_error(self) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise LimiterUnavailable(f"Redis is unreachable for rate limits and circuits: {exc}") from exc

    def rate_reserve(self, windows: Sequence[Window], count: int) -> float:
        keys: list[str] = []
        args: list[str | int] = [count]
        for window in windows:
            keys += [f"{window.key}:log", f"{window.key}:seq"]
            args += [window.limit, repr(window.seconds)]
        with self._unavailable_as_error():
            return float(self._rate(keys=keys, args=args))

    def cap_take(self, key: str, cap: int, count: int) -> int:
        with self._unavailable_as_error():
            return int(self._cap_take(keys=[key], args=[cap, count, CAP_TTL_SECONDS]))

    def cap_return(self, key: str, count: int) -> int:
        with self._unavailable_as_error():
            return int(self._cap_return(keys=[key], args=[count]))

    def cap_count(self, key: str) -> int:
        with self._unavailable_as_error():
            value = self.client.get(key)
        return int(value or 0)

    def circuit_allows(self, key: str, lease: float) -> bool:
        with self._unavailable_as_error():
            return bool(self._allows(keys=[key], args=[repr(lease), CIRCUIT_TTL_SECONDS]))

    def circuit_record(self, key: str, ok: bool, threshold: int, cooldown: float) -> CircuitChange:
        ttl = max(CIRCUIT_TTL_SECONDS, int(cooldown * 2))
        with self._unavailable_as_error():
            before, after, failures = self._record(
                keys=[key], args=["1" if ok else "0", threshold, repr(cooldown), ttl]
            )
        return CircuitChange(before=_text(before), after=_text(after), failures=int(failures))

    def circuit_state(self, key: str) -> str:
        with self._unavailable_as_error():
            return _text(self._state(keys=[key]))

    def circuit_reset(self, key: str) -> None:
        with self._unavailable_as_error():
            self.client.delete(key)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- SQLite file (no Redis: the embedded single-machine setup) ---------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_log (key TEXT NOT NULL, at REAL NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_log_key_at ON rate_log (key, at);
CREATE TABLE IF NOT EXISTS counter (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS circuit (
    key TEXT PRIMARY KEY, state TEXT NOT NULL, failures INTEGER NOT NULL, until REAL NOT NULL,
    expires REAL NOT NULL
);
"""
# How often a process sweeps out rows of keys nobody asks about any more (each key's own rows go on use).
_SWEEP_SECONDS = 60.0


class FileStore:
    """The same state in one SQLite file shared by the processes of one machine (web, workers, beat).

    Every operation is one `BEGIN IMMEDIATE` transaction: SQLite's database-wide write lock makes it atomic
    across processes, as a Lua script is in Redis. Slower than Redis (a few hundred microseconds per call),
    which the embedded setup can afford. One connection per thread and per process (never shared over fork).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._last_sweep = 0.0

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
        # Switching a new file to WAL answers "database is locked" at once, without the busy timeout, when
        # another process is doing the same: try again for a while (WAL then stays set in the file).
        deadline = time.monotonic() + 30
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    conn.close()
                    raise
                time.sleep(random.uniform(0.005, 0.02))  # noqa: S311 - spreads the retries out
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _atomic(self) -> Iterator[tuple[sqlite3.Connection, float]]:
        """The write lock, then the clock (see the module docstring for why in that order)."""
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as exc:
            raise LimiterUnavailable(f"the limits file {self.path} is not usable: {exc}") from exc
        try:
            now = time.time()
            yield conn, now
            if now - self._last_sweep > _SWEEP_SECONDS:
                self._last_sweep = now + random.uniform(0, _SWEEP_SECONDS)  # noqa: S311 - spreads sweeps out
                for table in ("rate_log", "counter", "circuit"):
                    conn.execute(f"DELETE FROM {table} WHERE expires < ?", (now,))  # noqa: S608 - fixed names
            conn.execute("COMMIT")
        except BaseException as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise LimiterUnavailable(f"the limits file {self.path} is not usable: {exc}") from exc
            raise

    def rate_reserve(self, windows: Sequence[Window], count: int) -> float:
        with self._atomic() as (conn, now):
            wait = 0.0
            for window in windows:
                conn.execute("DELETE FROM rate_log WHERE key = ? AND at <= ?", (window.key, now - window.seconds))
                (used,) = conn.execute("SELECT COUNT(*) FROM rate_log WHERE key = ?", (window.key,)).fetchone()
                excess = used + count - window.limit
                if excess > 0:
                    (oldest,) = conn.execute(
                        "SELECT at FROM rate_log WHERE key = ? ORDER BY at LIMIT 1 OFFSET ?", (window.key, excess - 1)
                    ).fetchone()
                    wait = max(wait, oldest + window.seconds - now)
            if wait > 0:
                return wait
            for window in windows:
                conn.executemany(
                    "INSERT INTO rate_log (key, at, expires) VALUES (?, ?, ?)",
                    [(window.key, now, now + window.seconds)] * count,
                )
            return 0.0

    def _counter(self, conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM counter WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _counter_set(self, conn: sqlite3.Connection, key: str, value: int, now: float) -> None:
        conn.execute(
            "INSERT INTO counter (key, value, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
            (key, value, now + CAP_TTL_SECONDS),
        )

    def cap_take(self, key: str, cap: int, count: int) -> int:
        with self._atomic() as (conn, now):
            used = self._counter(conn, key)
            grant = min(count, cap - used)
            if grant <= 0:
                return 0
            self._counter_set(conn, key, used + grant, now)
            return grant

    def cap_return(self, key: str, count: int) -> int:
        with self._atomic() as (conn, now):
            used = self._counter(conn, key)
            back = min(count, used)
            if back > 0:
                self._counter_set(conn, key, used - back, now)
            return used - back

    def cap_count(self, key: str) -> int:
        with self._atomic() as (conn, _now):
            return self._counter(conn, key)

    def _circuit(self, conn: sqlite3.Connection, key: str) -> tuple[str, int, float]:
        row = conn.execute("SELECT state, failures, until FROM circuit WHERE key = ?", (key,)).fetchone()
        return (str(row[0]), int(row[1]), float(row[2])) if row else (CLOSED, 0, 0.0)

    def _circuit_set(self, conn: sqlite3.Connection, key: str, state: str, failures: int, until: float, ttl: float):
        conn.execute(
            "INSERT INTO circuit (key, state, failures, until, expires) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET state = excluded.state, failures = excluded.failures, "
            "until = excluded.until, expires = excluded.expires",
            (key, state, failures, until, time.time() + ttl),
        )

    def circuit_allows(self, key: str, lease: float) -> bool:
        with self._atomic() as (conn, now):
            state, failures, until = self._circuit(conn, key)
            if state == CLOSED:
                return True
            if now < until:
                return False
            self._circuit_set(conn, key, HALF_OPEN, failures, now + lease, CIRCUIT_TTL_SECONDS)
            return True

    def circuit_record(self, key: str, ok: bool, threshold: int, cooldown: float) -> CircuitChange:
        ttl = max(CIRCUIT_TTL_SECONDS, cooldown * 2)
        with self._atomic() as (conn, now):
            state, failures, until = self._circuit(conn, key)
            if state == OPEN:
                return CircuitChange(state, state, failures)
            if ok:
                if state == HALF_OPEN or failures > 0:
                    conn.execute("DELETE FROM circuit WHERE key = ?", (key,))
                return CircuitChange(state, CLOSED, 0)
            failures += 1
            if state == HALF_OPEN or failures >= threshold:
                self._circuit_set(conn, key, OPEN, failures, now + cooldown, ttl)
                return CircuitChange(state, OPEN, failures)
            self._circuit_set(conn, key, CLOSED, failures, until, ttl)
            return CircuitChange(state, CLOSED, failures)

    def circuit_state(self, key: str) -> str:
        with self._atomic() as (conn, now):
            state, _failures, until = self._circuit(conn, key)
            return HALF_OPEN if state == OPEN and now >= until else state

    def circuit_reset(self, key: str) -> None:
        with self._atomic() as (conn, _now):
            conn.execute("DELETE FROM circuit WHERE key = ?", (key,))
