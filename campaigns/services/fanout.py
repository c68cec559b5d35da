"""The audience fan-out: one INSERT ... SELECT creates a Message per eligible recipient.

Eligible: an active subscriber with an active subscription to one of the campaign's lists, whose address is
not on the suppression list. The unique (mailing, address) constraint makes running it twice a no-op.
"""

from __future__ import annotations

from django.db import connection
from django.utils import timezone

from delivery.models import Mailing, Message, Suppression
from subscribers.models import Subscriber, Subscription


def _audience_sql(list_ids: list[int]) -> tuple[str, list[object]]:
    placeholders = ", ".join(["%s"] * len(list_ids))
    sql = f"""
        FROM {Subscriber._meta.db_table} s
        WHERE s.status = %s
          AND EXISTS (
              SELECT 1 FROM {Subscription._meta.db_table} sub
              WHERE sub.subscriber_id = s.id AND sub.status = %s AND sub.mailing_list_id IN ({placeholders})
          )
          AND NOT EXISTS (SELECT 1 FROM {Suppression._meta.db_table} x WHERE x.email = s.email)
    """  # noqa: S608 - table names come from models, values are parameters
    return sql, [Subscriber.Status.ACTIVE, Subscription.Status.ACTIVE, *list_ids]


def audience_count(*, list_ids: list[int]) -> int:
    if not list_ids:
        return 0
    where, params = _audience_sql(list_ids)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) {where}", params)  # noqa: S608
        return int(cursor.fetchone()[0])


def audience_materialize(*, mailing: Mailing, list_ids: list[int]) -> int:
    """Insert the Messages of `mailing` for the lists' audience; returns how many rows were inserted."""
    if not list_ids:
        return 0
    where, params = _audience_sql(list_ids)
    now = timezone.now()
    vendor = connection.vendor
    if vendor == "postgresql":
        context = "jsonb_build_object('email', s.email, 'name', s.name, 'attributes', s.attributes)"
        insert, conflict = "INSERT INTO", "ON CONFLICT (mailing_id, to_email) DO NOTHING"
    else:
        context = "json_object('email', s.email, 'name', s.name, 'attributes', json(s.attributes))"
        insert, conflict = "INSERT OR IGNORE INTO", ""
    table = Message._meta.db_table
    sql = f"""
        {insert} {table}
            (mailing_id, to_email, context, status, esp_message_id, attempts, last_error, created_at, updated_at)
        SELECT %s, s.email, {context}, %s, '', 0, '', %s, %s
        {where}
        ORDER BY s.id
        {conflict}
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [mailing.pk, Message.Status.QUEUED, now, now, *params])
        return cursor.rowcount
