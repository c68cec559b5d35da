"""Mailing numbers: counters kept current as ESP events are applied, so that a page reads a few rows and never
scans events.

Whoever applies events gathers a batch's increments in a MailingStatsDelta and writes them with mailing_stats_add in
the same transaction as the apply: one upsert per table that adds to what is there (n = n + increment), so two
workers applying at once never lose each other's counts, and an event applied once is counted once.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from delivery.models import MailingCounters, MailingHourlyStats, MailingLinkClicks, MailingStats, MailingUnsubscribe

COUNTERS = MailingCounters.COUNTERS
URL_MAX_CHARS = 2000


def hour_start(at: datetime) -> datetime:
    """The hour an event is counted in: its UTC hour."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@lru_cache(maxsize=4)
def _per_recipient_links(base_url: str) -> tuple[tuple[str, str], ...]:
    """(prefix, the one name it is counted under) for the links Mailer puts in every message with a token of each
    recipient's own: counted per link, they would make a row per recipient."""
    links = []
    for url_name in ("unsubscribe", "preferences"):
        try:
            url = base_url + reverse(url_name, args=["TOKEN"])
        except NoReverseMatch:
            continue
        links.append((url.split("TOKEN")[0], url.replace("TOKEN", "…")))
    return tuple(links)


def link_key(url: str) -> str:
    """How a clicked link is counted: as the ESP reports it (query included), less its #fragment, cut to
    URL_MAX_CHARS; Mailer's own per-recipient links fold into one each."""
    url = url.split("#", 1)[0]
    for prefix, name in _per_recipient_links(settings.MAILER_BASE_URL):
        if url.startswith(prefix):
            return name
    return url[:URL_MAX_CHARS]


class MailingStatsDelta:
    """Increments gathered while a batch of events is applied, written at once by mailing_stats_add."""

    def __init__(self) -> None:
        self.totals: dict[int, Counter[str]] = defaultdict(Counter)
        self.hourly: dict[tuple[int, datetime], Counter[str]] = defaultdict(Counter)
        self.links: Counter[tuple[int, str]] = Counter()

    def add(self, *, mailing_id: int, counter: str, at: datetime, n: int = 1) -> None:
        if counter not in COUNTERS:
            raise ValueError(f"unknown mailing counter {counter!r}")
        self.totals[mailing_id][counter] += n
        self.hourly[(mailing_id, hour_start(at))][counter] += n

    def link_click(self, *, mailing_id: int, url: str) -> None:
        self.links[(mailing_id, link_key(url))] += 1

    def __bool__(self) -> bool:
        return bool(self.totals or self.links)


def _chunks(rows: list[list[Any]], width: int) -> list[list[list[Any]]]:
    """Rows in chunks that keep each statement within the database's limit of parameters."""
    per_chunk = max(1, (connection.features.max_query_params or 30_000) // width)
    return [rows[first : first + per_chunk] for first in range(0, len(rows), per_chunk)]


def _upsert(
    table: str,
    keys: Sequence[str],
    columns: Sequence[str],
    rows: list[list[Any]],
    *,
    add: Sequence[str],
    replace: Sequence[str] = (),
) -> None:
    """INSERT the rows; where a row with the same keys exists, add the `add` columns to it and overwrite the
    `replace` ones. Rows come sorted by key, so concurrent writers take the rows' locks in the same order."""
    quote = connection.ops.quote_name
    names = [*keys, *columns]
    row = "(" + ", ".join(["%s"] * len(names)) + ")"
    updates = [f"{quote(c)} = {quote(table)}.{quote(c)} + excluded.{quote(c)}" for c in add]
    updates += [f"{quote(c)} = excluded.{quote(c)}" for c in replace]
    with connection.cursor() as cursor:
        for chunk in _chunks(rows, len(names)):
            # Names are the models' own; values are parameters.
            cursor.execute(
                f"INSERT INTO {quote(table)} ({', '.join(quote(n) for n in names)}) "  # noqa: S608
                f"VALUES {', '.join([row] * len(chunk))} "
                f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {', '.join(updates)}",
                [value for values in chunk for value in values],
            )


@transaction.atomic
def mailing_stats_add(*, delta: MailingStatsDelta) -> None:
    """Add a batch's increments to the mailings' totals, hourly series and link clicks: three statements."""
    if not delta:
        return
    adapt = connection.ops.adapt_datetimefield_value
    now = adapt(timezone.now())
    _upsert(
        MailingStats._meta.db_table,
        ["mailing_id"],
        [*COUNTERS, "updated_at"],
        [[mailing_id, *(counts[c] for c in COUNTERS), now] for mailing_id, counts in sorted(delta.totals.items())],
        add=COUNTERS,
        replace=["updated_at"],
    )
    _upsert(
        MailingHourlyStats._meta.db_table,
        ["mailing_id", "hour"],
        list(COUNTERS),
        [
            [mailing_id, adapt(hour), *(counts[c] for c in COUNTERS)]
            for (mailing_id, hour), counts in sorted(delta.hourly.items())
        ],
        add=COUNTERS,
    )
    links = sorted(
        (mailing_id, hashlib.sha256(url.encode()).hexdigest(), url, clicks)
        for (mailing_id, url), clicks in delta.links.items()
    )
    _upsert(
        MailingLinkClicks._meta.db_table,
        ["mailing_id", "url_hash"],
        ["url", "clicks"],
        [[mailing_id, url_hash, url, clicks] for mailing_id, url_hash, url, clicks in links],
        add=["clicks"],
    )


@dataclass(frozen=True)
class Unsubscribe:
    message_id: int
    mailing_id: int
    occurred_at: datetime
    source: str


@transaction.atomic
def message_unsubscribes_record(
    *, unsubscribes: Sequence[Unsubscribe], delta: MailingStatsDelta | None = None
) -> set[int]:
    """Note that these messages' recipients unsubscribed through them; returns the ids of the messages not noted
    before, whose mailings' `unsubscribed` counters go up by one each (in `delta` when given, else at once).

    The first report of a message stays; a repeat (the ESP's and our link's, or a webhook posted twice) counts
    nothing more.
    """
    first: dict[int, Unsubscribe] = {}
    for unsubscribe in sorted(unsubscribes, key=lambda u: u.occurred_at):
        first.setdefault(unsubscribe.message_id, unsubscribe)
    if not first:
        return set()
    adapt = connection.ops.adapt_datetimefield_value
    quote = connection.ops.quote_name
    rows: list[list[Any]] = [
        [u.message_id, u.mailing_id, adapt(u.occurred_at), u.source[:100]] for _, u in sorted(first.items())
    ]
    table = quote(MailingUnsubscribe._meta.db_table)
    recorded: set[int] = set()
    with connection.cursor() as cursor:
        for chunk in _chunks(rows, 4):
            cursor.execute(
                f"INSERT INTO {table} (message_id, mailing_id, occurred_at, source) "  # noqa: S608 - names are ours
                f"VALUES {', '.join(['(%s, %s, %s, %s)'] * len(chunk))} "
                "ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
                [value for values in chunk for value in values],
            )
            recorded |= {int(row[0]) for row in cursor.fetchall()}
    own = delta is None
    delta = MailingStatsDelta() if delta is None else delta
    for message_id in recorded:
        unsubscribe = first[message_id]
        delta.add(mailing_id=unsubscribe.mailing_id, counter="unsubscribed", at=unsubscribe.occurred_at)
    if own:
        mailing_stats_add(delta=delta)
    return recorded
