"""CSV import of subscribers into a list: one service behind the command, the admin upload and the API.

The file is read as a stream (constant memory whatever its size): every row is checked in Python (a strict
pattern for the common address, email-validator for the rest), the valid ones are streamed into a temporary
staging table (COPY on PostgreSQL, batched inserts on SQLite), and one transaction merges the staging
table into the subscriber and subscription tables set-wise. An import killed midway leaves nothing half
done; running it again completes it, and running it twice changes nothing the second time.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.db import connection, transaction
from django.utils import timezone

from delivery.models import Suppression
from subscribers.models import MailingList, Subscriber, Subscription
from subscribers.services.import_copy import stage_by_copy
from subscribers.services.import_rows import (
    STAGE_TABLE,
    Columns,
    ImportFileInvalid,
    Row,
    columns_read,
    rows_checked,
)

__all__ = ["ImportFileInvalid", "ImportOptions", "ImportSummary", "subscribers_import"]

# The csv module's own limit; above it, a row is more likely an unclosed quote than data.
CSV_FIELD_LIMIT = 10 * 1024 * 1024
SNIFF_BYTES = 64 * 1024
SQLITE_BATCH = 5000
PROGRESS_EVERY = 50_000


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
    suppressed: int = 0
    subscribed: int = 0
    resubscribed: int = 0
    errors_path: str = ""
    dry_run: bool = False
    method: str = ""  # "copy" (PostgreSQL fast path) or "rows" (row by row)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


ProgressCallback = Callable[[int, int], None]


# --- reading -------------------------------------------------------------------------------------------------


def _text_stream(raw: IO[bytes], encoding: str) -> tuple[io.TextIOWrapper, str]:
    """Check the start of the file and wrap it for the csv module; returns the stream and the delimiter."""
    head = raw.read(SNIFF_BYTES)
    if not head.strip(b" \t\r\n\xef\xbb\xbf"):
        raise ImportFileInvalid("The file is empty.")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise ImportFileInvalid(
            f"This does not look like a CSV file: it has a NUL byte at offset {nul}, as binary files do "
            "(a spreadsheet saved as .xlsx, or a UTF-16 export?). Save it as CSV (UTF-8) and try again."
        )
    codec = {"utf-8": "utf-8-sig", "utf8": "utf-8-sig", "latin-1": "latin-1", "latin1": "latin-1"}.get(encoding.lower())
    if codec is None:
        raise ImportFileInvalid(f"Unknown encoding {encoding!r}: use utf-8 or latin-1.")
    sample = head.decode(codec, errors="replace")
    try:
        delimiter = csv.Sniffer().sniff(sample.split("\n", 20)[0] if "\n" in sample else sample, ",;\t").delimiter
    except csv.Error:
        delimiter = ","
    raw.seek(0)
    return io.TextIOWrapper(raw, encoding=codec, errors="strict", newline=""), delimiter


# --- staging -------------------------------------------------------------------------------------------------

_STAGE = STAGE_TABLE
_UNIQUE = "mailer_import_unique"


def _stage_create(cursor: Any) -> None:
    json_type = "jsonb" if connection.vendor == "postgresql" else "text"
    temp = "TEMPORARY" if connection.vendor == "postgresql" else "TEMP"
    on_commit = "ON COMMIT DROP" if connection.vendor == "postgresql" else ""
    for table in (_STAGE, _UNIQUE):
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
    cursor.execute(
        f"CREATE {temp} TABLE {_STAGE} (line bigint, email text, name text, attributes {json_type}) {on_commit}"
    )


def _stage_fill(cursor: Any, rows: Iterator[Row]) -> int:
    count = 0
    if connection.vendor == "postgresql":
        with cursor.cursor.copy(f"COPY {_STAGE} (line, email, name, attributes) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((row.line, row.email, row.name, row.attributes))
                count += 1
        return count
    batch: list[tuple[int, str, str, str]] = []
    sql = f"INSERT INTO {_STAGE} (line, email, name, attributes) VALUES (%s, %s, %s, %s)"  # noqa: S608
    for row in rows:
        batch.append((row.line, row.email, row.name, row.attributes))
        if len(batch) >= SQLITE_BATCH:
            cursor.executemany(sql, batch)
            count += len(batch)
            batch.clear()
    if batch:
        cursor.executemany(sql, batch)
        count += len(batch)
    return count


# --- merging -------------------------------------------------------------------------------------------------


def _vendor_sql() -> dict[str, str]:
    if connection.vendor == "postgresql":
        return {
            "temp": f"CREATE TEMPORARY TABLE {_UNIQUE} ON COMMIT DROP AS",
            "contained": "s.attributes @> u.attributes",
            "merged": "s.attributes || u.attributes",
            "json_param": "%s::jsonb",
        }
    return {
        "temp": f"CREATE TEMP TABLE {_UNIQUE} AS",
        # Every key of the imported attributes is already there with the same value.
        "contained": (
            "NOT EXISTS (SELECT 1 FROM json_each(u.attributes) j WHERE NOT EXISTS ("
            "SELECT 1 FROM json_each(s.attributes) k WHERE k.key = j.key AND k.type = j.type AND k.value = j.value))"
        ),
        "merged": "json_patch(s.attributes, u.attributes)",
        "json_param": "%s",
    }


def _unique_build(cursor: Any, sql: dict[str, str]) -> int:
    """One row per address: the last row in the file, with the attributes of all its rows merged in order."""
    if connection.vendor != "postgresql":
        cursor.execute(f"CREATE INDEX {_STAGE}_line ON {_STAGE} (line)")
        cursor.execute(f"CREATE INDEX {_STAGE}_email ON {_STAGE} (email)")
    cursor.execute(
        f"""{sql["temp"]}
        SELECT r.email, r.name, r.attributes, r.line FROM {_STAGE} r
        JOIN (SELECT email, max(line) AS line FROM {_STAGE} GROUP BY email) m ON m.line = r.line"""  # noqa: S608
    )
    cursor.execute(f"CREATE UNIQUE INDEX {_UNIQUE}_email ON {_UNIQUE} (email)")
    cursor.execute(f"ANALYZE {_UNIQUE}")
    cursor.execute(f"SELECT count(*) FROM {_UNIQUE}")  # noqa: S608
    return int(cursor.fetchone()[0])


def _duplicates_merge(cursor: Any, sql: dict[str, str]) -> None:
    """Addresses that appear on several rows become one subscriber: the last non-empty name, and the
    attributes of every row, later rows winning a key. Duplicates are few, so this runs row by row."""
    cursor.execute(
        f"""SELECT email, name, attributes FROM {_STAGE}
        WHERE email IN (SELECT email FROM {_STAGE} GROUP BY email HAVING count(*) > 1)
        ORDER BY email, line"""  # noqa: S608
    )
    merged: list[tuple[str, str, str]] = []
    current: str | None = None
    name, attributes = "", dict[str, Any]()
    for email, row_name, row_attributes in cursor.fetchall():
        if email != current:
            if current is not None:
                merged.append((name, json.dumps(attributes, ensure_ascii=False), current))
            current, name, attributes = email, "", dict[str, Any]()
        name = row_name or name
        attributes.update(row_attributes if isinstance(row_attributes, dict) else json.loads(row_attributes))
    if current is not None:
        merged.append((name, json.dumps(attributes, ensure_ascii=False), current))
    cursor.executemany(
        f"UPDATE {_UNIQUE} SET name = %s, attributes = {sql['json_param']} WHERE email = %s",  # noqa: S608
        merged,
    )


def _merge(cursor: Any, staged: int, mailing_list: MailingList, options: ImportOptions, summary: ImportSummary) -> None:
    sql = _vendor_sql()
    subscriber, subscription = Subscriber._meta.db_table, Subscription._meta.db_table
    suppression = Suppression._meta.db_table
    unique = _unique_build(cursor, sql)
    summary.duplicate = staged - unique
    if summary.duplicate:
        _duplicates_merge(cursor, sql)
    changed = f"((u.name <> '' AND u.name <> s.name) OR NOT ({sql['contained']}))"
    cursor.execute(
        f"""SELECT
            coalesce(sum(CASE WHEN s.id IS NULL THEN 1 ELSE 0 END), 0),
            coalesce(sum(CASE WHEN s.id IS NOT NULL AND {changed} THEN 1 ELSE 0 END), 0),
            coalesce(sum(CASE WHEN x.id IS NOT NULL THEN 1 ELSE 0 END), 0)
        FROM {_UNIQUE} u
        LEFT JOIN {subscriber} s ON s.email = u.email
        LEFT JOIN {suppression} x ON x.email = u.email"""  # noqa: S608
    )
    created, changed_count, suppressed = (int(v) for v in cursor.fetchone())
    summary.created = created
    summary.updated = changed_count if options.update_existing else 0
    summary.unchanged = unique - created - summary.updated
    summary.suppressed = suppressed

    now = connection.ops.adapt_datetimefield_value(timezone.now())
    if options.update_existing and changed_count:
        cursor.execute(
            f"""UPDATE {subscriber} AS s
            SET name = CASE WHEN u.name <> '' THEN u.name ELSE s.name END,
                attributes = {sql["merged"]}, updated_at = %s
            FROM {_UNIQUE} u WHERE s.email = u.email AND {changed}""",  # noqa: S608
            [now],
        )
    if created:
        # Existing addresses are skipped by the unique index, one probe each. (A NOT EXISTS anti-join here
        # looks tidier, but planned against an empty table it becomes a nested loop that re-reads every row
        # this very statement inserts: quadratic.)
        cursor.execute(
            f"""INSERT INTO {subscriber} (email, name, attributes, status, created_at, updated_at)
            SELECT u.email, u.name, u.attributes, %s, %s, %s FROM {_UNIQUE} u WHERE true
            ON CONFLICT (email) DO NOTHING""",  # noqa: S608
            [Subscriber.Status.ACTIVE, now, now],
        )
        if connection.vendor == "postgresql" and created > 10_000:
            # The planner's statistics still describe the table before these rows: without this, the joins
            # below can pick a nested loop over what it believes is a small table.
            cursor.execute(f"ANALYZE {subscriber}")
    not_suppressed = f"NOT EXISTS (SELECT 1 FROM {suppression} x WHERE x.email = u.email)"  # noqa: S608
    if options.resubscribe:
        # Only what the importer asked for explicitly: consent given up is otherwise never taken back.
        cursor.execute(
            f"""UPDATE {subscriber} SET status = %s, updated_at = %s
            WHERE status = %s AND email IN (SELECT u.email FROM {_UNIQUE} u WHERE {not_suppressed})""",  # noqa: S608
            [Subscriber.Status.ACTIVE, now, Subscriber.Status.UNSUBSCRIBED],
        )
        cursor.execute(
            f"""UPDATE {subscription} SET status = %s, unsubscribed_at = NULL, source = %s, updated_at = %s
            WHERE mailing_list_id = %s AND status = %s AND subscriber_id IN (
                SELECT s.id FROM {subscriber} s JOIN {_UNIQUE} u ON u.email = s.email WHERE {not_suppressed})""",  # noqa: S608
            [Subscription.Status.ACTIVE, "import", now, mailing_list.pk, Subscription.Status.UNSUBSCRIBED],
        )
        summary.resubscribed = max(cursor.rowcount, 0)
    cursor.execute(
        f"""INSERT INTO {subscription} (subscriber_id, mailing_list_id, status, source, created_at, updated_at)
        SELECT s.id, %s, %s, %s, %s, %s FROM {_UNIQUE} u JOIN {subscriber} s ON s.email = u.email
        WHERE s.status = %s AND {not_suppressed}
        ON CONFLICT (subscriber_id, mailing_list_id) DO NOTHING""",  # noqa: S608
        [mailing_list.pk, Subscription.Status.ACTIVE, "import", now, now, Subscriber.Status.ACTIVE],
    )
    summary.subscribed = max(cursor.rowcount, 0)


# --- the service ---------------------------------------------------------------------------------------------


class _ErrorFile:
    """The rejected rows, written as they are found (the file is only created if there is one)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._handle: IO[str] | None = None
        self._writer: Any = None

    def reject(self, line: int, email: str, reason: str) -> None:
        self.count += 1
        if self.path is None:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._handle)
            self._writer.writerow(["line", "email", "reason"])
        self._writer.writerow([line, email[:254], reason])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def subscribers_import(
    *,
    path: Path,
    mailing_list: MailingList,
    options: ImportOptions | None = None,
    errors_path: Path | None = None,
    progress: ProgressCallback | None = None,
) -> ImportSummary:
    """Import a CSV file of subscribers into `mailing_list`; returns the counts.

    The file as a whole is refused (ImportFileInvalid, nothing changed) when it cannot be read as CSV: empty,
    binary, wrong encoding, no email column, a broken quote. Rows that cannot be imported are counted as
    invalid and written to `errors_path` with their line and reason; the valid rows are imported.
    On PostgreSQL a well-formed file takes the COPY path (import_copy); anything else, and SQLite, the
    row-by-row path. Both fill the same staging table and share the merge.
    """
    options = options or ImportOptions()
    csv.field_size_limit(CSV_FIELD_LIMIT)
    total_bytes = path.stat().st_size
    summary = ImportSummary(dry_run=options.dry_run)
    errors = _ErrorFile(errors_path)

    def report(done: int) -> None:
        if progress is not None:
            progress(min(done, total_bytes), total_bytes)

    try:
        with path.open("rb") as raw, transaction.atomic(), connection.cursor() as cursor:
            text, delimiter = _text_stream(raw, options.encoding)
            columns = _header(csv.reader(text, delimiter=delimiter, strict=True), options.column_map)
            try:
                counts = None
                if connection.vendor == "postgresql" and not options.check_deliverability:
                    counts = stage_by_copy(cursor, raw, delimiter=delimiter, codec=text.encoding, columns=columns,
                                           reject=errors.reject, progress=report)  # fmt: skip
                summary.method = "copy" if counts is not None else "rows"
                if counts is None:
                    counts = _stage_rows(cursor, raw, text.encoding, delimiter, options, errors, report)
                summary.rows, staged = counts
                summary.invalid = errors.count
                _merge(cursor, staged, mailing_list, options, summary)
            finally:
                if connection.vendor != "postgresql":
                    for table in (_STAGE, _UNIQUE):
                        cursor.execute(f"DROP TABLE IF EXISTS {table}")
            if options.dry_run:
                transaction.set_rollback(True)
    finally:
        errors.close()
    report(total_bytes)
    summary.errors_path = str(errors_path) if errors.count and errors_path else ""
    return summary


def _unreadable(exc: Exception, line: int) -> ImportFileInvalid:
    if isinstance(exc, UnicodeDecodeError):
        hint = " If it is Latin-1 (Windows), import it with encoding latin-1." if "utf" in exc.encoding else ""
        return ImportFileInvalid(
            f"Line {line}: the file is not valid {exc.encoding.upper()} (byte 0x{exc.object[exc.start]:02x}).{hint}"
        )
    return ImportFileInvalid(f"Line {line}: the file cannot be read as CSV: {exc}.")


def _header(reader: Any, column_map: dict[str, str]) -> Columns:
    try:
        header = next(reader, None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _unreadable(exc, 1) from exc
    if header is None:
        raise ImportFileInvalid("The file is empty.")
    return columns_read(header, column_map)


def _stage_rows(
    cursor: Any,
    raw: IO[bytes],
    codec: str,
    delimiter: str,
    options: ImportOptions,
    errors: _ErrorFile,
    report: Callable[[int], None],
) -> tuple[int, int]:
    """The row-by-row path: Python reads and checks every row, then stages the valid ones."""
    raw.seek(0)
    text = io.TextIOWrapper(raw, encoding=codec, errors="strict", newline="")
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    columns = _header(reader, options.column_map)
    _stage_create(cursor)

    def counted(rows: Iterator[Row]) -> Iterator[Row]:
        for n, row in enumerate(rows, start=1):
            if n % PROGRESS_EVERY == 0:
                report(raw.tell())
            yield row

    try:
        staged = _stage_fill(
            cursor, counted(rows_checked(reader, columns, options.check_deliverability, errors.reject))
        )
    except UnicodeDecodeError as exc:
        raise _unreadable(exc, reader.line_num + 1) from exc
    except csv.Error as exc:
        raise _unreadable(exc, reader.line_num) from exc
    return staged + errors.count, staged
