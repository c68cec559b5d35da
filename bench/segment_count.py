"""Segment count over many subscribers: a 3-condition segment (attribute, engagement, list) counted live.

    python bench/segment_count.py [--rows 1000000] [--repeat 5] [--explain]

The rows (created on first use, reused after; generated in SQL): subscribers `seg-<i>@example.org` with
three attributes (plan: free/basic/pro/team, age, city), 60 % of them with a last open spread over the last
120 days and an engagement score, 70 % subscribed to the list `bench-news`, 30 % to `bench-offers`.
Measured: the count of each rule below through `segment_subscribers(...).count()` (the query the Segment
admin and the campaign page run), best and median of --repeat runs, against a bare `SELECT count(*)` of
the whole subscriber table in the same run. Uses DATABASE_URL if set, else var/bench.sqlite3.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from django_env import ROOT  # noqa: E402,F401  (sets Django up)

from subscribers.engagement import DECAY_PER_DAY, EPOCH  # noqa: E402
from subscribers.models import MailingList, Subscriber, Subscription  # noqa: E402
from subscribers.segments import segment_subscribers  # noqa: E402

RULES = {
    "attribute + opened + list": {
        "all": [
            {"field": "attribute.plan", "op": "eq", "value": "pro"},
            {"field": "opened", "op": "within_days", "value": 30},
            {"field": "list", "op": "in", "value": ["bench-news"]},
        ]
    },
    "number + score + not in list": {
        "all": [
            {"field": "attribute.age", "op": "gte", "value": 40},
            {"field": "score", "op": "gte", "value": 20},
            {"field": "list", "op": "not_in", "value": ["bench-offers"]},
        ]
    },
}


def rows_ensure(count: int) -> None:
    have = Subscriber.objects.filter(email__startswith="seg-").count()
    if have >= count:
        return
    print(f"creating subscribers {have} .. {count - 1} ...", flush=True)
    started = time.perf_counter()
    news, _ = MailingList.objects.get_or_create(slug="bench-news", defaults={"name": "Bench news"})
    offers, _ = MailingList.objects.get_or_create(slug="bench-offers", defaults={"name": "Bench offers"})
    now = timezone.now()
    days_now = (now - EPOCH).total_seconds() / 86400
    table, subs = Subscriber._meta.db_table, Subscription._meta.db_table
    if connection.vendor == "postgresql":
        series = f"SELECT i FROM generate_series({have}, {count - 1}) AS g(i)"  # noqa: S608 - integers
        attributes = (
            "jsonb_build_object('plan', (ARRAY['free','basic','pro','team'])[i %% 4 + 1], "
            "'age', (18 + i %% 60)::text, 'city', (ARRAY['Oslo','Lyon','Tokyo','Austin','Lima'])[i %% 5 + 1])"
        )
        opened = "CASE WHEN i %% 10 < 6 THEN %s::timestamptz - make_interval(days => i %% 120) END"
        anchor = "CASE WHEN i %% 10 < 6 THEN ln(5 + i %% 90) + %s - %s * (i %% 120) END"
    else:
        first, last = int(have), int(count - 1)
        series = (
            f"WITH RECURSIVE g(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM g WHERE i < {last}) SELECT i FROM g"  # noqa: E501, S608
        )
        attributes = (
            "json_object('plan', CASE i %% 4 WHEN 0 THEN 'free' WHEN 1 THEN 'basic' WHEN 2 THEN 'pro' ELSE 'team' "
            "END, 'age', CAST(18 + i %% 60 AS TEXT), 'city', CASE i %% 5 WHEN 0 THEN 'Oslo' WHEN 1 THEN 'Lyon' "
            "WHEN 2 THEN 'Tokyo' WHEN 3 THEN 'Austin' ELSE 'Lima' END)"
        )
        opened = "CASE WHEN i %% 10 < 6 THEN datetime(%s, '-' || (i %% 120) || ' days') END"
        anchor = "CASE WHEN i %% 10 < 6 THEN ln(5 + i %% 90) + %s - %s * (i %% 120) END"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {table} (email, name, attributes, status, created_at, updated_at, last_open_at,
                                     score_anchor)
                SELECT 'seg-' || i || '@example.org', 'Person ' || i, {attributes}, 'active', %s, %s,
                       {opened}, {anchor}
                FROM ({series}) AS numbers""",  # noqa: S608 - bench data, no user input
            [now, now, now, DECAY_PER_DAY * days_now, DECAY_PER_DAY],
        )
        for mailing_list, condition in ((news, "i %% 10 < 7"), (offers, "i %% 10 >= 7")):
            cursor.execute(
                f"""INSERT INTO {subs} (subscriber_id, mailing_list_id, status, source, created_at, updated_at)
                    SELECT s.id, %s, 'active', 'bench', %s, %s FROM {table} s
                    JOIN ({series}) AS numbers ON s.email = 'seg-' || i || '@example.org'
                    WHERE {condition}""",  # noqa: S608
                [mailing_list.pk, now, now],
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"  created in {time.perf_counter() - started:.1f} s", flush=True)


def timed(run: Callable[[], int], repeat: int) -> tuple[int, list[float]]:
    times, result = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return result, times


def bare_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {Subscriber._meta.db_table}")  # noqa: S608
        return int(cursor.fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--explain", action="store_true", help="print the plan of each segment's count")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    rows_ensure(args.rows)

    total, base_times = timed(bare_count, args.repeat)
    base = min(base_times)
    print(f"database: {connection.vendor}; subscribers: {total:,}")
    print(f"bare count(*): best {base * 1000:.0f} ms, median {statistics.median(base_times) * 1000:.0f} ms")
    for label, rules in RULES.items():
        count, times = timed(lambda rules=rules: segment_subscribers(rules).count(), args.repeat)
        best = min(times)
        print(
            f"segment [{label}]: {count:,} subscribers; best {best * 1000:.0f} ms, "
            f"median {statistics.median(times) * 1000:.0f} ms; {best / base:.1f}x the bare count; "
            f"goal < 1000 ms: {'met' if best < 1 else 'NOT met'}"
        )
        if args.explain and connection.vendor == "postgresql":
            sql, params = segment_subscribers(rules).order_by().values("pk").query.sql_with_params()
            with connection.cursor() as cursor:
                cursor.execute(f"EXPLAIN ANALYZE SELECT count(*) FROM ({sql}) AS q", params)  # noqa: S608
                print("\n".join(row[0] for row in cursor.fetchall()))


if __name__ == "__main__":
    main()
