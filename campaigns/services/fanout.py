"""The audience fan-out: one INSERT ... SELECT creates a Message per eligible recipient.

Eligible: in the campaign's audience (subscribers.selectors.audience_subscribers: lists and/or a segment,
minus exclusion lists, consent required) and not on the suppression list. The unique (mailing, address)
constraint makes running it twice a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.utils import timezone

from delivery.models import Mailing, Message, Suppression
from subscribers.models import Subscriber
from subscribers.selectors import audience_subscribers


@dataclass(frozen=True)
class Audience:
    """Who a campaign is aimed at: lists and/or a segment's rules, minus exclusion lists."""

    list_ids: list[int] = field(default_factory=list)
    segment_rules: Any = None
    exclude_list_ids: list[int] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.list_ids and self.segment_rules is None


def _audience_sql(audience: Audience) -> tuple[str, list[Any]]:
    """FROM/WHERE over subscribers `s` for the audience (subscribers.selectors decides who is in it)."""
    query = audience_subscribers(
        list_ids=audience.list_ids, segment_rules=audience.segment_rules, exclude_list_ids=audience.exclude_list_ids
    ).values("pk")
    inner, params = query.query.sql_with_params()
    return f"FROM {Subscriber._meta.db_table} s WHERE s.id IN ({inner})", list(params)  # noqa: S608


_SUPPRESSED = f"EXISTS (SELECT 1 FROM {Suppression._meta.db_table} x WHERE x.email = s.email)"  # noqa: S608


def audience_count(*, audience: Audience) -> int:
    """How many of the audience can be sent to (the suppressed left out)."""
    if audience.is_empty:
        return 0
    where, params = _audience_sql(audience)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) {where} AND NOT {_SUPPRESSED}", params)  # noqa: S608
        return int(cursor.fetchone()[0])


def audience_materialize(*, mailing: Mailing, audience: Audience) -> int:
    """Insert the Messages of `mailing` for the lists' audience; returns how many rows were inserted.

    Messages are numbered most engaged first (subscribers.engagement: ordering by the anchor is ordering by
    the current score), and workers claim in that order: while a provider warms up and its daily cap cuts a
    send short, the people most likely to open get the mail, which is what builds the sender's reputation.

    A suppressed address gets a Message that is `suppressed` from the start: it is never sent, and the
    campaign's numbers show why it was left out.
    """
    if audience.is_empty:
        return 0
    where, params = _audience_sql(audience)
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
        ORDER BY s.score_anchor DESC NULLS LAST, s.id
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
