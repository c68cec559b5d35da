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
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.db import connection, transaction
from django.utils import timezone
from email_validator import EmailNotValidError, validate_email

from core.exceptions import ApplicationError
from delivery.models import Suppression
from subscribers.models import MailingList, Subscriber, Subscription

MAX_FIELD_BYTES = 65_536
MAX_NAME_CHARS = 200
MAX_EMAIL_CHARS = 254
# The csv module's own limit; above it, a row is more likely an unclosed quote than data.
CSV_FIELD_LIMIT = 10 * 1024 * 1024
SNIFF_BYTES = 64 * 1024
SQLITE_BATCH = 5000
PROGRESS_EVERY = 50_000

# Most real addresses: lower-case ASCII, dot-atoms, a domain with a letters-only TLD. Anything else is
# decided by email-validator (~40k addresses/s), so this pattern only has to be exact, not complete.
_COMMON_ADDRESS = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)


class ImportFileInvalid(ApplicationError):
    code = "import_file_invalid"


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


@dataclass(frozen=True)
class _Columns:
    email: int
    name: int | None
    attributes: list[tuple[int, str]]
    width: int


def _columns(header: list[str], column_map: dict[str, str]) -> _Columns:
    mapping = {k.strip().lower(): v.strip() for k, v in column_map.items()}
    names = []
    for position, raw_name in enumerate(header, start=1):
        name = raw_name.strip()
        name = mapping.get(name.lower(), name)
        if not name:
            raise ImportFileInvalid(f"Column {position} of the header has no name.")
        names.append(name)
    lowered = [n.lower() for n in names]
    for name in set(lowered):
        if lowered.count(name) > 1:
            raise ImportFileInvalid(f"The header names the column {name!r} twice.")
    if "email" not in lowered:
        found = ", ".join(repr(n) for n in names[:20])
        raise ImportFileInvalid(
            f"The file has no 'email' column (columns found: {found}). Rename the column, or map it, for "
            "example --map 'E-mail address=email'."
        )
    email = lowered.index("email")
    name_index = lowered.index("name") if "name" in lowered else None
    attributes = [(i, n) for i, n in enumerate(names) if i not in (email, name_index)]
    return _Columns(email, name_index, attributes, len(names))


@dataclass(frozen=True)
class _Row:
    line: int
    email: str
    name: str
    attributes: str  # JSON


def _email_check(value: str, check_deliverability: bool) -> tuple[str, str]:
    """(normalized address, "") or ("", reason)."""
    address = value.strip().lower()
    if not address:
        return "", "the email is empty"
    if len(address) > MAX_EMAIL_CHARS:
        return "", f"the email is {len(address)} characters long, over {MAX_EMAIL_CHARS}"
    if not check_deliverability and _COMMON_ADDRESS.fullmatch(address):
        return address, ""
    try:
        result = validate_email(address, check_deliverability=check_deliverability)
    except EmailNotValidError as exc:
        return "", f"invalid email {value.strip()!r}: {exc}"
    return result.normalized.lower(), ""


def _rows(
    reader: Any, columns: _Columns, options: ImportOptions, reject: Callable[[int, str, str], None]
) -> Iterator[_Row]:
    """Valid rows, in file order; every other row goes to `reject` with its line and the reason."""
    email_at, name_at, attrs, width = columns.email, columns.name, columns.attributes, columns.width
    check_dns = options.check_deliverability
    for record in reader:
        line = reader.line_num
        if len(record) != width:
            if not any(v.strip() for v in record):
                continue  # a blank line
            reject(line, record[email_at] if len(record) > email_at else "",
                   f"the row has {len(record)} fields, the header has {width}")  # fmt: skip
            continue
        oversized = next((i for i, v in enumerate(record) if len(v) > MAX_FIELD_BYTES), None)
        if oversized is not None:
            size = len(record[oversized])
            reject(
                line, record[email_at][:100], f"field {oversized + 1} is {size:,} characters, over {MAX_FIELD_BYTES:,}"
            )
            continue
        email, problem = _email_check(record[email_at], check_dns)
        if problem:
            reject(line, record[email_at], problem)
            continue
        name = record[name_at].strip() if name_at is not None else ""
        if len(name) > MAX_NAME_CHARS:
            reject(line, email, f"the name is {len(name)} characters long, over {MAX_NAME_CHARS}")
            continue
        attributes = {key: record[i] for i, key in attrs if record[i] != ""}
        yield _Row(line, email, name, json.dumps(attributes, ensure_ascii=False) if attributes else "{}")


# --- staging -------------------------------------------------------------------------------------------------

_STAGE = "mailer_import_rows"
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


def _stage_fill(cursor: Any, rows: Iterator[_Row]) -> int:
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
        cursor.execute(
            f"""INSERT INTO {subscriber} (email, name, attributes, status, created_at, updated_at)
            SELECT u.email, u.name, u.attributes, %s, %s, %s FROM {_UNIQUE} u
            WHERE NOT EXISTS (SELECT 1 FROM {subscriber} s WHERE s.email = u.email)
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
    """
    options = options or ImportOptions()
    csv.field_size_limit(CSV_FIELD_LIMIT)
    total_bytes = path.stat().st_size
    summary = ImportSummary(dry_run=options.dry_run)
    errors = _ErrorFile(errors_path)
    with path.open("rb") as raw:
        text, delimiter = _text_stream(raw, options.encoding)
        reader = csv.reader(text, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise ImportFileInvalid("The file is empty.")
            columns = _columns(header, options.column_map)

            def counted(rows: Iterator[_Row]) -> Iterator[_Row]:
                for n, row in enumerate(rows, start=1):
                    if progress is not None and n % PROGRESS_EVERY == 0:
                        progress(raw.tell(), total_bytes)
                    yield row

            with transaction.atomic(), connection.cursor() as cursor:
                try:
                    _stage_create(cursor)
                    staged = _stage_fill(cursor, counted(_rows(reader, columns, options, errors.reject)))
                    summary.invalid = errors.count
                    summary.rows = staged + errors.count
                    _merge(cursor, staged, mailing_list, options, summary)
                finally:
                    if connection.vendor != "postgresql":
                        for table in (_STAGE, _UNIQUE):
                            cursor.execute(f"DROP TABLE IF EXISTS {table}")
                if options.dry_run:
                    transaction.set_rollback(True)
        except UnicodeDecodeError as exc:
            hint = (
                " If the file is Latin-1 (Windows), import it with encoding latin-1." if "utf" in exc.encoding else ""
            )
            raise ImportFileInvalid(
                f"Line {reader.line_num + 1}: the file is not valid {exc.encoding.upper()} "
                f"(byte 0x{exc.object[exc.start]:02x}).{hint}"
            ) from exc
        except csv.Error as exc:
            raise ImportFileInvalid(f"Line {reader.line_num}: the file cannot be read as CSV: {exc}.") from exc
        finally:
            errors.close()
    if progress is not None:
        progress(total_bytes, total_bytes)
    summary.errors_path = str(errors_path) if errors.count and errors_path else ""
    return summary
