"""The PostgreSQL fast path of the CSV import: the server parses the file (COPY), and rows are checked
set-wise in SQL; Python only sees the rows the strict address pattern does not accept.

It needs a well-formed file: any row COPY cannot take (a blank line, a ragged row, a byte that is not in
the encoding, a broken quote) sends the whole file back to the row-by-row path, which names each problem
with its line.

Two passes over the data on the server: COPY into a raw table, then one statement that builds the staging
table (address, name, attributes) and flags, in the same pass, the rows the SQL check does not accept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

import psycopg
from django.db import connection

from subscribers.services.import_rows import (
    COMMON_ADDRESS_SQL,
    MAX_EMAIL_CHARS,
    MAX_FIELD_BYTES,
    MAX_NAME_CHARS,
    STAGE_TABLE,
    Columns,
    email_check,
)

RAW_TABLE = "mailer_import_raw"
CHUNK_BYTES = 1 << 20
CHECK_BATCH = 10_000
_DELIMITERS = {",": "','", ";": "';'", "\t": "E'\\t'", "|": "'|'"}
# PostgreSQL functions take at most 100 arguments: build attribute objects in slices of 50 pairs.
_PAIRS_PER_CALL = 50


# The strict address pattern, for PostgreSQL. Its regular expressions are slow with nested groups (about
# 24 us a row) and with bounded repeats ({2,63} alone triples the cost), so the pattern is a flat one and the
# rules it cannot say are cheaper checks: no two of . @ - side by side (stricter than needed: "--" and "-@"
# are valid, and Python decides those rows), no leading dot, the local part and label lengths. Together they
# accept nothing import_rows' Python pattern refuses. (The top-level domain's 63-character limit is the
# label rule's.)
_COMMON_ADDRESS_CHECK = (
    "email ~ %s AND email !~ '[.@-][.@-]' AND email NOT LIKE '.%%' AND position('@' in email) <= 65"
    " AND (octet_length(email) - position('@' in email) <= 63 OR split_part(email, '@', 2) !~ '[^.]{64}')"
)


def _attributes_sql(columns: Columns) -> tuple[str, list[str]]:
    """The attributes object, without the empty cells. Stripping the nulls costs a second walk of each
    object, so it is skipped for rows with every attribute filled in (most rows of most files)."""
    if not columns.attributes:
        return "'{}'::jsonb", []
    parts, params = [], []
    for start in range(0, len(columns.attributes), _PAIRS_PER_CALL):
        pairs = columns.attributes[start : start + _PAIRS_PER_CALL]
        parts.append("jsonb_build_object(" + ", ".join(f"%s::text, NULLIF(c{i}, '')" for i, _ in pairs) + ")")
        params += [name for _, name in pairs]
    built = " || ".join(parts)
    filled = " AND ".join(f"c{i} <> ''" for i, _ in columns.attributes)
    return f"CASE WHEN {filled} THEN {built} ELSE jsonb_strip_nulls({built}) END", params + params


def stage_by_copy(
    cursor: Any,
    raw: IO[bytes],
    *,
    delimiter: str,
    codec: str,
    columns: Columns,
    reject: Callable[[int, str, str], None],
    progress: Callable[[int], None] | None,
) -> tuple[int, int] | None:
    """Fill the staging table; returns (rows read, rows staged), or None when the file needs the slow path."""
    if delimiter not in _DELIMITERS:
        return None
    width = columns.width
    names = ", ".join(f"c{i}" for i in range(width))
    for table in (RAW_TABLE, STAGE_TABLE):  # left by an earlier import in this transaction
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
    encoding = "UTF8" if codec.startswith("utf") else "LATIN1"
    cursor.execute("SAVEPOINT mailer_import_copy")
    # Created after the savepoint so that COPY may FREEZE it (a table created in the same subtransaction).
    # The identity numbers the rows as the row-by-row path numbers lines: the header is line 1. A large
    # sequence cache makes it nearly free (a bigserial costs about 0.7 us a row).
    cursor.execute(
        f"CREATE TEMPORARY TABLE {RAW_TABLE} (line bigint GENERATED ALWAYS AS IDENTITY (START WITH 2 CACHE 100000), "
        f"{', '.join(f'c{i} text' for i in range(width))}) ON COMMIT DROP"
    )
    raw.seek(0)
    sent = 0
    try:
        with cursor.cursor.copy(
            f"COPY {RAW_TABLE} ({names}) FROM STDIN WITH (FORMAT csv, HEADER true, FREEZE true, "
            f"DELIMITER {_DELIMITERS[delimiter]}, ENCODING '{encoding}')"
        ) as copy:
            first = True
            while chunk := raw.read(CHUNK_BYTES):
                if first and codec == "utf-8-sig" and chunk.startswith(b"\xef\xbb\xbf"):
                    chunk = chunk[3:]
                first = False
                copy.write(chunk)
                sent += len(chunk)
                if progress is not None:
                    progress(sent)
    except psycopg.errors.DataError:
        cursor.execute("ROLLBACK TO SAVEPOINT mailer_import_copy")
        return None
    cursor.execute("RELEASE SAVEPOINT mailer_import_copy")

    email_col = f"c{columns.email}"
    name_col = f"coalesce(btrim(c{columns.name}), '')" if columns.name is not None else "''"
    attributes, params = _attributes_sql(columns)
    # Byte lengths (no scan of the text) bound the character lengths: a row over a limit in bytes only is
    # left to Python, which counts characters.
    fits = " AND ".join(f"coalesce(octet_length(c{i}), 0) <= {MAX_FIELD_BYTES}" for i in range(width))
    # lower() under the C collation folds ASCII only, and faster: a row with any other letter fails the
    # ASCII pattern and is normalized by Python below. OFFSET 0 keeps the inner select a subquery, so that
    # the address is computed once per row, not once per check.
    cursor.execute(
        f"""CREATE TEMPORARY TABLE {STAGE_TABLE} ON COMMIT DROP AS
        SELECT line, email, name, attributes,
               fits AND octet_length(email) <= {MAX_EMAIL_CHARS} AND octet_length(name) <= {MAX_NAME_CHARS}
               AND {_COMMON_ADDRESS_CHECK} AS checked
        FROM (SELECT line, (lower(btrim(coalesce({email_col}, '')) COLLATE "C") COLLATE "default") AS email,
                     {name_col} AS name, {attributes} AS attributes, ({fits}) AS fits
              FROM {RAW_TABLE} OFFSET 0) AS r""",  # noqa: S608 - column names are ours, values are parameters
        [COMMON_ADDRESS_SQL, *params],  # in the order they appear
    )
    rows = max(cursor.rowcount, 0)
    dropped = _unchecked_rows_check(cursor, columns, name_col, reject)
    return rows, rows - dropped


def _unchecked_rows_check(cursor: Any, columns: Columns, name_col: str, reject: Callable[[int, str, str], None]) -> int:
    """Python decides the rows the SQL pattern did not accept (email-validator for unusual addresses):
    fixes their address or drops them. Streamed in batches, so a file of unusual addresses stays in
    constant memory. Returns the number of rows dropped."""
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {STAGE_TABLE} WHERE NOT checked)")  # noqa: S608
    if not cursor.fetchone()[0]:
        return 0
    lengths = ", ".join(f"coalesce(length(r.c{i}), 0)" for i in range(columns.width))
    dropped = 0
    with connection.chunked_cursor() as unchecked:
        unchecked.execute(
            f"""SELECT r.line, coalesce(r.c{columns.email}, ''), {name_col}, ARRAY[{lengths}]
            FROM {RAW_TABLE} r WHERE r.line IN (SELECT line FROM {STAGE_TABLE} WHERE NOT checked)
            ORDER BY r.line"""  # noqa: S608
        )
        while batch := unchecked.fetchmany(CHECK_BATCH):
            fixed_lines: list[int] = []
            fixed_emails: list[str] = []
            dropped_lines: list[int] = []
            for line, given, name, field_lengths in batch:
                oversized = next((i for i, size in enumerate(field_lengths) if size > MAX_FIELD_BYTES), None)
                if oversized is not None:
                    reject(line, given[:100], f"field {oversized + 1} is {field_lengths[oversized]:,} characters, "
                           f"over {MAX_FIELD_BYTES:,}")  # fmt: skip
                    dropped_lines.append(line)
                    continue
                email, problem = email_check(given, check_deliverability=False)
                if not problem and len(name) > MAX_NAME_CHARS:
                    problem = f"the name is {len(name)} characters long, over {MAX_NAME_CHARS}"
                if problem:
                    reject(line, given, problem)
                    dropped_lines.append(line)
                else:
                    fixed_lines.append(line)
                    fixed_emails.append(email)
            with connection.cursor() as write:
                if fixed_lines:
                    write.execute(
                        f"""UPDATE {STAGE_TABLE} s SET email = f.email, checked = true
                        FROM unnest(%s::bigint[], %s::text[]) AS f(line, email) WHERE s.line = f.line""",  # noqa: S608
                        [fixed_lines, fixed_emails],
                    )
                if dropped_lines:
                    write.execute(f"DELETE FROM {STAGE_TABLE} WHERE line = ANY(%s::bigint[])", [dropped_lines])  # noqa: S608
            dropped += len(dropped_lines)
    return dropped
