"""CSV import of subscribers into a list: one service behind the command, the admin upload and the API.

The file is read as a stream (constant memory whatever its size) into a temporary staging table, checked
row by row in Python (SQLite, and files PostgreSQL's COPY cannot take) or set-wise in SQL after a COPY
(import_copy; Python decides only the rows the SQL pattern does not accept). Then, in the same transaction:
rows of people erased on request are dropped (never created again), duplicated addresses are folded into
one row, and the staging table is merged into the subscriber and subscription tables set-wise. On
PostgreSQL new addresses take plain INSERTs, existing ones one matched UPDATE (import_merge). An
import killed midway leaves nothing half done; running it again completes it, and running it twice changes
nothing the second time. Figures and what bounds them: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from django.db import DatabaseError, connection, transaction

from core.addresses import address_hash
from delivery.models import Suppression
from subscribers.models import MailingList
from subscribers.services.import_copy import stage_by_copy
from subscribers.services.import_merge import (
    _STAGE,
    _TEMP_TABLES,
    SQLITE_BATCH,
    ImportOptions,
    ImportSummary,
    ProgressCallback,
    _merge,
)
from subscribers.services.import_rows import (
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
PROGRESS_EVERY = 50_000
IMPORT_WORK_MEM = "256MB"
TEMP_BUFFERS_MAX = 256 << 20
ERASED_REASON = "this address was erased at its owner's request: it cannot be imported again"


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
