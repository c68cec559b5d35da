"""The segment rule language: each field and operator, groups, and errors that point at the rule."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from subscribers.engagement import anchor_after
from subscribers.models import Segment, Subscriber, Subscription
from subscribers.segments import SegmentRuleInvalid, segment_subscribers
from subscribers.selectors import audience_subscribers, segment_count
from tests.factories import MailingListFactory, SubscriberFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def _emails(rules) -> list[str]:
    return sorted(segment_subscribers(rules).values_list("email", flat=True))


@pytest.fixture
def people():
    now = timezone.now()
    ann = SubscriberFactory(
        email="ann@shop.example", name="Ann Lee", attributes={"plan": "Pro", "age": "34", "city": "Oslo"}
    )
    bob = SubscriberFactory(email="bob@mail.example", name="Bob", attributes={"plan": "free", "age": "19"})
    cy = SubscriberFactory(email="cy@shop.example", name="Cy", attributes={"age": "unknown", "since": "2024-05-01"})
    dee = SubscriberFactory(email="dee@other.example", name="", attributes={}, status=Subscriber.Status.UNSUBSCRIBED)
    ann.last_open_at = now - timedelta(days=3)
    ann.last_click_at = now - timedelta(days=3)
    ann.score_anchor = anchor_after(None, points=80, at=now)
    ann.sent_count = 12
    bob.last_open_at = now - timedelta(days=60)
    bob.score_anchor = anchor_after(None, points=40, at=now - timedelta(days=60))  # 40 halved twice: 10
    bob.sent_count = 3
    for person in (ann, bob):
        person.save()
    Subscriber.objects.filter(pk=cy.pk).update(created_at=now - timedelta(days=400))
    return {"ann": ann, "bob": bob, "cy": cy, "dee": dee}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"field": "email", "op": "eq", "value": "ANN@shop.example"}, ["ann@shop.example"]),
        ({"field": "email", "op": "contains", "value": "@SHOP"}, ["ann@shop.example", "cy@shop.example"]),
        ({"field": "email", "op": "starts_with", "value": "b"}, ["bob@mail.example"]),
        (
            {"field": "email", "op": "in", "value": ["bob@mail.example", "Dee@Other.example"]},
            ["bob@mail.example", "dee@other.example"],
        ),
        ({"field": "domain", "op": "eq", "value": "shop.example"}, ["ann@shop.example", "cy@shop.example"]),
        ({"field": "domain", "op": "ne", "value": "shop.example"}, ["bob@mail.example", "dee@other.example"]),
        (
            {"field": "domain", "op": "in", "value": ["mail.example", "other.example"]},
            ["bob@mail.example", "dee@other.example"],
        ),
        (
            {"field": "domain", "op": "ends_with", "value": ".example"},
            ["ann@shop.example", "bob@mail.example", "cy@shop.example", "dee@other.example"],
        ),
        ({"field": "domain", "op": "starts_with", "value": "sh"}, ["ann@shop.example", "cy@shop.example"]),
        ({"field": "name", "op": "contains", "value": "lee"}, ["ann@shop.example"]),
        ({"field": "status", "op": "eq", "value": "unsubscribed"}, ["dee@other.example"]),
        (
            {"field": "status", "op": "in", "value": ["active"]},
            ["ann@shop.example", "bob@mail.example", "cy@shop.example"],
        ),
        ({"field": "attribute.plan", "op": "eq", "value": "pro"}, ["ann@shop.example"]),
        # ne includes those without the attribute at all
        (
            {"field": "attribute.plan", "op": "ne", "value": "pro"},
            ["bob@mail.example", "cy@shop.example", "dee@other.example"],
        ),
        ({"field": "attribute.plan", "op": "in", "value": ["FREE", "gold"]}, ["bob@mail.example"]),
        (
            {"field": "attribute.plan", "op": "not_in", "value": ["free"]},
            ["ann@shop.example", "cy@shop.example", "dee@other.example"],
        ),
        ({"field": "attribute.city", "op": "starts_with", "value": "os"}, ["ann@shop.example"]),
        ({"field": "attribute.plan", "op": "exists", "value": True}, ["ann@shop.example", "bob@mail.example"]),
        ({"field": "attribute.plan", "op": "exists", "value": False}, ["cy@shop.example", "dee@other.example"]),
        # numbers compare numerically ("19" < "34" < "100"), and "unknown" is never a number
        ({"field": "attribute.age", "op": "gt", "value": 20}, ["ann@shop.example"]),
        ({"field": "attribute.age", "op": "lte", "value": 19}, ["bob@mail.example"]),
        ({"field": "attribute.age", "op": "lt", "value": 100}, ["ann@shop.example", "bob@mail.example"]),
        # text compares as text: ISO dates order correctly
        ({"field": "attribute.since", "op": "gte", "value": "2024-01-01"}, ["cy@shop.example"]),
        ({"field": "created", "op": "before", "value": "2026-01-01"}, ["cy@shop.example"]),
        (
            {"field": "created", "op": "within_days", "value": 30},
            ["ann@shop.example", "bob@mail.example", "dee@other.example"],
        ),
        ({"field": "opened", "op": "within_days", "value": 30}, ["ann@shop.example"]),
        (
            {"field": "opened", "op": "not_within_days", "value": 30},
            ["bob@mail.example", "cy@shop.example", "dee@other.example"],
        ),
        ({"field": "opened", "op": "never"}, ["cy@shop.example", "dee@other.example"]),
        ({"field": "clicked", "op": "within_days", "value": 7}, ["ann@shop.example"]),
        ({"field": "clicked", "op": "never"}, ["bob@mail.example", "cy@shop.example", "dee@other.example"]),
        ({"field": "score", "op": "gte", "value": 80}, ["ann@shop.example"]),
        ({"field": "score", "op": "gte", "value": 10}, ["ann@shop.example", "bob@mail.example"]),
        ({"field": "score", "op": "lt", "value": 10}, ["cy@shop.example", "dee@other.example"]),
        (
            {"field": "score", "op": "gte", "value": 0},
            ["ann@shop.example", "bob@mail.example", "cy@shop.example", "dee@other.example"],
        ),
        ({"field": "sent", "op": "gte", "value": 3}, ["ann@shop.example", "bob@mail.example"]),
    ],
)
def test_each_condition_selects_exactly_its_subscribers(people, rule, expected):
    assert _emails(rule) == expected


def test_groups_nest_and_not_negates(people):
    rules = {
        "any": [
            {
                "all": [
                    {"field": "domain", "op": "eq", "value": "shop.example"},
                    {"not": {"field": "opened", "op": "never"}},
                ]
            },
            {"field": "attribute.plan", "op": "eq", "value": "free"},
        ]
    }
    assert _emails(rules) == ["ann@shop.example", "bob@mail.example"]
    assert _emails({"not": rules}) == ["cy@shop.example", "dee@other.example"]


def test_list_membership_counts_only_active_subscriptions(people):
    news, other = MailingListFactory(slug="news"), MailingListFactory(slug="other")
    SubscriptionFactory(subscriber=people["ann"], mailing_list=news)
    SubscriptionFactory(subscriber=people["bob"], mailing_list=news, status=Subscription.Status.PENDING)
    SubscriptionFactory(subscriber=people["cy"], mailing_list=other)

    assert _emails({"field": "list", "op": "in", "value": ["news"]}) == ["ann@shop.example"]
    assert _emails({"field": "list", "op": "in", "value": ["news", "other"]}) == ["ann@shop.example", "cy@shop.example"]
    assert _emails({"field": "list", "op": "not_in", "value": ["news"]}) == [
        "bob@mail.example",
        "cy@shop.example",
        "dee@other.example",
    ]


def test_the_rule_compiles_to_one_query(people, django_assert_num_queries):
    MailingListFactory(slug="news")
    rules = {
        "all": [
            {"field": "attribute.plan", "op": "eq", "value": "pro"},
            {"field": "opened", "op": "within_days", "value": 30},
            {"field": "list", "op": "not_in", "value": ["news"]},
        ]
    }
    query = segment_subscribers(rules)  # the list slug is looked up here, once
    with django_assert_num_queries(1):
        assert query.count() == 1


def test_wildcards_in_values_are_matched_literally(people):
    SubscriberFactory(email="under_score@x.example", attributes={"code": "50%"})
    assert _emails({"field": "email", "op": "contains", "value": "_"}) == ["under_score@x.example"]
    assert _emails({"field": "attribute.code", "op": "eq", "value": "50%"}) == ["under_score@x.example"]
    assert _emails({"field": "attribute.code", "op": "eq", "value": "5%"}) == []


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([], "Segment rule rules: expected an object, found []."),
        ({"all": []}, "Segment rule rules.all: expected a non-empty list of rules."),
        (
            {"all": [{"field": "email", "op": "eq", "value": "a"}], "any": []},
            "Segment rule rules: a group has one key ('all'); also found ['any'].",
        ),
        (
            {"all": [{"field": "colour", "op": "eq", "value": "red"}]},
            "Segment rule rules.all[0].field: unknown field 'colour'; expected one of email, domain, name, status, "
            "list, attribute.<key>, created, opened, clicked, score, sent.",
        ),
        (
            {
                "all": [
                    {"field": "email", "op": "eq", "value": "a"},
                    {"any": [{"field": "email", "op": "gt", "value": 1}]},
                ]
            },
            "Segment rule rules.all[1].any[0].op: 'gt' does not apply to email; use one of contains, ends_with, "
            "eq, in, ne, not_in, starts_with.",
        ),
        ({"field": "email", "op": "eq"}, "Segment rule rules.value: missing."),
        ({"field": "email", "op": "eq", "value": 5}, "Segment rule rules.value: expected text, found 5."),
        (
            {"field": "email", "op": "in", "value": "a@b.c"},
            "Segment rule rules.value: expected a non-empty list, found 'a@b.c'.",
        ),
        (
            {"field": "status", "op": "eq", "value": "gone"},
            "Segment rule rules.value: unknown status 'gone'; use one of active, cleaned, unsubscribed.",
        ),
        ({"field": "list", "op": "in", "value": ["nope"]}, "Segment rule rules.value: no list with slug 'nope'."),
        (
            {"field": "created", "op": "before", "value": "last week"},
            "Segment rule rules.value: expected an ISO date such as 2026-01-31, found 'last week'.",
        ),
        (
            {"field": "opened", "op": "within_days", "value": 0},
            "Segment rule rules.value: expected a number of days from 1 to 36500, found 0.",
        ),
        (
            {"field": "score", "op": "gte", "value": 101},
            "Segment rule rules.value: a score is a number from 0 to 100, found 101.",
        ),
        (
            {"field": "attribute.plan", "op": "exists", "value": "yes"},
            "Segment rule rules.value: exists takes true or false, found 'yes'.",
        ),
        (
            {"field": "attribute.age", "op": "gt", "value": [1]},
            "Segment rule rules.value: gt takes a number or a text, found [1].",
        ),
        (
            {"field": "attribute", "op": "eq", "value": "x"},
            "Segment rule rules.field: unknown field 'attribute'; expected one of email, domain, name, status, list, "
            "attribute.<key>, created, opened, clicked, score, sent.",
        ),
        (
            {"field": "email", "op": "eq", "value": "a", "extra": 1},
            "Segment rule rules: unknown key(s) ['extra']; a condition has field, op and value.",
        ),
        (
            {
                "not": {
                    "not": {
                        "not": {
                            "not": {
                                "not": {"not": {"not": {"not": {"not": {"field": "name", "op": "eq", "value": "x"}}}}}
                            }
                        }
                    }
                }
            },
            "Segment rule rules.not.not.not.not.not.not.not.not.not: groups nest deeper than 8 levels.",
        ),
    ],
)
def test_an_invalid_rule_is_refused_with_its_path(rules, message):
    with pytest.raises(SegmentRuleInvalid) as caught:
        segment_subscribers(rules)
    assert caught.value.message == message


def test_a_saved_segment_validates_its_rules_and_counts_live(people):
    segment = Segment(name="Shop", rules={"field": "domain", "op": "eq", "value": "shop"})
    segment.full_clean()  # a valid rule, even if it matches nobody
    segment.save()
    assert segment_count(segment=segment) == 0
    segment.rules = {"field": "domain", "op": "eq", "value": "shop.example"}
    segment.save()
    assert segment_count(segment=segment) == 2
    SubscriberFactory(email="new@shop.example")
    assert segment_count(segment=segment) == 3

    segment.rules = {"field": "domain", "op": "like", "value": "x"}
    with pytest.raises(ValidationError) as caught:
        segment.full_clean()
    assert caught.value.message_dict["rules"] == [
        "Segment rule rules.op: 'like' does not apply to domain; use one of contains, ends_with, eq, in, ne, "
        "not_in, starts_with."
    ]


def test_the_audience_needs_consent_and_leaves_out_exclusion_lists(people):
    news, staff = MailingListFactory(slug="news"), MailingListFactory(slug="staff")
    for person in ("ann", "bob", "cy", "dee"):
        SubscriptionFactory(subscriber=people[person], mailing_list=news)
    Subscription.objects.filter(subscriber=people["cy"]).update(status=Subscription.Status.PENDING)
    SubscriptionFactory(
        subscriber=people["bob"], mailing_list=staff, status=Subscription.Status.UNSUBSCRIBED
    )  # left the exclusion list: still excluded
    SubscriberFactory(email="nolist@shop.example")  # matches the segment, but never subscribed to anything
    shop = {"field": "domain", "op": "ends_with", "value": "example"}

    def emails(**kwargs):
        return sorted(audience_subscribers(**kwargs).values_list("email", flat=True))

    assert emails(list_ids=[news.pk]) == ["ann@shop.example", "bob@mail.example"]  # cy pending, dee unsubscribed
    assert emails(list_ids=[news.pk], exclude_list_ids=[staff.pk]) == ["ann@shop.example"]
    assert emails(list_ids=[], segment_rules={"field": "attribute.plan", "op": "eq", "value": "free"}) == [
        "bob@mail.example"
    ]
    assert emails(list_ids=[], segment_rules=shop) == ["ann@shop.example", "bob@mail.example"]
