import csv
import io
from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from subscribers.models import Subscriber, Subscription
from subscribers.services import subscribers_export_csv, subscribers_export_rows
from tests.factories import MailingListFactory, SubscriberFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

CREATED = datetime(2025, 1, 31, 9, 30, 15, 123456, tzinfo=UTC)
CREATED_CELL = "2025-01-31T09:30:15Z"


def parsed(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def export_text(**selection) -> str:
    return "".join(subscribers_export_csv(**selection))


@pytest.fixture
def news():
    """Ann and Bob on the news list (Bob unsubscribed from it, but active on another list); Carl on no list."""
    news = MailingListFactory(slug="news")
    ann = SubscriptionFactory(
        mailing_list=news, subscriber__email="ann@example.org", subscriber__name="Ann",
        subscriber__attributes={"city": "Oslo", "plan": "pro"},
    ).subscriber  # fmt: skip
    bob = SubscriptionFactory(
        mailing_list=news, status=Subscription.Status.UNSUBSCRIBED,
        subscriber__email="bob@example.org", subscriber__name="", subscriber__attributes={"age": 42},
    ).subscriber  # fmt: skip
    SubscriptionFactory(subscriber=bob)
    carl = SubscriberFactory(email="carl@example.org", name="Carl", status=Subscriber.Status.CLEANED)
    Subscriber.objects.update(created_at=CREATED)
    return {"list": news, "ann": ann, "bob": bob, "carl": carl}


def test_a_lists_export_has_its_members_once_each_with_their_status_on_that_list(news):
    rows = list(subscribers_export_rows(mailing_list=news["list"]))

    assert rows == [
        ["email", "name", "status", "list_status", "created_at", "age", "city", "plan"],
        ("ann@example.org", "Ann", "active", "active", CREATED_CELL, None, "Oslo", "pro"),
        ("bob@example.org", "", "active", "unsubscribed", CREATED_CELL, "42", None, None),
    ]


def test_everyone_is_exported_without_a_list_status_column(news):
    rows = parsed(export_text())

    assert rows == [
        ["email", "name", "status", "created_at", "age", "city", "plan"],
        ["ann@example.org", "Ann", "active", CREATED_CELL, "", "Oslo", "pro"],
        ["bob@example.org", "", "active", CREATED_CELL, "42", "", ""],
        ["carl@example.org", "Carl", "cleaned", CREATED_CELL, "", "", ""],
    ]


def test_attribute_columns_are_the_sorted_union_of_keys_and_values_other_than_strings_are_json():
    SubscriberFactory(email="a@example.org", attributes={"zip": "0150", "city": "Kraków", "2024": "yes"})
    SubscriberFactory(
        email="b@example.org",
        attributes={"age": 42, "vip": True, "score": 1.5, "tags": ["x", "y"], "note": None, "city": ""},
    )
    SubscriberFactory(email="c@example.org", attributes={})
    SubscriberFactory(email="d@example.org", attributes=["not", "an", "object"])
    tags = {"postgresql": '["x", "y"]', "sqlite": '["x","y"]'}[connection.vendor]  # each database's JSON text

    rows = parsed(export_text())

    assert rows[0][4:] == ["2024", "age", "city", "note", "score", "tags", "vip", "zip"]
    assert [row[0:1] + row[4:] for row in rows[1:]] == [
        ["a@example.org", "yes", "", "Kraków", "", "", "", "", "0150"],
        ["b@example.org", "", "42", "", "", "1.5", tags, "true", ""],
        ["c@example.org", "", "", "", "", "", "", "", ""],
        ["d@example.org", "", "", "", "", "", "", "", ""],
    ]


def test_cells_that_start_like_a_formula_are_quoted_and_others_are_left_alone():
    SubscriberFactory(
        email="-x@example.org", name="=1+2",
        attributes={"a": "+1", "b": "-1", "c": "@SUM(A1)", "d": "\tx", "e": "\rx", "f": "a-b", "g": -5, "=h": "ok"},
    )  # fmt: skip

    rows = parsed(export_text())

    assert rows[0] == ["email", "name", "status", "created_at", "'=h", "a", "b", "c", "d", "e", "f", "g"]
    assert rows[1][:2] == ["'-x@example.org", "'=1+2"]
    assert rows[1][4:] == ["ok", "'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx", "a-b", "'-5"]


def test_the_csv_text_and_the_rows_hold_the_same_values(news):
    SubscriberFactory(email="q@example.org", name='Quote "Q", comma\nnew line', attributes={"city": "a\rb"})
    SubscriptionFactory(mailing_list=news["list"], subscriber=Subscriber.objects.get(email="q@example.org"))

    for selection in ({}, {"mailing_list": news["list"]}):
        rows = [[cell or "" for cell in row] for row in subscribers_export_rows(**selection)]
        assert parsed(export_text(**selection)) == rows


def test_the_admins_selection_narrows_the_export(news):
    selected = Subscriber.objects.filter(email__in=["bob@example.org", "carl@example.org"]).order_by("-email")

    rows = parsed(export_text(subscribers=selected))

    assert [row[0] for row in rows] == ["email", "bob@example.org", "carl@example.org"]
    assert rows[0] == ["email", "name", "status", "created_at", "age"]


def test_the_command_writes_a_file_in_utf8_that_reads_back_the_same(news, tmp_path):
    Subscriber.objects.filter(pk=news["ann"].pk).update(name="Zoë Ødegård 東京", attributes={"city": "Kraków"})
    output = tmp_path / "news.csv"
    stderr = io.StringIO()

    call_command("export_subscribers", "--list", "news", "--output", str(output), stderr=stderr)

    assert parsed(output.read_text(encoding="utf-8")) == [
        ["email", "name", "status", "list_status", "created_at", "age", "city"],
        ["ann@example.org", "Zoë Ødegård 東京", "active", "active", CREATED_CELL, "", "Kraków"],
        ["bob@example.org", "", "active", "unsubscribed", CREATED_CELL, "42", ""],
    ]
    assert stderr.getvalue() == f"Exported list 'news' to {output}.\n"


def test_the_command_writes_everyone_to_stdout(news):
    stdout = io.StringIO()

    call_command("export_subscribers", stdout=stdout)

    rows = parsed(stdout.getvalue())
    assert rows[0] == ["email", "name", "status", "created_at", "age", "city", "plan"]
    assert [row[0] for row in rows[1:]] == ["ann@example.org", "bob@example.org", "carl@example.org"]


def test_an_unknown_list_slug_is_a_clear_error_and_writes_nothing(tmp_path):
    output = tmp_path / "out.csv"

    with pytest.raises(CommandError, match="^No mailing list with slug 'nope'.$"):
        call_command("export_subscribers", "--list", "nope", "--output", str(output))

    assert not output.exists()


@pytest.mark.django_db(transaction=True)
def test_the_command_outside_any_transaction_exports_one_consistent_snapshot(tmp_path):
    # No test transaction around it: on PostgreSQL the export opens its own repeatable-read one.
    news = MailingListFactory(slug="news")
    SubscriptionFactory(mailing_list=news, subscriber__email="ann@example.org", subscriber__attributes={"k": 1})
    output = tmp_path / "news.csv"

    call_command("export_subscribers", "--list", "news", "--output", str(output), stderr=io.StringIO())

    rows = parsed(output.read_text(encoding="utf-8"))
    assert [rows[0][-1], rows[1][0], rows[1][-1]] == ["k", "ann@example.org", "1"]


def test_the_list_admin_action_streams_the_lists_csv(news, admin_client):
    response = admin_client.post(
        "/admin/subscribers/mailinglist/",
        {"action": "export_subscribers_csv", "_selected_action": [news["list"].pk]},
    )

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    filename = f"subscribers-news-{timezone.now():%Y%m%d}.csv"
    assert response["Content-Disposition"] == f'attachment; filename="{filename}"'
    rows = parsed(b"".join(response.streaming_content).decode("utf-8"))
    assert rows[0] == ["email", "name", "status", "list_status", "created_at", "age", "city", "plan"]
    assert [row[0] for row in rows[1:]] == ["ann@example.org", "bob@example.org"]


def test_the_list_admin_action_wants_exactly_one_list(news, admin_client):
    other = MailingListFactory()

    response = admin_client.post(
        "/admin/subscribers/mailinglist/",
        {"action": "export_subscribers_csv", "_selected_action": [news["list"].pk, other.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert "Choose exactly one list to export." in response.content.decode()


def test_the_subscriber_admin_action_streams_the_selected_subscribers(news, admin_client):
    response = admin_client.post(
        "/admin/subscribers/subscriber/",
        {"action": "export_selected_csv", "_selected_action": [news["ann"].pk, news["carl"].pk]},
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="subscribers-selected-{timezone.now():%Y%m%d}.csv"'
    rows = parsed(b"".join(response.streaming_content).decode("utf-8"))
    assert rows == [
        ["email", "name", "status", "created_at", "city", "plan"],
        ["ann@example.org", "Ann", "active", CREATED_CELL, "Oslo", "pro"],
        ["carl@example.org", "Carl", "cleaned", CREATED_CELL, "", ""],
    ]


def test_the_export_takes_as_many_queries_for_300_subscribers_as_for_10(django_assert_num_queries):
    news = MailingListFactory()
    counts = []
    for members in (10, 300):
        SubscriptionFactory.create_batch(members - news.subscriptions.count(), mailing_list=news,
                                         subscriber__attributes={"k": 1})  # fmt: skip

        with django_assert_num_queries(2):  # the attribute keys, then the rows: one cursor, fetched in chunks
            rows = list(subscribers_export_rows(mailing_list=news, chunk_size=100))
        with CaptureQueriesContext(connection) as queries:
            text = export_text(mailing_list=news)

        assert len(rows) == len(parsed(text)) == members + 1
        counts.append(len(queries))
    # PostgreSQL: savepoint, keys, release; its COPY does not go through Django's query log.
    assert counts == [{"postgresql": 3, "sqlite": 2}[connection.vendor]] * 2
