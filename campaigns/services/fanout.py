"""The audience fan-out: one INSERT ... SELECT creates a Message per eligible recipient.

Eligible: an active subscriber with an active subscription to one of the campaign's lists, whose address is
not on the suppression list. The unique (mailing, address) constraint makes running it twice a no-op.
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.utils import timezone

from delivery.models import Mailing, Message, Suppression
from subscribers.models import Subscriber, Subscription


def _audience_sql(list_ids: list[int]) -> tuple[str, list[Any]]:
    """The campaign's audience: active subscribers with an active subscription to one of the lists."""
    placeholders = ", ".join(["%s"] * len(list_ids))
    sql = f"""
        FROM {Subscriber._meta.db_table} s
        WHERE s.status = %s
          AND EXISTS (
              SELECT 1 FROM {Subscription._meta.db_table} sub
              WHERE sub.subscriber_id = s.id AND sub.status = %s AND sub.mailing_list_id IN ({placeholders})
          )
    """  # noqa: S608 - table names come from models, values are parameters
    return sql, [Subscriber.Status.ACTIVE, Subscription.Status.ACTIVE, *list_ids]


_SUPPRESSED = f"EXISTS (SELECT 1 FROM {Suppression._meta.db_table} x WHERE x.email = s.email)"  # noqa: S608


def audience_count(*, list_ids: list[int]) -> int:
    """How many of the audience can be sent to (the suppressed left out)."""
    if not list_ids:
        return 0
    where, params = _audience_sql(list_ids)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) {where} AND NOT {_SUPPRESSED}", params)  # noqa: S608
        return int(cursor.fetchone()[0])


def audience_materialize(*, mailing: Mailing, list_ids: list[int]) -> int:
    """Insert the Messages of `mailing` for the lists' audience; returns how many rows were inserted.

    A suppressed address gets a Message that is `suppressed` from the start: it is never sent, and the
    campaign's numbers show why it was left out.
    """
    if not list_ids:
        return 0
    where, params = _audience_sql(list_ids)
    now = timezone.now()
    if connection.vendor == "postgresql":
        context = "jsonb_build_object('email', s.email, 'name', s.name, 'attributes', s.attributes)"
    else:
        context = "json_object('email', s.email, 'name', s.name, 'attributes', json(s.attributes))"
    table = Message._meta.db_table
    sql = f"""
        INSERT INTO {table}
            (mailing_id, to_email, context, status, esp_message_id, attempts, last_error, created_at, updated_at)
        SELECT %s, s.email, {context},
               CASE WHEN {_SUPPRESSED} THEN %s ELSE %s END,
               '',
               0,
               CASE WHEN {_SUPPRESSED} THEN %s ELSE '' END,
               %s, %s
        {where}
        ORDER BY s.id
        ON CONFLICT (mailing_id, to_email) DO NOTHING
    """  # noqa: S608
    values: list[Any] = [
        mailing.pk,
        Message.Status.SUPPRESSED,
        Message.Status.QUEUED,
        "address is on the suppression list",
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, now, now, *params])
        return cursor.rowcount
