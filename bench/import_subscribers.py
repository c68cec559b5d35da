"""CSV import speed: Mailer's import against a bare COPY of the same file, in the same run (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mailer_bench_import \
        python bench/import_subscribers.py [--rows 1000000] [--statements]

Generates a CSV (email, name, 3 attributes) once under var/bench/, then measures, in this order:
1. baseline: COPY of the file into a fresh unindexed table (psycopg's copy, fed the file's bytes);
2. first import into an empty list (every row new);
3. re-import of a variant of the same file where half the rows changed (every row exists).
Prints rows/s for each, the import's share of the COPY rate, and this process's peak RSS. --statements also
prints each SQL statement of the two imports that took 0.1 s or more; what remains of an import's time is its
COPY of the file, Python, and the COMMIT (where PostgreSQL checks the deferred foreign keys of new subscriptions).
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from pathlib import Path
from typing import Any

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django_env import ROOT  # noqa: E402,F401  (sets Django up)

from subscribers.models import MailingList, Subscriber, Subscription  # noqa: E402
from subscribers.services.importing import subscribers_import  # noqa: E402

CITIES = ["Lisbon", "Oslo", "Nairobi", "Osaka", "Lima", "Tallinn", "Austin", "Perth"]


def generate(path: Path, rows: int, changed_half: bool) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    with path.open("w", encoding="utf-8") as out:
        out.write("email,name,city,plan,signup\n")
        for i in range(rows):
            plan = "pro" if (changed_half and i % 2 == 0) else ("free" if i % 3 else "team")
            out.write(
                f"user{i}@example{i % 97}.com,Person {i},{rng.choice(CITIES)},{plan},2026-0{1 + i % 9}-1{i % 10}\n"
            )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_copy(path: Path) -> float:
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_copy")
        cursor.execute("CREATE TABLE bench_copy (email text, name text, city text, plan text, signup text)")
        started = time.perf_counter()
        with (
            path.open("rb") as source,
            cursor.cursor.copy("COPY bench_copy FROM STDIN WITH (FORMAT csv, HEADER true)") as copy,
        ):
            while chunk := source.read(1 << 20):
                copy.write(chunk)
        elapsed = time.perf_counter() - started
        cursor.execute("DROP TABLE bench_copy")
    return elapsed


def timed_import(path: Path, mailing_list: MailingList, statements: bool) -> tuple[float, object]:
    timings: list[tuple[float, str]] = []

    def timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            timings.append((time.perf_counter() - started, " ".join(sql.split())))

    started = time.perf_counter()
    with connection.execute_wrapper(timed):
        summary = subscribers_import(path=path, mailing_list=mailing_list, errors_path=None)
    elapsed = time.perf_counter() - started
    if statements:
        print(f"  {path.name}: statements of 0.1 s or more")
        for seconds, sql in timings:
            if seconds >= 0.1:
                print(f"  {seconds:7.2f} s  {sql[:110]}")
        print(f"  {elapsed - sum(s for s, _ in timings):7.2f} s  the rest: COPY of the file, Python, COMMIT")
    return elapsed, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--statements", action="store_true", help="print the imports' slow statements")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("Set DATABASE_URL to a PostgreSQL database: the goals are for PostgreSQL.")
    call_command("migrate", verbosity=0)
    first = ROOT / "var" / "bench" / f"subscribers-{args.rows}.csv"
    second = ROOT / "var" / "bench" / f"subscribers-{args.rows}-half-changed.csv"
    generate(first, args.rows, changed_half=False)
    generate(second, args.rows, changed_half=True)

    # A clean slate, so the first import creates every row.
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Subscription._meta.db_table}, {Subscriber._meta.db_table} CASCADE")
    mailing_list, _ = MailingList.objects.get_or_create(slug="bench-import", defaults={"name": "Bench import"})
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE subscribers_subscriber")

    copy_seconds = bare_copy(first)
    import_seconds, summary = timed_import(first, mailing_list, args.statements)
    reimport_seconds, resummary = timed_import(second, mailing_list, args.statements)

    copy_rate, import_rate = args.rows / copy_seconds, args.rows / import_seconds
    print(f"rows: {args.rows:,}  file: {first.stat().st_size / 1e6:.0f} MB")
    print(f"bare COPY (baseline):        {copy_rate:12,.0f} rows/s  ({copy_seconds:.2f} s)")
    print(f"import, all new:             {import_rate:12,.0f} rows/s  ({import_seconds:.2f} s)  {summary}")
    print(f"import / COPY:               {import_rate / copy_rate:12.2f}")
    print(f"re-import, half changed:     {args.rows / reimport_seconds:12,.0f} rows/s  ({reimport_seconds:.2f} s)  "
          f"{resummary}")  # fmt: skip
    print(f"peak RSS of this process:    {peak_rss_mb():12.0f} MB")


if __name__ == "__main__":
    main()
