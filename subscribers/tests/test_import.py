"""CSV import: the service and its command, with the bad inputs a marketer's file brings."""

import csv
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from core.addresses import address_hash
from delivery.models import Suppression
from subscribers.models import MailingList, Subscriber, Subscription
from subscribers.services.importing import ImportFileInvalid, ImportOptions, subscribers_import
from tests.factories import MailingListFactory, SubscriberFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def news() -> MailingList:
    return MailingListFactory(slug="news")


def write(tmp_path: Path, content: str | bytes, name: str = "people.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def run(path: Path, mailing_list: MailingList, **options):
    return subscribers_import(
        path=path, mailing_list=mailing_list, options=ImportOptions(**options), errors_path=path.with_suffix(".err")
    )


def errors(path: Path) -> list[dict]:
    with path.with_suffix(".err").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def subscribers() -> dict[str, tuple[str, dict, str]]:
    return {s.email: (s.name, s.attributes, s.status) for s in Subscriber.objects.all()}


def test_a_plain_file_creates_subscribers_subscribed_to_the_list(tmp_path, news):
    path = write(tmp_path, "email,name,city,plan\nann@example.org,Ann,Oslo,pro\nbob@example.org,Bob,,free\n")

    summary = run(path, news)

    assert (summary.rows, summary.created, summary.updated, summary.unchanged, summary.invalid) == (2, 2, 0, 0, 0)
    assert summary.subscribed == 2
    assert subscribers() == {
        "ann@example.org": ("Ann", {"city": "Oslo", "plan": "pro"}, "active"),
        "bob@example.org": ("Bob", {"plan": "free"}, "active"),
    }
    assert set(news.subscriptions.values_list("status", flat=True)) == {Subscription.Status.ACTIVE}


def test_importing_the_same_file_twice_changes_nothing_the_second_time(tmp_path, news):
    path = write(tmp_path, "email,name,city\nann@example.org,Ann,Oslo\nbob@example.org,Bob,Lima\n")
    run(path, news)
    before = {s.email: s.updated_at for s in Subscriber.objects.all()}

    summary = run(path, news)

    assert (summary.created, summary.updated, summary.unchanged, summary.subscribed) == (0, 0, 2, 0)
    assert {s.email: s.updated_at for s in Subscriber.objects.all()} == before


def test_update_merges_attributes_and_keeps_a_name_the_file_leaves_empty(tmp_path, news):
    SubscriberFactory(email="ann@example.org", name="Ann Old", attributes={"city": "Oslo", "vip": "yes"})
    path = write(tmp_path, "email,name,city\nANN@Example.org,,Bergen\n")

    summary = run(path, news)

    assert (summary.created, summary.updated) == (0, 1)
    assert subscribers()["ann@example.org"] == ("Ann Old", {"city": "Bergen", "vip": "yes"}, "active")


def test_skip_existing_leaves_existing_subscribers_alone(tmp_path, news):
    SubscriberFactory(email="ann@example.org", name="Ann", attributes={"city": "Oslo"})
    path = write(tmp_path, "email,name,city\nann@example.org,Changed,Bergen\nnew@example.org,New,Lima\n")

    summary = run(path, news, update_existing=False)

    assert (summary.created, summary.updated, summary.unchanged) == (1, 0, 1)
    assert subscribers()["ann@example.org"][:2] == ("Ann", {"city": "Oslo"})


def test_dry_run_reports_and_changes_nothing(tmp_path, news):
    path = write(tmp_path, "email\nann@example.org\nbob@example.org\n")

    summary = run(path, news, dry_run=True)

    assert (summary.created, summary.subscribed, summary.dry_run) == (2, 2, True)
    assert not Subscriber.objects.exists()


def test_duplicates_and_case_variants_merge_into_one_subscriber(tmp_path, news):
    SubscriberFactory(email="old@example.org", name="Old")
    path = write(
        tmp_path,
        "email,name,city,plan\nann@example.org,Ann,Oslo,\nANN@EXAMPLE.ORG,,,pro\nOld@Example.org,,Lima,\n",
    )

    summary = run(path, news)

    assert (summary.rows, summary.duplicate, summary.created, summary.updated) == (3, 1, 1, 1)
    assert subscribers()["ann@example.org"][:2] == ("Ann", {"city": "Oslo", "plan": "pro"})
    assert Subscriber.objects.count() == 2


def test_invalid_rows_are_reported_with_line_and_reason_and_valid_rows_imported(tmp_path, news):
    rows = ["email,name"] + [f"person{i}@example.org,P{i}" for i in range(18)]
    rows[5] = "not-an-address,Bad"
    rows[12] = "two@@example.org,Bad"
    path = write(tmp_path, "\n".join(rows) + "\n")

    summary = run(path, news)

    assert (summary.rows, summary.created, summary.invalid) == (18, 16, 2)
    reported = errors(path)
    assert [(r["line"], r["email"]) for r in reported] == [("6", "not-an-address"), ("13", "two@@example.org")]
    assert all(r["reason"].startswith("invalid email") for r in reported)


def test_suppressed_addresses_are_imported_but_never_subscribed(tmp_path, news):
    Suppression.objects.create(email="gone@example.org", reason=Suppression.Reason.HARD_BOUNCE)
    path = write(tmp_path, "email\ngone@example.org\nok@example.org\n")

    summary = run(path, news)

    assert (summary.suppressed, summary.subscribed) == (1, 1)
    assert list(news.subscriptions.values_list("subscriber__email", flat=True)) == ["ok@example.org"]


@pytest.mark.parametrize(
    "blank_line",
    [False, True],  # with a blank line, PostgreSQL reads the file row by row (hashes in Python), else COPY (SQL)
)
def test_an_erased_person_is_never_imported_again_and_their_address_is_not_written(tmp_path, news, blank_line):
    Suppression.objects.create(email=None, email_hash=address_hash("gone@example.org"), reason="erased")
    Suppression.objects.create(email="bounced@example.org", reason=Suppression.Reason.HARD_BOUNCE)
    rows = ["email,name", " Gone@Example.org,G", "ok@example.org,Ok", "bounced@example.org,B", "gone@example.org,Again"]
    if blank_line:
        rows.insert(3, "")
    path = write(tmp_path, "\n".join(rows) + "\n")

    summary = run(path, news)

    assert summary.method == ("rows" if blank_line or connection.vendor != "postgresql" else "copy")
    assert (summary.rows, summary.created, summary.invalid, summary.duplicate) == (4, 2, 0, 0)
    assert (summary.suppressed, summary.subscribed) == (2, 1)  # the erased address and the bounced one
    assert set(subscribers()) == {"ok@example.org", "bounced@example.org"}
    assert list(news.subscriptions.values_list("subscriber__email", flat=True)) == ["ok@example.org"]
    lines = [2, 5 + blank_line]
    assert [(int(r["line"]), r["email"]) for r in errors(path)] == [(line, "") for line in lines]
    assert all("erased" in r["reason"] for r in errors(path))
    assert "gone" not in path.with_suffix(".err").read_text().lower()
    assert summary.errors_path == str(path.with_suffix(".err"))


def test_an_erased_person_is_not_imported_by_a_dry_run_either_and_others_are(tmp_path, news):
    Suppression.objects.create(email=None, email_hash=address_hash("gone@example.org"), reason="erased")
    path = write(tmp_path, "email\ngone@example.org\nann@example.org\n")

    summary = run(path, news, dry_run=True)

    assert (summary.created, summary.suppressed, summary.subscribed) == (1, 1, 1)
    assert not Subscriber.objects.exists()


def test_unsubscribed_people_stay_unsubscribed_unless_the_import_says_resubscribe(tmp_path, news):
    left = SubscriptionFactory(mailing_list=news, subscriber__email="left@example.org",
                               status=Subscription.Status.UNSUBSCRIBED)  # fmt: skip
    everything = SubscriberFactory(email="all@example.org", status=Subscriber.Status.UNSUBSCRIBED)
    path = write(tmp_path, "email\nleft@example.org\nall@example.org\n")

    summary = run(path, news)

    left.refresh_from_db()
    everything.refresh_from_db()
    assert (left.status, everything.status, summary.subscribed) == ("unsubscribed", "unsubscribed", 0)

    summary = run(path, news, resubscribe=True)

    left.refresh_from_db()
    everything.refresh_from_db()
    assert (left.status, everything.status) == ("active", "active")
    assert (summary.resubscribed, summary.subscribed) == (1, 1)


def test_semicolons_bom_quoted_newlines_and_a_mapping(tmp_path, news):
    content = '\ufeffE-Mail;Full name;Notes\r\nann@example.org;"Ann; Smith";"line one\nline two"\r\n'
    path = write(tmp_path, content)

    summary = run(path, news, column_map={"E-Mail": "email", "Full name": "name"})

    assert summary.created == 1
    assert subscribers()["ann@example.org"][:2] == ("Ann; Smith", {"Notes": "line one\nline two"})


def test_latin1_on_request(tmp_path, news):
    path = write(tmp_path, "email\tname\nzoe@example.org\tZo\xeb M\xfcller\n".encode("latin-1"))

    run(path, news, encoding="latin-1")

    assert subscribers()["zoe@example.org"][0] == "Zoë Müller"


def test_tabs_are_detected_and_an_internationalized_address_is_normalized(tmp_path, news):
    path = write(tmp_path, "email\tname\nJosé@Exämple.org\tJ\n")

    summary = run(path, news)

    assert summary.created == 1
    assert list(subscribers()) == ["josé@exämple.org"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "The file is empty."),
        (b"\n\n", "The file is empty."),
        (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00", "NUL byte"),
        (b"name,city\nAnn,Oslo\n", "no 'email' column"),
        (b"email,name\nann@example.org,Zo\xeb\n", "not valid UTF-8"),
        (b'email,name\nann@example.org,"never closed\n', "cannot be read as CSV"),
        (b"email,,city\na@example.org,x,y\n", "Column 2 of the header has no name"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_whole_and_nothing_changes(tmp_path, news, content, message):
    SubscriberFactory(email="kept@example.org", name="Kept", attributes={"a": "1"})
    path = write(tmp_path, content)

    with pytest.raises(ImportFileInvalid, match=message):
        run(path, news)

    assert subscribers() == {"kept@example.org": ("Kept", {"a": "1"}, "active")}


def test_a_row_with_a_1_mb_field_is_rejected_and_the_rest_imported(tmp_path, news):
    path = write(tmp_path, f"email,notes\nbig@example.org,{'x' * 1_048_576}\nok@example.org,fine\n")

    summary = run(path, news)

    assert (summary.created, summary.invalid) == (1, 1)
    assert errors(path)[0]["reason"] == "field 2 is 1,048,576 characters, over 65,536"


def test_ragged_rows_are_rejected_with_their_line(tmp_path, news):
    path = write(tmp_path, "email,name\nok@example.org,Ok\nshort@example.org\nlong@example.org,a,b\n\n")

    summary = run(path, news)

    assert (summary.created, summary.invalid) == (1, 2)
    assert [(r["line"], r["reason"]) for r in errors(path)] == [
        ("3", "the row has 1 fields, the header has 2"),
        ("4", "the row has 3 fields, the header has 2"),
    ]


def test_the_command_prints_a_summary_and_refuses_an_unknown_list(tmp_path, news, capsys):
    path = write(tmp_path, "email\nann@example.org\nnope\n")

    call_command("import_subscribers", str(path), "--list", "news")

    out = capsys.readouterr().out
    assert "2 rows" in out and "1 created" in out and "1 invalid" in out
    assert f"{path}.errors.csv" in out
    with pytest.raises(CommandError, match="No list with the slug 'missing'"):
        call_command("import_subscribers", str(path), "--list", "missing")
    with pytest.raises(CommandError, match="no 'email' column"):
        call_command("import_subscribers", str(write(tmp_path, "x\n1\n", "bad.csv")), "--list", "news")


@pytest.mark.parametrize(
    ("content", "method_on_postgresql"),
    [
        ("email,name\nann@example.org,Ann\nJosé@Exämple.org,J\n", "copy"),
        ("email,name\nann@example.org,Ann\nshort@example.org\n", "rows"),  # ragged: COPY cannot take it
        ("email,name\nann@example.org,Ann\n\nbob@example.org,Bob\n", "rows"),  # a blank line
    ],
)
def test_postgresql_copies_a_well_formed_file_and_reads_others_row_by_row(
    tmp_path, news, content, method_on_postgresql
):
    from django.db import connection

    summary = run(write(tmp_path, content), news)

    assert summary.method == (method_on_postgresql if connection.vendor == "postgresql" else "rows")
    assert Subscriber.objects.filter(email="ann@example.org", name="Ann").exists()


@pytest.mark.parametrize(
    "address",
    [
        "a..b@example.org",
        ".a@example.org",
        "a.@example.org",
        "a@-example.org",
        "a@example-.org",
        "a@.example.org",
        "a@example..org",
        f"a@{'x' * 64}.org",
        "a b@example.org",
    ],
)
def test_both_paths_refuse_the_same_malformed_addresses(tmp_path, news, address):
    """The PostgreSQL path's SQL checks must accept nothing the row-by-row path refuses."""
    path = write(tmp_path, f"email\nok@example.org\n{address}\n")

    summary = run(path, news)

    assert (summary.created, summary.invalid) == (1, 1)
    assert errors(path)[0]["line"] == "3"


def test_size_limits_count_characters_not_bytes(tmp_path, news):
    """PostgreSQL's checks compare byte lengths first: a row over a limit in bytes only is decided by Python."""
    name, notes = "é" * 150, "ü" * 40_000  # 300 and 80,000 bytes in UTF-8, within 200 and 65,536 characters
    path = write(tmp_path, f"email,name,notes\nann@example.org,{name},{notes}\nbob@example.org,{'é' * 201},x\n")

    summary = run(path, news)

    assert (summary.created, summary.invalid) == (1, 1)
    assert subscribers()["ann@example.org"][:2] == (name, {"notes": notes})
    assert [(r["line"], r["reason"]) for r in errors(path)] == [("3", "the name is 201 characters long, over 200")]


def test_many_duplicated_addresses_are_merged_in_batches(tmp_path, news, monkeypatch):
    from subscribers.services import importing

    monkeypatch.setattr(importing, "SQLITE_BATCH", 2)
    rows = ["email,name,a,b"]
    for i in range(5):
        rows += [f"p{i}@example.org,First{i},{i},", f"P{i}@example.org,,,b{i}", f"p{i}@example.org,Last{i},x,"]
    path = write(tmp_path, "\n".join(rows) + "\n")

    summary = run(path, news)

    assert (summary.rows, summary.duplicate, summary.created, summary.subscribed) == (15, 10, 5, 5)
    assert subscribers() == {f"p{i}@example.org": (f"Last{i}", {"a": "x", "b": f"b{i}"}, "active") for i in range(5)}
