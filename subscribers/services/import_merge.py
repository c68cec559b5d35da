"""The set-wise merge of an import's staging table into subscribers and subscriptions, and the options and
summary every import door shares. Called by importing.subscribers_import inside its transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, connection
from django.utils import timezone

from delivery.models import Suppression
from subscribers.models import MailingList, Subscriber, Subscription
from subscribers.services.import_rows import STAGE_TABLE


@dataclass(frozen=True)
class ImportOptions:
    update_existing: bool = True  # False: --skip-existing
    dry_run: bool = False
    resubscribe: bool = False
    encoding: str = "utf-8"  # or "latin-1"
    column_map: dict[str, str] = field(default_factory=dict)  # file column -> email | name | attribute name
    check_deliverability: bool = False


@dataclass
class ImportSummary:
    rows: int = 0  # data rows read (blank lines aside)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: int = 0
    duplicate: int = 0
    suppressed: int = 0  # addresses on the suppression list (imported, not subscribed) or erased (not imported)
    subscribed: int = 0
    resubscribed: int = 0
    errors_path: str = ""
    dry_run: bool = False
    method: str = ""  # "copy" (PostgreSQL fast path) or "rows" (row by row)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


ProgressCallback = Callable[[int, int], None]


# Rows per batch where rows travel through Python.
SQLITE_BATCH = 5000

# Temporary tables of one import (its own session).
_STAGE = STAGE_TABLE
_DUPLICATES = "mailer_import_duplicates"
_MATCHED = "mailer_import_matched"  # PostgreSQL: staged lines that are existing subscribers
_TEMP_TABLES = (_STAGE, _DUPLICATES)


# --- merging -------------------------------------------------------------------------------------------------


def _vendor_sql() -> dict[str, str]:
    if connection.vendor == "postgresql":
        return {
            "contained": "s.attributes @> u.attributes",
            "merged": "s.attributes || u.attributes",
        }
    return {
        # Every key of the imported attributes is already there with the same value.
        "contained": (
            "NOT EXISTS (SELECT 1 FROM json_each(u.attributes) j WHERE NOT EXISTS ("
            "SELECT 1 FROM json_each(s.attributes) k WHERE k.key = j.key AND k.type = j.type AND k.value = j.value))"
        ),
        "merged": "json_patch(s.attributes, u.attributes)",
    }


def _duplicates_fold(cursor: Any) -> int:
    """Addresses on several rows become one row: the last one, with the last non-empty name and the
    attributes of every row merged in file order (later rows win a key). Returns the rows removed.

    Most files have no duplicates: that costs one aggregate over the staging table. The rest is set-wise
    except the merge of each duplicated address's rows, which Python does in file order, streamed."""
    postgresql = connection.vendor == "postgresql"
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {_STAGE} GROUP BY email HAVING count(*) > 1)")  # noqa: S608
    if not cursor.fetchone()[0]:
        return 0
    temporary = "TEMPORARY" if postgresql else "TEMP"
    on_commit = " ON COMMIT DROP" if postgresql else ""
    cursor.execute(
        f"CREATE {temporary} TABLE {_DUPLICATES}{on_commit} AS "  # noqa: S608
        f"SELECT email, max(line) AS line FROM {_STAGE} GROUP BY email HAVING count(*) > 1"
    )
    if not postgresql:
        cursor.execute(f"CREATE INDEX {_STAGE}_line ON {_STAGE} (line)")
        cursor.execute(f"CREATE INDEX {_STAGE}_email ON {_STAGE} (email)")
    merged: list[tuple[int, str, str]] = []

    def flush() -> None:
        if not merged:
            return
        if postgresql:
            lines, names, attributes = (list(column) for column in zip(*merged, strict=True))
            cursor.execute(
                f"""UPDATE {_STAGE} s SET name = m.name, attributes = m.attributes::jsonb
                FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS m(line, name, attributes)
                WHERE s.line = m.line""",  # noqa: S608
                [lines, names, attributes],
            )
        else:
            cursor.executemany(
                f"UPDATE {_STAGE} SET name = %s, attributes = %s WHERE line = %s",  # noqa: S608
                [(name, attributes, line) for line, name, attributes in merged],
            )
        merged.clear()

    with connection.chunked_cursor() as rows:
        rows.execute(
            f"""SELECT s.email, s.name, s.attributes, d.line FROM {_STAGE} s JOIN {_DUPLICATES} d ON d.email = s.email
            ORDER BY s.email, s.line"""  # noqa: S608
        )
        current: str | None = None
        kept, name, attributes = 0, "", dict[str, Any]()
        while batch := rows.fetchmany(SQLITE_BATCH):
            for email, row_name, row_attributes, last_line in batch:
                if email != current:
                    if current is not None:
                        merged.append((kept, name, json.dumps(attributes, ensure_ascii=False)))
                    current, kept, name, attributes = email, last_line, "", dict[str, Any]()
                name = row_name or name
                attributes.update(row_attributes if isinstance(row_attributes, dict) else json.loads(row_attributes))
            if postgresql and len(merged) >= SQLITE_BATCH:
                flush()  # the server-side cursor reads a snapshot; SQLite's would see its own updates
        if current is not None:
            merged.append((kept, name, json.dumps(attributes, ensure_ascii=False)))
    flush()
    cursor.execute(
        f"""DELETE FROM {_STAGE} WHERE email IN (SELECT email FROM {_DUPLICATES})
        AND line NOT IN (SELECT line FROM {_DUPLICATES})"""  # noqa: S608
    )
    return max(cursor.rowcount, 0)


def _suppressed_count(cursor: Any) -> int:
    """Staged addresses on the suppression list: imported, never subscribed."""
    suppression = Suppression._meta.db_table
    cursor.execute(
        f"""SELECT count(*) FROM {_STAGE} u WHERE EXISTS (SELECT 1 FROM {suppression} x WHERE x.email = u.email)"""  # noqa: S608
    )
    return int(cursor.fetchone()[0])


def _merge(cursor: Any, staged: int, mailing_list: MailingList, options: ImportOptions, summary: ImportSummary) -> None:
    summary.duplicate = _duplicates_fold(cursor)
    unique = staged - summary.duplicate
    summary.suppressed += _suppressed_count(cursor)
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    if connection.vendor == "postgresql":
        _merge_postgresql(cursor, unique, mailing_list, options, summary, now)
    else:
        _merge_rows(cursor, mailing_list, options, summary, now)
    summary.unchanged = unique - summary.created - summary.updated


def _changed_update(cursor: Any, now: Any, *, matched: bool = False) -> int:
    """Existing subscribers whose name or attributes the file changes; returns how many. With `matched`
    (PostgreSQL), the rows are the ones the match flagged as changed, joined by id."""
    sql = _vendor_sql()
    if matched:
        source = f"{_MATCHED} m JOIN {_STAGE} u ON u.line = m.line WHERE s.id = m.id AND m.changed"
    else:
        source = f"{_STAGE} u WHERE s.email = u.email AND {_changed_sql()}"
    cursor.execute(
        f"""UPDATE {Subscriber._meta.db_table} AS s
        SET name = CASE WHEN u.name <> '' THEN u.name ELSE s.name END,
            attributes = {sql["merged"]}, updated_at = %s
        FROM {source}""",  # noqa: S608
        [now],
    )
    return max(cursor.rowcount, 0)


def _changed_sql() -> str:
    """A staged row `u` changes its subscriber `s`: a new non-empty name, or an attribute not there yet."""
    return f"((u.name <> '' AND u.name <> s.name) OR NOT ({_vendor_sql()['contained']}))"


def _resubscribe(cursor: Any, mailing_list: MailingList, now: Any) -> int:
    """Only what the importer asked for explicitly: consent given up is otherwise never taken back."""
    subscriber, subscription = Subscriber._meta.db_table, Subscription._meta.db_table
    not_suppressed = _not_suppressed("u.email")
    cursor.execute(
        f"""UPDATE {subscriber} SET status = %s, updated_at = %s
        WHERE status = %s AND email IN (SELECT u.email FROM {_STAGE} u WHERE {not_suppressed})""",  # noqa: S608
        [Subscriber.Status.ACTIVE, now, Subscriber.Status.UNSUBSCRIBED],
    )
    cursor.execute(
        f"""UPDATE {subscription} SET status = %s, unsubscribed_at = NULL, source = %s, updated_at = %s
        WHERE mailing_list_id = %s AND status = %s AND subscriber_id IN (
            SELECT s.id FROM {subscriber} s JOIN {_STAGE} u ON u.email = s.email WHERE {not_suppressed})""",  # noqa: S608
        [Subscription.Status.ACTIVE, "import", now, mailing_list.pk, Subscription.Status.UNSUBSCRIBED],
    )
    return max(cursor.rowcount, 0)


def _not_suppressed(email: str) -> str:
    return f"NOT EXISTS (SELECT 1 FROM {Suppression._meta.db_table} x WHERE x.email = {email})"  # noqa: S608


def _subscriptions_insert(cursor: Any, mailing_list: MailingList, now: Any) -> int:
    """Subscribe every active, unsuppressed staged address not on the list yet. Those already on it are left
    out by an anti-join (one hash join on a re-import) rather than by a conflict probe each; ON CONFLICT
    stays for a subscription created meanwhile."""
    subscriber, subscription = Subscriber._meta.db_table, Subscription._meta.db_table
    cursor.execute(
        f"""INSERT INTO {subscription} (subscriber_id, mailing_list_id, status, source, created_at, updated_at)
        SELECT s.id, %s, %s, %s, %s, %s FROM {_STAGE} u JOIN {subscriber} s ON s.email = u.email
        WHERE s.status = %s AND {_not_suppressed("u.email")}
        AND NOT EXISTS (SELECT 1 FROM {subscription} l WHERE l.subscriber_id = s.id AND l.mailing_list_id = %s)
        ON CONFLICT (subscriber_id, mailing_list_id) DO NOTHING""",  # noqa: S608
        [mailing_list.pk, Subscription.Status.ACTIVE, "import", now, now, Subscriber.Status.ACTIVE, mailing_list.pk],
    )
    return max(cursor.rowcount, 0)


def _merge_rows(
    cursor: Any, mailing_list: MailingList, options: ImportOptions, summary: ImportSummary, now: Any
) -> None:
    """The portable merge (SQLite, and PostgreSQL's fallback when another transaction creates one of the
    staged addresses meanwhile): update, insert what is missing, subscribe."""
    if options.update_existing:
        summary.updated = _changed_update(cursor, now)
    # Existing addresses are skipped by the unique index, one probe each. (A NOT EXISTS anti-join here looks
    # tidier, but planned against an empty table it becomes a nested loop that re-reads every row this very
    # statement inserts: quadratic.)
    cursor.execute(
        f"""INSERT INTO {Subscriber._meta.db_table} (email, name, attributes, status, created_at, updated_at)
        SELECT u.email, u.name, u.attributes, %s, %s, %s FROM {_STAGE} u WHERE true
        ON CONFLICT (email) DO NOTHING""",  # noqa: S608
        [Subscriber.Status.ACTIVE, now, now],
    )
    summary.created = max(cursor.rowcount, 0)
    if connection.vendor == "postgresql" and summary.created > 10_000:
        # The planner's statistics still describe the table before these rows: without this, the joins
        # below can pick a nested loop over what it believes is a small table.
        cursor.execute(f"ANALYZE {Subscriber._meta.db_table}")
    if options.resubscribe:
        summary.resubscribed = _resubscribe(cursor, mailing_list, now)
    summary.subscribed = _subscriptions_insert(cursor, mailing_list, now)


def _merge_postgresql(
    cursor: Any, unique: int, mailing_list: MailingList, options: ImportOptions, summary: ImportSummary, now: Any
) -> None:
    """The staged addresses are matched to subscribers once (a temporary table of line and id). The new ones
    are inserted with a plain INSERT (no ON CONFLICT probe), in address order so that the unique email index
    is filled at its right edge, and their subscriptions come from the ids that same statement returns; the
    existing ones are updated and subscribed from the match. Should another transaction create one of the
    staged addresses meanwhile, the plain INSERT fails on the unique index and the portable merge runs instead.
    """
    subscriber, subscription = Subscriber._meta.db_table, Subscription._meta.db_table
    cursor.execute(f"DROP TABLE IF EXISTS {_MATCHED}")
    cursor.execute(
        f"""CREATE TEMPORARY TABLE {_MATCHED} ON COMMIT DROP AS
        SELECT u.line, s.id, s.status, {_changed_sql()} AS changed
        FROM {_STAGE} u JOIN {subscriber} s ON s.email = u.email"""  # noqa: S608
    )
    existing = max(cursor.rowcount, 0)
    cursor.execute("SAVEPOINT mailer_import_merge")
    try:
        if options.update_existing and existing:
            summary.updated = _changed_update(cursor, now, matched=True)
        if options.resubscribe and existing:
            summary.resubscribed = _resubscribe(cursor, mailing_list, now)
        if existing < unique:
            new_rows = f"""SELECT email, name, attributes, %s, %s, %s FROM {_STAGE} u
                {f"WHERE NOT EXISTS (SELECT 1 FROM {_MATCHED} m WHERE m.line = u.line)" if existing else ""}
                ORDER BY email COLLATE "C" """  # noqa: S608
            cursor.execute(
                f"""WITH created AS (
                    INSERT INTO {subscriber} (email, name, attributes, status, created_at, updated_at) {new_rows}
                    RETURNING id, email)
                INSERT INTO {subscription} (subscriber_id, mailing_list_id, status, source, created_at, updated_at)
                SELECT c.id, %s, %s, %s, %s, %s FROM created c WHERE {_not_suppressed("c.email")}""",  # noqa: S608
                [Subscriber.Status.ACTIVE, now, now, mailing_list.pk, Subscription.Status.ACTIVE, "import", now, now],
            )
            summary.created, summary.subscribed = unique - existing, max(cursor.rowcount, 0)
    except IntegrityError:
        cursor.execute("ROLLBACK TO SAVEPOINT mailer_import_merge")
        summary.updated = summary.resubscribed = summary.created = summary.subscribed = 0
        _merge_rows(cursor, mailing_list, options, summary, now)
        return
    cursor.execute("RELEASE SAVEPOINT mailer_import_merge")
    if existing:
        status = "m.status"
        if options.resubscribe:  # the match predates the resubscription
            status = f"(SELECT s.status FROM {subscriber} s WHERE s.id = m.id)"  # noqa: S608
        cursor.execute(
            f"""INSERT INTO {subscription} (subscriber_id, mailing_list_id, status, source, created_at, updated_at)
            SELECT m.id, %s, %s, %s, %s, %s FROM {_MATCHED} m JOIN {_STAGE} u ON u.line = m.line
            WHERE {status} = %s AND {_not_suppressed("u.email")}
            AND NOT EXISTS (SELECT 1 FROM {subscription} l WHERE l.subscriber_id = m.id AND l.mailing_list_id = %s)
            ON CONFLICT (subscriber_id, mailing_list_id) DO NOTHING""",  # noqa: S608
            [mailing_list.pk, Subscription.Status.ACTIVE, "import", now, now, Subscriber.Status.ACTIVE,
             mailing_list.pk],
        )  # fmt: skip
        summary.subscribed += max(cursor.rowcount, 0)
