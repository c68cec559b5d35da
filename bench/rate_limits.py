"""Shared rate limit under contention: the per-second peak that several processes reach against one limit.

    python bench/rate_limits.py [--rate 50] [--processes 4] [--seconds 5] [--store redis|file] [--count 1]

Each process calls rate_wait in a loop and notes the time of every grant. Prints the peak number of grants in
any one-second window (it must not pass floor(rate)), the sustained rate as a share of the configured one
(the window's jitter allowance costs a few per cent at saturation), the closest any grant came to breaking
the limit (the shortest span holding limit + 1 grants, which must be over one second), and the cost of a
reservation. --store redis uses REDIS_URL (default redis://127.0.0.1:6379/15); file uses a SQLite file in
var/bench/.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
import uuid

from django.conf import settings  # noqa: E402
from django_env import ROOT  # noqa: E402  (sets Django up)

from delivery.limits import rate_reserve, rate_wait, rate_window  # noqa: E402


def _send_for(rate: float, count: int, start_at: float, seconds: float, queue) -> None:
    stamps: list[float] = []
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    while (left := end - time.time()) > 0:
        if rate_wait(key="bench", rate=rate, count=count, max_wait=left):
            stamps.extend([time.time()] * count)
    queue.put(stamps)


def _peak(stamps: list[float], span: float = 1.0) -> int:
    peak, first = 0, 0
    for last, stamp in enumerate(stamps):
        while stamps[first] <= stamp - span:
            first += 1
        peak = max(peak, last - first + 1)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--count", type=int, default=1, help="messages per reservation (a batch API call)")
    parser.add_argument("--store", choices=["redis", "file"], default="redis")
    args = parser.parse_args()

    settings.MAILER_LIMITS_KEY_PREFIX = f"bench-{uuid.uuid4().hex[:8]}:"
    if args.store == "redis":
        settings.REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
    else:
        settings.REDIS_URL = ""
        (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
        settings.MAILER_LIMITS_FILE = str(ROOT / "var" / "bench" / "limits.sqlite3")

    limit, window = rate_window(args.rate)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    start_at = time.time() + 0.5
    processes = [
        context.Process(target=_send_for, args=(args.rate, args.count, start_at, args.seconds, queue))
        for _ in range(args.processes)
    ]
    for process in processes:
        process.start()
    stamps = sorted(stamp for _ in processes for stamp in queue.get())
    for process in processes:
        process.join()

    closest = min((stamps[i + limit] - stamps[i] for i in range(len(stamps) - limit)), default=float("inf"))
    print(f"store {args.store}, {args.processes} processes, {args.seconds:g} s, rate {args.rate:g}/s (limit "
          f"{limit} per {window:g} s window), {args.count} per reservation")  # fmt: skip
    # Sustained: what came after the first window's worth (an idle limiter starts with a full window).
    sustained = (len(stamps) - limit) / (stamps[-1] - stamps[0]) if len(stamps) > limit else 0.0
    print(f"granted {len(stamps)}; sustained after the first window {sustained:.1f}/s, "
          f"{sustained / args.rate:.0%} of the rate")  # fmt: skip
    print(f"peak in any 1 s window: {_peak(stamps)} (must be <= {limit})")
    print(f"shortest span holding {limit + 1} grants: {closest:.4f} s (must be > 1 s)")

    settings.MAILER_LIMITS_KEY_PREFIX += "cost:"
    calls = 2000
    started = time.perf_counter()
    for _ in range(calls):
        rate_reserve(key="cost", rate=1e6)
    print(f"one reservation, uncontended: {(time.perf_counter() - started) / calls * 1e6:.0f} us")


if __name__ == "__main__":
    main()
