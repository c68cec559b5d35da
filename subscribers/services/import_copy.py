"""The PostgreSQL fast path of the CSV import: the server parses the file (COPY), and rows are checked
set-wise in SQL; Python only sees the rows the strict address pattern does not accept.

It needs a well-formed file: any row COPY cannot take (a blank line, a ragged row, a byte that is not in
the encoding, a broken quote) sends the whole file back to the row-by-row path, which names each problem
with its line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

import psycopg

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
_DELIMITERS = {",": "','", ";": "';'", "\t": "E'\\t'", "|": "'|'"}
# PostgreSQL functions take at most 100 arguments: build attribute objects in slices of 50 pairs.
_PAIRS_PER_CALL = 50


# The strict address pattern, for PostgreSQL. Its regular expressions are slow with nested groups (about
# 24 us a row), so the pattern is a flat one (about 5 us) and the dot and hyphen rules it cannot say are LIKE
# checks; together they accept exactly what import_rows' Python pattern accepts.
_COMMON_ADDRESS_CHECK = (
    "s.email ~ %s AND position('@' in s.email) <= 65 AND s.email NOT LIKE '%%..%%' AND s.email NOT LIKE '.%%'"
    " AND s.email NOT LIKE '%%.@%%' AND s.email NOT LIKE '%%@.%%' AND s.email NOT LIKE '%%@-%%'"
    " AND s.email NOT LIKE '%%-.%%' AND s.email NOT LIKE '%%.-%%'"
    " AND (length(s.email) - position('@' in s.email) <= 63 OR split_part(s.email, '@', 2) !~ '[^.]{64}')"
)


def _attributes_sql(columns: Columns) -> tuple[str, list[str]]:
    if not columns.attributes:
        return "'{}'::jsonb", []
    parts, params = [], []
    for start in range(0, len(columns.attributes), _PAIRS_PER_CALL):
        pairs = columns.attributes[start : start + _PAIRS_PER_CALL]
        parts.append("jsonb_build_object(" + ", ".join(f"%s::text, NULLIF(c{i}, '')" for i, _ in pairs) + ")")
        params += [name for _, name in pairs]
    return "jsonb_strip_nulls(" + " || ".join(parts) + ")", params


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
    for table in (RAW_TABLE, STAGE_TABLE, "mailer_import_unique"):  # left by an earlier import in this transaction
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
    cursor.execute(
        f"CREATE TEMPORARY TABLE {RAW_TABLE} (id bigserial, {', '.join(f'c{i} text' for i in range(width))}) "
        "ON COMMIT DROP"
    )
    encoding = "UTF8" if codec.startswith("utf") else "LATIN1"
    cursor.execute("SAVEPOINT mailer_import_copy")
    raw.seek(0)
    sent = 0
    try:
        with cursor.cursor.copy(
            f"COPY {RAW_TABLE} ({names}) FROM STDIN WITH (FORMAT csv, HEADER true, "
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
    fits = " AND ".join(f"coalesce(length(c{i}), 0) <= {MAX_FIELD_BYTES}" for i in range(width))
    cursor.execute(
        f"""CREATE TEMPORARY TABLE {STAGE_TABLE} ON COMMIT DROP AS
        SELECT id + 1 AS line, lower(btrim(coalesce({email_col}, ''))) AS email, {name_col} AS name,
               {attributes} AS attributes, coalesce({email_col}, '') AS given_email, ({fits}) AS fits
        FROM {RAW_TABLE}""",  # noqa: S608 - column names are ours, values are parameters
        params,
    )
    cursor.execute(f"SELECT count(*) FROM {STAGE_TABLE}")  # noqa: S608
    rows = int(cursor.fetchone()[0])
    lengths = ", ".join(f"coalesce(length(w.c{i}), 0)" for i in range(width))
    cursor.execute(
        f"""SELECT s.line, s.given_email, s.name, s.fits, ARRAY[{lengths}]
        FROM {STAGE_TABLE} s JOIN {RAW_TABLE} w ON w.id = s.line - 1
        WHERE NOT (s.fits AND length(s.email) <= {MAX_EMAIL_CHARS} AND length(s.name) <= {MAX_NAME_CHARS}
                   AND {_COMMON_ADDRESS_CHECK})""",  # noqa: S608
        [COMMON_ADDRESS_SQL],
    )
    fixed: list[tuple[str, int]] = []
    dropped: list[int] = []
    for line, given, name, fits_all, field_lengths in cursor.fetchall():
        if not fits_all:
            position = next(i for i, size in enumerate(field_lengths) if size > MAX_FIELD_BYTES)
            reject(line, given[:100], f"field {position + 1} is {field_lengths[position]:,} characters, over "
                   f"{MAX_FIELD_BYTES:,}")  # fmt: skip
            dropped.append(line)
            continue
        email, problem = email_check(given, check_deliverability=False)
        if not problem and len(name) > MAX_NAME_CHARS:
            problem = f"the name is {len(name)} characters long, over {MAX_NAME_CHARS}"
        if problem:
            reject(line, given, problem)
            dropped.append(line)
        else:
            fixed.append((email, line))
    if fixed:
        cursor.executemany(f"UPDATE {STAGE_TABLE} SET email = %s WHERE line = %s", fixed)  # noqa: S608
    if dropped:
        cursor.execute(f"DELETE FROM {STAGE_TABLE} WHERE line = ANY(%s)", [dropped])  # noqa: S608
    cursor.execute(f"ANALYZE {STAGE_TABLE}")
    return rows, rows - len(dropped)
