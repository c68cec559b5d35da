"""CSV import of subscribers into a list: one service behind the command, the admin upload and the API.

The file is read as a stream (constant memory whatever its size) into a temporary staging table, checked
row by row in Python (SQLite, and files PostgreSQL's COPY cannot take) or set-wise in SQL after a COPY
(import_copy; Python decides only the rows the SQL pattern does not accept). Then, in the same transaction:
rows of people erased on request are dropped (never created again), duplicated addresses are folded into
one row, and the staging table is merged into the subscriber and subscription tables set-wise. On
PostgreSQL new addresses take plain INSERTs, existing ones one matched UPDATE (`_merge_postgresql`). An
import killed midway leaves nothing half done; running it again completes it, and running it twice changes
nothing the second time. Figures and what bounds them: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from core.addresses import address_hash
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
IMPORT_WORK_MEM = "256MB"
TEMP_BUFFERS_MAX = 256 << 20
ERASED_REASON = "this address was erased at its owner's request: it cannot be imported again"


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
_DUPLICATES = "mailer_import_duplicates"
_MATCHED = "mailer_import_matched"  # PostgreSQL: staged lines that are existing subscribers
_TEMP_TABLES = (_STAGE, _DUPLICATES)


def _stage_create(cursor: Any) -> None:
    postgresql = connection.vendor == "postgresql"
    for table in _TEMP_TABLES:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
    cursor.execute(
        f"CREATE {'TEMPORARY' if postgresql else 'TEMP'} TABLE {_STAGE} "
        f"(line bigint, email text, name text, attributes {'jsonb' if postgresql else 'text'})"
        f"{' ON COMMIT DROP' if postgresql else ''}"
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


# --- erased people -------------------------------------------------------------------------------------------


def _erased_hashes() -> set[str]:
    """The address hashes of erased people (Suppression rows whose address is gone): usually none."""
    return set(Suppression.objects.filter(email__isnull=True).values_list("email_hash", flat=True))


def _erased_rows_skipped(rows: Iterator[Row], erased: set[str], errors: _ErrorFile) -> Iterator[Row]:
    """The row-by-row path's filter: rows of an erased person never reach the staging table."""
    seen: set[str] = set()
    for row in rows:
        digest = address_hash(row.email)
        if digest in erased:
            seen.add(digest)
            errors.erased(row.line)
            continue
        yield row
    errors.erased_addresses += len(seen)


def _erased_rows_delete(cursor: Any, errors: _ErrorFile) -> int:
    """The COPY path's filter, in SQL: hashes are computed only when an erased person exists. Returns the
    number of staged rows deleted."""
    suppression = Suppression._meta.db_table
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {suppression} WHERE email IS NULL)")  # noqa: S608
    if not cursor.fetchone()[0]:
        return 0
    cursor.execute(
        f"""WITH gone AS (
            DELETE FROM {_STAGE} WHERE encode(sha256(convert_to(email, 'UTF8')), 'hex')
                IN (SELECT email_hash FROM {suppression} WHERE email IS NULL)
            RETURNING line, email)
        SELECT coalesce(array_agg(line ORDER BY line), '{{}}'), count(DISTINCT email) FROM gone"""  # noqa: S608
    )
    lines, addresses = cursor.fetchone()
    for line in lines:
        errors.erased(line)
    errors.erased_addresses += int(addresses)
    return len(lines)


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


# --- the service ---------------------------------------------------------------------------------------------


class _ErrorFile:
    """The rows not imported, written as they are found (the file is only created if there is one): the
    invalid ones with the address as given, an erased person's with their line only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0  # invalid rows
        self.erased_rows = 0
        self.erased_addresses = 0
        self._handle: IO[str] | None = None
        self._writer: Any = None

    def reject(self, line: int, email: str, reason: str) -> None:
        self.count += 1
        self._write(line, email[:254], reason)

    def erased(self, line: int) -> None:
        """A row whose address belongs to an erased person. The address is not written here either: the
        file is kept on the server, and the person asked for it to be forgotten."""
        self.erased_rows += 1
        self._write(line, "", ERASED_REASON)

    def _write(self, line: int, email: str, reason: str) -> None:
        if self.path is None:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._handle)
            self._writer.writerow(["line", "email", "reason"])
        self._writer.writerow([line, email, reason])

    @property
    def written(self) -> bool:
        return bool(self.count or self.erased_rows)

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
    invalid and written to `errors_path` with their line and reason; the valid rows are imported. Rows of a
    person erased on request are never imported: counted as suppressed, and listed in `errors_path` by line
    only (the address is not written again).
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
            if connection.vendor == "postgresql":
                _session_tune(cursor, total_bytes)
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
                if summary.method == "copy":
                    staged -= _erased_rows_delete(cursor, errors)
                summary.invalid = errors.count
                summary.suppressed = errors.erased_addresses
                _merge(cursor, staged, mailing_list, options, summary)
            finally:
                if connection.vendor != "postgresql":
                    for table in _TEMP_TABLES:
                        cursor.execute(f"DROP TABLE IF EXISTS {table}")
            if options.dry_run:
                transaction.set_rollback(True)
    finally:
        errors.close()
    report(total_bytes)
    summary.errors_path = str(errors_path) if errors.written and errors_path else ""
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

    rows = rows_checked(reader, columns, options.check_deliverability, errors.reject)
    erased = _erased_hashes()
    if erased:
        rows = _erased_rows_skipped(rows, erased, errors)
    try:
        staged = _stage_fill(cursor, counted(rows))
    except UnicodeDecodeError as exc:
        raise _unreadable(exc, reader.line_num + 1) from exc
    except csv.Error as exc:
        raise _unreadable(exc, reader.line_num) from exc
    return staged + errors.count + errors.erased_rows, staged


def _session_tune(cursor: Any, file_bytes: int) -> None:
    """PostgreSQL settings for this transaction only (SET LOCAL ends with it).

    synchronous_commit off: the commit returns before its WAL reaches the disk. A crash in the next fraction
    of a second loses the whole import, never part of it (it is one transaction), and running it again
    completes it; no other transaction's durability changes. work_mem: the duplicate check and the
    re-import's join hash a million addresses in memory instead of spilling them to disk in batches.
    """
    cursor.execute("SET LOCAL synchronous_commit = off")
    cursor.execute(f"SET LOCAL work_mem = '{IMPORT_WORK_MEM}'")
    # The staging tables in memory rather than written out 8 MB at a time (about 2 s of 40 on a million rows).
    # PostgreSQL fixes a session's temporary buffer pool at its first use of a temporary table, and refuses
    # the setting after that: then the import runs with the pool it has.
    temp_buffers = min(TEMP_BUFFERS_MAX, max(8 << 20, file_bytes * 4)) >> 20
    cursor.execute("SAVEPOINT mailer_import_tune")
    try:
        cursor.execute(f"SET LOCAL temp_buffers = '{temp_buffers}MB'")
    except DatabaseError:
        cursor.execute("ROLLBACK TO SAVEPOINT mailer_import_tune")
    cursor.execute("RELEASE SAVEPOINT mailer_import_tune")
