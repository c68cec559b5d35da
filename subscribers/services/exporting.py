"""CSV export of subscribers (everyone, one list, or a chosen set): one service behind the command and the
admin actions.

Every cell is computed by the database, in one query built once with the ORM (the two non-portable
expressions, the UTC timestamp and an attribute's text, have one SQL form per database below), so no model
object and no Python work per row is needed. `subscribers_export_rows` streams that query's tuples through
`.iterator()` (a server-side cursor on PostgreSQL) for any database. `subscribers_export_csv`, what the doors
use, hands the same query to PostgreSQL's `COPY ... TO STDOUT (FORMAT csv)` there, so the CSV is written by
the server while Python only forwards blocks; it is then bound by the database, not by Python (figures in
bench/export_subscribers.py). Memory stays flat on both paths whatever the number of rows.

The attribute columns are collected first with one query, sorted, so the header is stable between runs.
Formula injection (OWASP "CSV injection"): any cell starting with = + - @ tab or carriage return gets a
leading single quote, headers included, so a spreadsheet shows it as text instead of evaluating it.
"""

from __future__ import annotations

import codecs
import csv
import io
import select
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import psycopg
from django.db import connections, transaction
from django.db.models import Case, CharField, F, Func, QuerySet, TextField, Value, When
from django.db.models.expressions import Expression
from django.db.models.functions import Concat, Ord
from django.db.models.lookups import In
from psycopg import pq

from subscribers.models import MailingList, Subscriber

EXPORT_CHUNK_SIZE = 2000
CSV_BLOCK_CHARS = 64 * 1024
SUBSCRIBER_COLUMNS = ["email", "name", "status", "created_at"]
LIST_COLUMNS = ["email", "name", "status", "list_status", "created_at"]

# OWASP: a cell starting with one of these is taken as a formula by Excel, LibreOffice or Google Sheets.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_TRIGGER_CODES = [ord(trigger) for trigger in FORMULA_TRIGGERS]

# The distinct top-level keys of the selected subscribers' attributes, one query per database. `{rows}` is the
# selection compiled by the ORM, with one column, `attributes`; a value that is not an object has no keys.
_ATTRIBUTE_KEYS_SQL = {
    "postgresql": (
        "SELECT DISTINCT attribute.key FROM ({rows}) AS exported, jsonb_object_keys(CASE WHEN"
        " jsonb_typeof(exported.attributes) = 'object' THEN exported.attributes END) AS attribute(key)"
    ),
    "sqlite": (
        "SELECT DISTINCT attribute.key FROM ({rows}) AS exported, json_each(CASE WHEN"
        " json_type(exported.attributes) = 'object' THEN exported.attributes END) AS attribute"
    ),
}

ExportRow = Sequence[str | None]


class _Writable(Protocol):
    def write(self, s: str, /) -> Any: ...


class _UtcTimestamp(Func):
    """ISO 8601 in UTC, to the second: 2025-01-31T09:30:00Z."""

    output_field = CharField()

    def as_postgresql(self, compiler, connection, **extra_context):
        # to_char, not a text cast: its output does not depend on the session's DateStyle.
        template = "to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
        return self.as_sql(compiler, connection, template=template, **extra_context)

    def as_sqlite(self, compiler, connection, **extra_context):
        # Django stores aware datetimes on SQLite as UTC text, 'YYYY-MM-DD HH:MM:SS[.ffffff]'.
        sql, params = compiler.compile(self.get_source_expressions()[0])
        return f"(substr({sql}, 1, 10) || 'T' || substr({sql}, 12, 8) || 'Z')", (*params, *params)


class _AttributeText(Func):
    """One attribute as a cell: a string as it is, any other value as its JSON text, a missing key or a JSON
    null as NULL. (Django's KeyTextTransform reads a key like "2024" as an array index, and returns booleans
    as 1/0 on SQLite.)"""

    output_field = TextField()

    def __init__(self, key: str, attributes: Expression | F) -> None:
        super().__init__(attributes)
        self.key = key

    def as_postgresql(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.get_source_expressions()[0])
        return f"({sql} ->> %s)", (*params, self.key)

    def as_sqlite(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.get_source_expressions()[0])
        path = f'$."{self.key}"'
        return (
            f"(CASE json_type({sql}, %s) WHEN 'text' THEN {sql} ->> %s WHEN 'null' THEN NULL ELSE {sql} -> %s END)",
            (*params, path, *params, path, *params, path),
        )


def _neutralized(expression: Expression | F) -> Case:
    """The cell, with a leading quote when it starts like a formula."""
    return Case(
        When(In(Ord(expression), _FORMULA_TRIGGER_CODES), then=Concat(Value("'"), expression)),
        default=expression,
        output_field=TextField(),
    )


def cell_neutralize(value: str) -> str:
    """The Python form of the rule, for cells not computed by the database (the header)."""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


def _selection(*, mailing_list: MailingList | None, subscribers: QuerySet[Subscriber] | None) -> QuerySet[Subscriber]:
    selection = Subscriber.objects.all()
    if mailing_list is not None:
        selection = selection.filter(subscriptions__mailing_list=mailing_list)
    if subscribers is not None:
        # A subquery: the caller's queryset may carry ordering, annotations or joins of its own.
        selection = selection.filter(pk__in=subscribers.order_by().values("pk"))
    return selection


def subscriber_attribute_keys(
    *, mailing_list: MailingList | None = None, subscribers: QuerySet[Subscriber] | None = None
) -> list[str]:
    """The attribute keys found in the selection, in one query; sorted in Python, not by a collation."""
    selection = _selection(mailing_list=mailing_list, subscribers=subscribers).order_by().values("attributes")
    connection = connections[selection.db]
    rows_sql, params = selection.query.get_compiler(connection=connection).as_sql()
    with connection.cursor() as cursor:
        cursor.execute(_ATTRIBUTE_KEYS_SQL[connection.vendor].format(rows=rows_sql), params)
        return sorted(key for (key,) in cursor.fetchall())


def _export_query(
    *, mailing_list: MailingList | None, subscribers: QuerySet[Subscriber] | None, keys: list[str]
) -> tuple[list[str], QuerySet]:
    """The header, and the query whose rows are the CSV's cells in order, ordered by pk."""
    columns = LIST_COLUMNS if mailing_list is not None else SUBSCRIBER_COLUMNS
    # The statuses are the models' own choices (lower-case words): nothing to neutralize, and a CASE less per
    # cell and row.
    cells: list[Any] = [_neutralized(F("email")), _neutralized(F("name")), F("status")]
    if mailing_list is not None:
        # Reuses the join of the selection's filter: one subscription per subscriber and list.
        cells.append(F("subscriptions__status"))
    cells.append(_UtcTimestamp(F("created_at")))  # starts with a digit: nothing to neutralize
    cells += [_neutralized(_AttributeText(key, F("attributes"))) for key in keys]
    header = [cell_neutralize(column) for column in [*columns, *keys]]
    query = _selection(mailing_list=mailing_list, subscribers=subscribers).order_by("pk").values_list(*cells)
    return header, query


def subscribers_export_rows(
    *,
    mailing_list: MailingList | None = None,
    subscribers: QuerySet[Subscriber] | None = None,
    chunk_size: int = EXPORT_CHUNK_SIZE,
) -> Iterator[ExportRow]:
    """The header, then one row per subscriber ordered by pk: email, name, status, list_status (only when a
    list is given: the subscription's status there), created_at (ISO 8601 UTC), one column per attribute key.

    `subscribers` narrows the export to a set (the admin's selection); with neither argument, everyone.
    Two queries whatever the number of rows. A missing attribute is None. A key first written between the
    two queries is not in the header, so not in this export.
    """
    keys = subscriber_attribute_keys(mailing_list=mailing_list, subscribers=subscribers)
    header, query = _export_query(mailing_list=mailing_list, subscribers=subscribers, keys=keys)
    yield header
    yield from query.iterator(chunk_size=chunk_size)


def subscribers_export_csv(
    *, mailing_list: MailingList | None = None, subscribers: QuerySet[Subscriber] | None = None
) -> Iterator[str]:
    """The export as CSV text, in blocks of about 64 KB: for a file, stdout or a StreamingHttpResponse.

    PostgreSQL writes the rows itself (COPY), in one read-only repeatable-read transaction when this is the
    outermost one, so the header and the rows see the same data; elsewhere the csv module writes the rows
    of `subscribers_export_rows`. The same values for any CSV reader; the bytes differ in two ways: COPY ends
    rows in LF (the csv module in CRLF) and writes an empty string as "" (the csv module as nothing).
    """
    connection = connections[Subscriber.objects.db]
    if connection.vendor != "postgresql":
        yield from csv_chunks(subscribers_export_rows(mailing_list=mailing_list, subscribers=subscribers))
        return
    outermost = not connection.in_atomic_block
    with transaction.atomic(using=connection.alias):
        if outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                # The key query's estimate (100 keys a row) makes PostgreSQL spend longer compiling it with
                # JIT than running it. SET LOCAL ends with this transaction.
                cursor.execute("SET LOCAL jit = off")
        keys = subscriber_attribute_keys(mailing_list=mailing_list, subscribers=subscribers)
        header, query = _export_query(mailing_list=mailing_list, subscribers=subscribers, keys=keys)
        yield _csv_line(header)
        sql, params = query.query.get_compiler(connection=connection).as_sql()
        decoder = codecs.getincrementaldecoder("utf-8")()
        with connection.cursor() as cursor:
            for block in _copy_out_blocks(cursor.cursor, f"COPY ({sql}) TO STDOUT (FORMAT csv)", params):
                yield decoder.decode(block)
        yield decoder.decode(b"", final=True)


def _copy_out_blocks(cursor: psycopg.Cursor, sql: str, params: Sequence[Any]) -> Iterator[bytes]:
    """The output of a COPY ... TO STDOUT in blocks of about CSV_BLOCK_CHARS bytes.

    The server sends one message per row. psycopg's own iteration hands each over through its generic wait
    loop, about 2 us of Python a row: as much CPU as the database spends on the row, on a machine whose cores
    the database needs. This loop does what that one does (psycopg.generators.copy_from, through psycopg's
    public libpq layer): take every row libpq has buffered, wait on the socket only when none is, then check
    the final result. Errors before the first row come from psycopg; an error midway (the server ends the
    COPY with it) is raised here as psycopg's exception for its SQLSTATE.
    """
    with cursor.copy(sql, params):
        pgconn = cursor.connection.pgconn
        block = bytearray()
        while True:
            nbytes, data = pgconn.get_copy_data(1)  # 1: do not block; 0 means no complete row buffered yet
            if nbytes > 0:
                block += data
                if len(block) >= CSV_BLOCK_CHARS:
                    yield bytes(block)
                    block.clear()
            elif nbytes == 0:
                select.select([pgconn.socket], [], [])
                pgconn.consume_input()
            else:  # -1: the COPY is over (get_copy_data raises on -2)
                break
        while pgconn.is_busy():
            select.select([pgconn.socket], [], [])
            pgconn.consume_input()
        results = []
        while (result := pgconn.get_result()) is not None:
            results.append(result)
        if block:
            yield bytes(block)
        for result in results:
            if result.status != pq.ExecStatus.COMMAND_OK:
                sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
                message = (result.error_message or b"").decode(errors="replace")
                try:
                    error = psycopg.errors.lookup(sqlstate)
                except KeyError:
                    error = psycopg.DatabaseError
                raise error(message)


def _csv_line(row: ExportRow) -> str:
    """One row as COPY would end it (LF), quoted by the csv module with CRLF so that a lone CR is quoted too
    (Python 3.11's writer quotes only the characters of its line terminator)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(row)
    return buffer.getvalue()[:-2] + "\n"


def csv_rows_write(rows: Iterable[ExportRow], stream: _Writable) -> None:
    """Write rows with the csv module (comma, double quotes, CRLF). Open files with newline=""."""
    csv.writer(stream).writerows(rows)


class _Echo:
    """A file whose write() hands the text back, so csv.writer produces strings instead of filling a buffer."""

    def write(self, value: str) -> str:
        return value


def csv_chunks(rows: Iterable[ExportRow], *, block_chars: int = CSV_BLOCK_CHARS) -> Iterator[str]:
    """The rows as CSV text in blocks of about `block_chars`: constant memory, and not one write per row."""
    writer = csv.writer(_Echo())
    pending: list[str] = []
    size = 0
    for row in rows:
        line = writer.writerow(row)
        pending.append(line)
        size += len(line)
        if size >= block_chars:
            yield "".join(pending)
            pending.clear()
            size = 0
    if pending:
        yield "".join(pending)
