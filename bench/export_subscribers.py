"""Subscriber export throughput: Mailer's CSV export against a bare COPY ... TO STDOUT, same rows, same run.

    python bench/export_subscribers.py [--rows 1000000] [--output /dev/null] [--rows-path] [--profile]

The rows: a list `bench-export` with that many subscribers (three attributes each: a string, a number and a
boolean; one in ten subscriptions unsubscribed), created on first use and reused, topped up when --rows
grows (COPY on PostgreSQL, bulk_create on SQLite). Export: subscribers_export_csv for that list, what the
command and the admin run (key query, then COPY on PostgreSQL), written to --output; --rows-path also times
the portable path (subscribers_export_rows and csv_rows_write, SQLite's). Baseline (PostgreSQL only):
psycopg's COPY (SELECT email, name, status, created_at, attributes ... same list, same order) TO STDOUT
written to the same output: the floor for reading these rows through one connection, with no key query
and no cell formatting. Prints the rates, their ratio and the peak RSS of this process (the data
generation included when it ran). Uses DATABASE_URL if set, else var/bench.sqlite3 (migrated on first use).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import time

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from django_env import ROOT  # noqa: E402,F401  (sets Django up)

from subscribers.models import MailingList, Subscriber, Subscription  # noqa: E402
from subscribers.services import csv_rows_write, subscribers_export_csv, subscribers_export_rows  # noqa: E402

SLUG = "bench-export"
CITIES = ["Oslo", "Zürich", "São Paulo", "Kraków", "Lyon", "Tokyo", "Austin", "Cape Town"]
BATCH = 5000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _subscriber_values(i: int) -> tuple[str, str, dict]:
    name = f"Person {i}" if i % 7 else f"Zoë Ødegård {i}"
    return (
        f"bench-export-{i}@example.org",
        name,
        {"city": CITIES[i % len(CITIES)], "age": 18 + i % 60, "vip": i % 5 == 0},
    )


def rows_ensure(count: int) -> MailingList:
    """The bench list with at least `count` subscribers; reruns reuse them."""
    mailing_list, _ = MailingList.objects.get_or_create(slug=SLUG, defaults={"name": "Bench export"})
    have = Subscription.objects.filter(mailing_list=mailing_list).count()
    if have >= count:
        return mailing_list
    print(f"creating subscribers {have} .. {count - 1} on list {SLUG} ...", flush=True)
    started = time.perf_counter()
    if connection.vendor == "postgresql":
        _create_postgresql(mailing_list, have, count)
    else:
        _create_orm(mailing_list, have, count)
    print(f"created {count - have} in {time.perf_counter() - started:.1f} s", flush=True)
    return mailing_list


def _create_postgresql(mailing_list: MailingList, start: int, stop: int) -> None:
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        with cursor.cursor.copy(
            "COPY subscribers_subscriber (email, name, attributes, status, created_at, updated_at) FROM STDIN"
        ) as copy:
            for i in range(start, stop):
                email, name, attributes = _subscriber_values(i)
                copy.write_row((email, name, json.dumps(attributes), "active", now, now))
        cursor.execute(
            "INSERT INTO subscribers_subscription"
            " (subscriber_id, mailing_list_id, status, source, created_at, updated_at)"
            " SELECT id, %s, CASE WHEN id %% 10 = 0 THEN 'unsubscribed' ELSE 'active' END, 'bench', %s, %s"
            " FROM subscribers_subscriber WHERE email LIKE 'bench-export-%%'"
            " ON CONFLICT ON CONSTRAINT subscription_unique_per_list DO NOTHING",
            [mailing_list.pk, now, now],
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE subscribers_subscriber; ANALYZE subscribers_subscription")


def _create_orm(mailing_list: MailingList, start: int, stop: int) -> None:
    active, unsubscribed = Subscription.Status.ACTIVE, Subscription.Status.UNSUBSCRIBED
    for batch_start in range(start, stop, BATCH):
        with transaction.atomic():
            subscribers = Subscriber.objects.bulk_create(
                [
                    Subscriber(email=email, name=name, attributes=attributes)
                    for email, name, attributes in map(
                        _subscriber_values, range(batch_start, min(stop, batch_start + BATCH))
                    )
                ]
            )
            Subscription.objects.bulk_create(
                [
                    Subscription(subscriber=s, mailing_list=mailing_list, source="bench",
                                 status=unsubscribed if s.pk % 10 == 0 else active)
                    for s in subscribers
                ]
            )  # fmt: skip


def export(mailing_list: MailingList, output: str) -> tuple[float, float]:
    """What the command and the admin run: subscribers_export_csv (COPY on PostgreSQL). Wall and CPU seconds
    of this process: their difference is time spent waiting for the database."""
    started, cpu_started = time.perf_counter(), time.process_time()
    with open(output, "w", newline="", encoding="utf-8") as stream:
        for block in subscribers_export_csv(mailing_list=mailing_list):
            stream.write(block)
    return time.perf_counter() - started, time.process_time() - cpu_started


def export_rows(mailing_list: MailingList, output: str, chunk_size: int) -> float:
    """The portable path (SQLite's): subscribers_export_rows through the csv module."""
    started = time.perf_counter()
    with open(output, "w", newline="", encoding="utf-8") as stream:
        csv_rows_write(subscribers_export_rows(mailing_list=mailing_list, chunk_size=chunk_size), stream)
    return time.perf_counter() - started


def baseline(mailing_list: MailingList, output: str) -> float:
    sql = (
        "COPY (SELECT s.email, s.name, s.status, s.created_at, s.attributes FROM subscribers_subscriber s"
        " JOIN subscribers_subscription l ON l.subscriber_id = s.id WHERE l.mailing_list_id = %s"
        " ORDER BY s.id) TO STDOUT"
    )
    started = time.perf_counter()
    with connection.cursor() as cursor, open(output, "wb") as stream:
        with cursor.cursor.copy(sql, [mailing_list.pk]) as copy:
            for block in copy:
                stream.write(block)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--output", default=os.devnull, help="where the CSV goes (default: /dev/null)")
    parser.add_argument("--chunk-size", type=int, default=2000, help="rows per fetch on the portable path")
    parser.add_argument("--rows-path", action="store_true", help="on PostgreSQL, also time the portable path")
    parser.add_argument("--profile", action="store_true", help="cProfile the export, print the top 25")
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    mailing_list = rows_ensure(args.rows)
    rows = Subscription.objects.filter(mailing_list=mailing_list).count()
    rss_setup = peak_rss_mb()

    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    export_s, export_cpu_s = export(mailing_list, args.output)
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    rss_export = peak_rss_mb()
    postgresql = connection.vendor == "postgresql"
    rows_s = export_rows(mailing_list, args.output, args.chunk_size) if postgresql and args.rows_path else None
    base_s = baseline(mailing_list, args.output) if postgresql else None

    print(f"database: {connection.vendor}, rows: {rows}, output: {args.output}")
    print(f"Mailer export:            {rows / export_s:10.0f} rows/s  ({export_s:.2f} s; {export_cpu_s:.2f} s CPU)")
    if rows_s is not None:
        print(f"  portable path (rows):   {rows / rows_s:10.0f} rows/s  ({rows_s:.2f} s)")
    if base_s is not None:
        print(f"bare COPY TO (baseline):  {rows / base_s:10.0f} rows/s  ({base_s:.2f} s)")
        print(f"ratio export/baseline:    {base_s / export_s:10.2f}")
    print(f"peak RSS after setup:     {rss_setup:10.1f} MB")
    print(f"peak RSS after export:    {rss_export:10.1f} MB")
    print(f"peak RSS at the end:      {peak_rss_mb():10.1f} MB")


if __name__ == "__main__":
    main()
