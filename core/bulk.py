"""Writing many rows' changed fields at once: one UPDATE per chunk of rows, joined on the primary key.

Django's bulk_update builds a CASE WHEN per row and field, whose Python cost outweighs the database's work on the
hot paths (applying ESP events). Here each row's values are sent once and the database joins them on the key: on
PostgreSQL as one array per column (UNNEST), so that a thousand rows are a handful of parameters rather than
thousands of placeholders for the driver to parse; elsewhere as VALUES rows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, cast

from django.db import connection
from django.db.models import Field, Model
from django.utils import timezone

# Fields whose Python values the drivers take as they are (datetimes too, on PostgreSQL).
_PLAIN_FIELDS = {
    "AutoField",
    "BigAutoField",
    "BigIntegerField",
    "BooleanField",
    "CharField",
    "EmailField",
    "FloatField",
    "IntegerField",
    "PositiveBigIntegerField",
    "PositiveIntegerField",
    "PositiveSmallIntegerField",
    "SmallAutoField",
    "SmallIntegerField",
    "TextField",
}


def _binary_cursor() -> Any:
    """PostgreSQL: a cursor that binds its parameters on the server, in binary, on Django's connection (so in the
    same transaction), wrapped like Django's own so that errors become django.db errors and query logging and
    counting see it. Django's cursors quote every value into the SQL text: for thousands of values in arrays that
    quoting cost more than the statement."""
    import psycopg

    connection.ensure_connection()
    raw: Any = psycopg.Cursor(connection.connection)  # the DB-API cursor Django's wrappers take
    return connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)


def rows_read(*, model: type[Model], ids: Collection[int], fields: Sequence[str], lock: bool = False) -> list[tuple]:
    """The `fields` (column values, as Django would load them for these field types) of the rows with these primary
    keys, in key order; `lock`: FOR UPDATE. On PostgreSQL the keys go as one binary array (`= ANY`), not as
    thousands of placeholders."""
    if not ids:
        return []
    if connection.vendor != "postgresql":
        query = model._default_manager.filter(pk__in=list(ids)).order_by("pk")
        if lock and connection.features.has_select_for_update:
            query = query.select_for_update()
        return list(query.values_list(*fields))
    meta = model._meta
    pk = meta.pk
    if pk is None:
        raise ValueError(f"{model.__name__} has no primary key")
    quote = connection.ops.quote_name
    columns = ", ".join(quote(str(cast(Field, meta.get_field(name)).column)) for name in fields)
    table, key = quote(meta.db_table), quote(str(pk.column))
    with _binary_cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {table} WHERE {key} = ANY(%b) ORDER BY {key}"  # noqa: S608 - names are ours
            + (" FOR UPDATE" if lock else ""),
            [list(ids)],
        )
        return [tuple(row) for row in cursor.fetchall()]


def _converter(field: Field) -> Callable[[Any], Any]:
    kind = field.get_internal_type()
    if kind in _PLAIN_FIELDS:
        return lambda value: value
    if kind == "DateTimeField":
        if connection.vendor == "postgresql":
            return lambda value: value
        return connection.ops.adapt_datetimefield_value
    return lambda value: field.get_db_prep_save(value, connection)


def rows_update(
    *,
    model: type[Model],
    objects: Sequence[Any],
    fields: Sequence[str],
    touch: str = "",
    only_where: tuple[str, Any] | None = None,
) -> int:
    """Write each object's `fields` to its row (matched on the primary key). The objects are instances of `model`,
    or any objects with its fields' attribute names (`id`, `mailing_id` ...). `touch`: a DateTimeField set to now on
    every row written (e.g. "updated_at"). `only_where`: (field, value) a row must still have to be written (e.g.
    only rows still `sending`). Returns the number of rows matched."""
    if not objects:
        return 0
    meta = model._meta
    pk = meta.pk
    if pk is None:
        raise ValueError(f"{model.__name__} has no primary key")
    targets: list[Field] = [pk, *(meta.get_field(name) for name in fields)]  # type: ignore[list-item]
    converters = [_converter(field) for field in targets]
    columns = [
        [convert(getattr(obj, field.attname)) for obj in objects]
        for field, convert in zip(targets, converters, strict=True)
    ]
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    names = [f"c{i}" for i in range(len(targets))]
    assignments = [f"{quote(str(field.column))} = v.{names[i]}" for i, field in enumerate(targets) if i]
    extra: list[Any] = []
    if touch:
        touched = cast(Field, meta.get_field(touch))
        assignments.append(f"{quote(str(touched.column))} = {'%b' if connection.vendor == 'postgresql' else '%s'}")
        extra.append(connection.ops.adapt_datetimefield_value(timezone.now()))
    where = f"{table}.{quote(str(pk.column))} = v.c0"
    where_params: list[Any] = []
    if only_where is not None:
        guard = cast(Field, meta.get_field(only_where[0]))
        where += f" AND {table}.{quote(str(guard.column))} = {'%b' if connection.vendor == 'postgresql' else '%s'}"
        where_params.append(_converter(guard)(only_where[1]))
    if connection.vendor == "postgresql":
        arrays = ", ".join(f"%b::{field.db_type(connection)}[]" for field in targets)
        with _binary_cursor() as cursor:
            # Names are the model's own; values are parameters.
            cursor.execute(
                f"UPDATE {table} SET {', '.join(assignments)} "  # noqa: S608
                f"FROM unnest({arrays}) AS v ({', '.join(names)}) WHERE {where}",
                [*extra, *columns, *where_params],  # in the order of the text: SET, FROM, WHERE
            )
            return int(cursor.rowcount)
    with connection.cursor() as cursor:
        rows = list(zip(*columns, strict=True))
        per_chunk = max(1, ((connection.features.max_query_params or 30_000) - len(extra)) // len(targets))
        placeholder = "(" + ", ".join(["%s"] * len(targets)) + ")"
        matched = 0
        for first in range(0, len(rows), per_chunk):
            chunk = rows[first : first + per_chunk]
            cursor.execute(
                f"WITH v ({', '.join(names)}) AS (VALUES {', '.join([placeholder] * len(chunk))}) "  # noqa: S608
                f"UPDATE {table} SET {', '.join(assignments)} FROM v WHERE {where}",
                [value for row in chunk for value in row] + extra + where_params,
            )
            matched += cursor.rowcount
        return matched
