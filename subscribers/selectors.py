"""Reads over subscribers: who a campaign reaches, what a segment holds."""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet

from subscribers.models import Segment, Subscriber, Subscription
from subscribers.segments import segment_filter


def audience_subscribers(
    *, list_ids: list[int], segment_rules: Any = None, exclude_list_ids: list[int] | None = None
) -> QuerySet[Subscriber]:
    """The subscribers a campaign may reach, before the suppression list is applied.

    - Always: the subscriber is active and holds an active (confirmed) subscription, to one of `list_ids` when
      lists are named, or to any list when only a segment is: a segment never reaches someone who has not
      given consent to some list, nor anyone still pending confirmation.
    - With a segment: only those its rules match.
    - Minus everyone on an exclusion list, whatever the state of that subscription: an exclusion list names
      people (customers, staff, a competitor's domain), and leaving it must not put them back in.
    """
    consent = Subscription.objects.filter(subscriber=OuterRef("pk"), status=Subscription.Status.ACTIVE)
    if list_ids:
        consent = consent.filter(mailing_list_id__in=list_ids)
    query = Subscriber.objects.filter(Q(status=Subscriber.Status.ACTIVE) & Q(Exists(consent)))
    if segment_rules is not None:
        query = query.filter(segment_filter(segment_rules))
    if exclude_list_ids:
        excluded = Subscription.objects.filter(subscriber=OuterRef("pk"), mailing_list_id__in=exclude_list_ids)
        query = query.filter(~Exists(excluded))
    return query.order_by()


def segment_count(*, segment: Segment) -> int:
    """The live count: every subscriber the rules match, whatever their consent (the campaign applies that)."""
    return Subscriber.objects.filter(segment_filter(segment.rules)).order_by().count()
