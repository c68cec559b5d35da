"""Segment doors: the admin (rules checked on save with the path, live count, sample, CSV export) and the
export command."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.core.management import CommandError, call_command

from subscribers.admin.segments import rules_format
from subscribers.models import Segment
from tests.factories import MailingListFactory, SubscriberFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def test_a_segment_is_saved_from_the_admin_and_its_page_counts_live(admin_client):
    SubscriberFactory(email="ann@shop.example", attributes={"plan": "pro"})
    SubscriberFactory(email="bob@shop.example", attributes={"plan": "free"})
    rules = {"all": [{"field": "domain", "op": "eq", "value": "shop.example"}]}

    response = admin_client.post(
        "/admin/subscribers/segment/add/", {"name": "Shop", "description": "", "rules": json.dumps(rules)}
    )

    assert response.status_code == 302
    segment = Segment.objects.get()
    assert segment.rules == rules
    page = admin_client.get(f"/admin/subscribers/segment/{segment.pk}/change/").content.decode()
    assert "2 subscribers" in page
    assert "<li>ann@shop.example</li><li>bob@shop.example</li>" in page


def test_an_invalid_rule_is_refused_on_the_form_with_its_path_and_nothing_is_saved(admin_client):
    rules = {
        "all": [{"field": "domain", "op": "eq", "value": "shop.example"}, {"field": "age", "op": "gt", "value": 3}]
    }

    response = admin_client.post(
        "/admin/subscribers/segment/add/", {"name": "Bad", "description": "", "rules": json.dumps(rules)}
    )

    assert response.status_code == 200
    assert "Segment rule rules.all[1].field: unknown field &#x27;age&#x27;" in response.content.decode()
    assert not Segment.objects.exists()


def test_the_export_action_streams_the_matching_subscribers(admin_client):
    SubscriberFactory(email="ann@shop.example", name="Ann", attributes={"plan": "pro"})
    SubscriberFactory(email="bob@other.example", name="Bob")
    segment = Segment.objects.create(name="Pro", rules={"field": "attribute.plan", "op": "eq", "value": "pro"})

    response = admin_client.post(
        "/admin/subscribers/segment/", {"action": "export_matching_csv", "_selected_action": [segment.pk]}
    )

    body = b"".join(response.streaming_content).decode()
    lines = body.splitlines()
    assert lines[0].startswith("email,name,status")
    assert len(lines) == 2 and lines[1].startswith("ann@shop.example,Ann,active")


def test_the_export_command_writes_a_segment_within_a_list(tmp_path):
    ann = SubscriberFactory(email="ann@shop.example", attributes={"plan": "pro"})
    SubscriberFactory(email="bob@shop.example", attributes={"plan": "pro"})  # matches, but not on the list
    SubscriptionFactory(subscriber=ann, mailing_list=MailingListFactory(slug="news"))
    Segment.objects.create(name="Pro", rules={"field": "attribute.plan", "op": "eq", "value": "pro"})
    output, stderr = tmp_path / "pro.csv", io.StringIO()

    call_command("export_subscribers", "--segment", "Pro", "--list", "news", "--output", str(output), stderr=stderr)

    assert [row[0] for row in csv.reader(output.open(encoding="utf-8"))] == ["email", "ann@shop.example"]
    assert stderr.getvalue() == f"Exported segment 'Pro' of list 'news' to {output}.\n"


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("Nope", "No segment named 'Nope'."),
        ("Stale", "Segment 'Stale': Segment rule rules.value: no list with slug 'gone'."),
    ],
)
def test_the_export_command_refuses_an_unknown_or_broken_segment(name, error, tmp_path):
    Segment.objects.create(name="Stale", rules={"field": "list", "op": "in", "value": ["gone"]})
    output = tmp_path / "out.csv"

    with pytest.raises(CommandError) as caught:
        call_command("export_subscribers", "--segment", name, "--output", str(output))

    assert str(caught.value) == error
    assert not output.exists()


def test_the_rule_is_shown_one_condition_per_line_and_reads_back_the_same():
    rules = {
        "all": [
            {"field": "list", "op": "in", "value": ["news"]},
            {"any": [{"field": "score", "op": "gte", "value": 5}, {"not": {"field": "opened", "op": "never"}}]},
        ]
    }

    text = rules_format(rules)

    assert text.splitlines()[1] == '  {"field": "list", "op": "in", "value": ["news"]},'
    assert json.loads(text) == rules
