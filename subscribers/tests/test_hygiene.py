"""List hygiene: who is flagged and why, applying it, and its doors (command, admin). No test touches the DNS:
the MX check gets a resolver that answers from a table with real dnspython records and exceptions."""

import csv
import io
from datetime import timedelta

import dns.rdata
import dns.resolver
import pytest
from disposable_email_domains import blocklist
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.utils import timezone

from delivery.models import Message, Suppression
from subscribers.models import Subscriber, Subscription
from subscribers.services import hygiene
from subscribers.services.hygiene import (
    HygieneFlag,
    HygieneOptionsInvalid,
    list_hygiene_apply,
    list_hygiene_csv,
    list_hygiene_report,
)
from tests.factories import (
    MailingListFactory,
    MessageFactory,
    SubscriberFactory,
    SubscriptionFactory,
    SuppressionFactory,
)

pytestmark = pytest.mark.django_db

ALL_BUT_MX = {"invalid": 0, "disposable": 0, "role": 0, "inactive": 0}


@pytest.fixture
def news():
    return MailingListFactory(slug="news", name="News")


def member(mailing_list, email, **subscriber):
    return SubscriptionFactory(
        mailing_list=mailing_list, subscriber=SubscriberFactory(email=email, **subscriber)
    ).subscriber


def flagged(report) -> dict[str, tuple[str, ...]]:
    return {flag.email: flag.reasons for flag in report.flagged}


class TableResolver:
    """dnspython's Resolver.resolve, answered from a table: (name, type) -> records or an exception. A name or
    type not in the table has no records of that type (NoAnswer). Every question is kept."""

    def __init__(self, table):
        self.table = table
        self.questions = []

    def resolve(self, name, rdtype):
        self.questions.append((name, rdtype))
        answer = self.table.get((name, rdtype), dns.resolver.NoAnswer())
        if isinstance(answer, Exception):
            raise answer
        return [dns.rdata.from_text("IN", rdtype, text) for text in answer]


@pytest.fixture
def resolver():
    return TableResolver(
        {
            ("good.example", "MX"): ["10 mx1.good.example."],
            ("web-only.example", "A"): ["93.184.215.14"],  # no MX, but an A record: mail goes there
            ("gone.example", "MX"): dns.resolver.NXDOMAIN(),
            ("null-mx.example", "MX"): ["0 ."],  # RFC 7505: accepts no mail
            ("slow.example", "MX"): dns.resolver.LifetimeTimeout(timeout=5.0, errors=[]),
            # nomail.example: no MX, no A, no AAAA
        }
    )


# --- who is flagged, and why -------------------------------------------------------------------------------


def test_each_reason_is_flagged_exactly_and_clean_addresses_are_not(news):
    member(news, "ann@example.org", sent_since_open=9)
    member(news, "bob@mail.example.net")
    member(news, "ann..dots@example.org")
    member(news, "someone@mailinator.com")
    member(news, "info@example.org")
    member(news, "quiet@example.org", sent_since_open=10)
    member(news, "info@mailinator.com", sent_since_open=12)

    report = list_hygiene_report(mailing_list=news)

    assert flagged(report) == {
        "ann..dots@example.org": ("invalid",),
        "someone@mailinator.com": ("disposable",),
        "info@example.org": ("role",),
        "quiet@example.org": ("inactive",),
        "info@mailinator.com": ("disposable", "role", "inactive"),
    }
    assert report.counts == {"invalid": 1, "disposable": 2, "role": 2, "inactive": 2}
    assert (report.checked, report.flagged_count, report.checks) == (
        7, 5, ("invalid", "disposable", "role", "inactive")
    )  # fmt: skip


def test_only_the_people_still_mailed_are_checked(news):
    member(news, "info@example.org")
    SubscriptionFactory(
        mailing_list=news, subscriber__email="admin@example.org", status=Subscription.Status.UNSUBSCRIBED
    )
    member(news, "sales@example.org").subscriptions.create(mailing_list=MailingListFactory())  # also elsewhere
    member(news, "root@example.org", status=Subscriber.Status.CLEANED)
    member(news, "abuse@example.org", status=Subscriber.Status.UNSUBSCRIBED)
    member(news, "billing@example.org")
    SuppressionFactory(email="billing@example.org")
    member(MailingListFactory(), "support@example.org")  # another list only
    SubscriptionFactory(mailing_list=news, subscriber__email="help@example.org", status=Subscription.Status.PENDING)

    on_news = list_hygiene_report(mailing_list=news)
    everyone = list_hygiene_report()

    assert sorted(flagged(on_news)) == ["help@example.org", "info@example.org", "sales@example.org"]
    assert sorted(flagged(everyone)) == [
        "admin@example.org", "help@example.org", "info@example.org", "sales@example.org", "support@example.org"
    ]  # fmt: skip
    assert (on_news.checked, everyone.checked) == (3, 5)


def test_a_role_address_is_matched_before_its_tag_and_whatever_its_case(news):
    for email in ["Support+billing@Example.org", "NOREPLY@example.org", "no-reply+x@example.org",
                  "postmaster@example.org", "Mailer-Daemon@example.org"]:  # fmt: skip
        member(news, email)
    for email in ["supporter@example.org", "info.desk@example.org", "ann+info@example.org", "my-admin@example.org"]:
        member(news, email)

    report = list_hygiene_report(mailing_list=news, checks={"role"})

    assert flagged(report) == {
        "Support+billing@Example.org": ("role",),
        "NOREPLY@example.org": ("role",),
        "no-reply+x@example.org": ("role",),
        "postmaster@example.org": ("role",),
        "Mailer-Daemon@example.org": ("role",),
    }
    assert report.counts == {"role": 5}


def test_a_disposable_domain_comes_from_the_packages_list_and_covers_its_subdomains(news):
    assert "mailinator.com" in blocklist
    assert "com.example.org" not in blocklist and "example.org" not in blocklist
    assert "gmail.com" not in blocklist
    for email in ["a@mailinator.com", "b@eu.mailinator.com", "c@MAILINATOR.COM", "d@gmail.com",
                  "e@mailinator.com.example.org", "mailinator.com"]:  # fmt: skip
        member(news, email)

    report = list_hygiene_report(mailing_list=news, checks={"disposable"})

    assert flagged(report) == {
        "a@mailinator.com": ("disposable",),
        "b@eu.mailinator.com": ("disposable",),
        "c@MAILINATOR.COM": ("disposable",),
    }


def test_inactivity_starts_at_exactly_n_campaigns_without_an_open(news):
    for sent in [0, 2, 3, 9, 10, 11]:
        member(news, f"sent{sent}@example.org", sent_since_open=sent)

    default = list_hygiene_report(mailing_list=news, checks={"inactive"})
    three = list_hygiene_report(mailing_list=news, checks={"inactive"}, inactive_after=3)

    assert sorted(flagged(default)) == ["sent10@example.org", "sent11@example.org"]
    assert sorted(flagged(three)) == [
        "sent10@example.org",
        "sent11@example.org",
        "sent3@example.org",
        "sent9@example.org",
    ]
    assert (default.checked, default.counts, three.counts) == (6, {"inactive": 2}, {"inactive": 4})


def test_subscribers_younger_than_the_minimum_age_are_never_inactive(news):
    young = member(news, "young@example.org", sent_since_open=20)
    old = member(news, "old@example.org", sent_since_open=20)
    invalid_young = member(news, "young@@example.org", sent_since_open=20)
    now = timezone.now()
    Subscriber.objects.filter(pk__in=[young.pk, invalid_young.pk]).update(created_at=now - timedelta(days=29))
    Subscriber.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=31))

    report = list_hygiene_report(mailing_list=news, min_age_days=30)
    only_inactive = list_hygiene_report(mailing_list=news, checks={"inactive"}, min_age_days=30)

    assert flagged(report) == {"old@example.org": ("inactive",), "young@@example.org": ("invalid",)}
    assert flagged(only_inactive) == {"old@example.org": ("inactive",)}


def test_the_report_reads_every_row_in_one_query_whatever_their_number(news, django_assert_num_queries):
    for n in range(7):
        member(news, f"info{n}@example.org" if n % 2 else f"info@example{n}.org", sent_since_open=n)

    with django_assert_num_queries(1):
        report = list_hygiene_report(mailing_list=news, chunk_size=2)
    with django_assert_num_queries(2):  # a count, then only the inactive rows
        inactive = list_hygiene_report(mailing_list=news, checks={"inactive"}, inactive_after=5, chunk_size=2)

    assert report.checked == 7 and report.counts["role"] == 4
    assert flagged(inactive) == {"info5@example.org": ("inactive",), "info@example6.org": ("inactive",)}
    assert inactive.checked == 7


def test_unknown_checks_and_impossible_thresholds_are_refused():
    with pytest.raises(HygieneOptionsInvalid, match="Unknown check bogus"):
        list_hygiene_report(checks={"role", "bogus"})
    with pytest.raises(HygieneOptionsInvalid, match="at least 1"):
        list_hygiene_report(inactive_after=0)
    with pytest.raises(HygieneOptionsInvalid, match="at least one check"):
        list_hygiene_report(checks=set())


# --- the MX check, with a resolver that answers from a table -------------------------------------------------


def test_a_domain_without_mx_or_address_records_is_flagged_and_a_timeout_only_counted(news, resolver):
    for email in ["a@good.example", "b@good.example", "c@web-only.example", "d@nomail.example", "e@gone.example",
                  "f@null-mx.example", "g@slow.example", "bad..dots@nomail.example"]:  # fmt: skip
        member(news, email)

    report = list_hygiene_report(mailing_list=news, checks={"mx", "invalid"}, resolver=resolver)

    assert flagged(report) == {
        "d@nomail.example": ("mx",),
        "e@gone.example": ("mx",),
        "f@null-mx.example": ("mx",),
        "bad..dots@nomail.example": ("invalid",),  # not an address: not looked up
    }
    assert (report.counts, report.mx_unknown) == ({"invalid": 1, "mx": 3}, 1)
    asked = [name for name, rdtype in resolver.questions if rdtype == "MX"]  # once per domain
    assert sorted(asked) == ["gone.example", "good.example", "nomail.example", "null-mx.example", "slow.example",
                             "web-only.example"]  # fmt: skip
    assert ("nomail.example", "AAAA") in resolver.questions


def test_the_mx_check_is_off_unless_asked_for(news, resolver):
    member(news, "d@nomail.example")

    report = list_hygiene_report(mailing_list=news, resolver=resolver)

    assert (report.flagged, resolver.questions) == ([], [])


def test_the_default_resolver_bounds_each_lookup():
    resolver = hygiene.mx_resolver(timeout=1.5)

    assert resolver.lifetime == 1.5 and resolver.timeout <= 1.5


# --- applying it ---------------------------------------------------------------------------------------------


@pytest.fixture
def mixed(news):
    """On news: Ann (clean), Ivy (role, also on another list), Dan (disposable and inactive); Zed, not on news,
    has a role address."""
    other = MailingListFactory(slug="other")
    ann = member(news, "ann@example.org")
    ivy = member(news, "info@example.org")
    SubscriptionFactory(mailing_list=other, subscriber=ivy)
    dan = member(news, "dan@mailinator.com", sent_since_open=15)
    zed = member(other, "sales@example.org")
    return {"list": news, "other": other, "ann": ann, "ivy": ivy, "dan": dan, "zed": zed}


def statuses() -> dict[tuple[str, str], str]:
    return {
        (s.subscriber.email, s.mailing_list.slug): s.status
        for s in Subscription.objects.select_related("subscriber", "mailing_list")
    }


def test_unsubscribing_ends_exactly_the_flagged_subscriptions_on_that_list(mixed):
    report = list_hygiene_report(mailing_list=mixed["list"])

    changed = list_hygiene_apply(report=report, action="unsubscribe")

    assert changed == 2
    assert statuses() == {
        ("ann@example.org", "news"): "active",
        ("info@example.org", "news"): "unsubscribed",
        ("info@example.org", "other"): "active",
        ("dan@mailinator.com", "news"): "unsubscribed",
        ("sales@example.org", "other"): "active",
    }
    sources = dict(Subscription.objects.filter(status="unsubscribed").values_list("subscriber__email", "source"))
    assert sources == {"info@example.org": "hygiene:role", "dan@mailinator.com": "hygiene:disposable,inactive"}
    assert set(Subscriber.objects.values_list("status", flat=True)) == {"active"}
    assert not Suppression.objects.exists()
    assert list_hygiene_report(mailing_list=mixed["list"]).flagged == []
    assert list_hygiene_apply(report=report, action="unsubscribe") == 0  # twice changes nothing more


def test_unsubscribing_without_a_list_ends_everything_for_the_flagged(mixed):
    report = list_hygiene_report(checks={"role"})

    changed = list_hygiene_apply(report=report, action="unsubscribe")

    assert changed == 2
    assert dict(Subscriber.objects.values_list("email", "status")) == {
        "ann@example.org": "active",
        "info@example.org": "unsubscribed",
        "dan@mailinator.com": "active",
        "sales@example.org": "unsubscribed",
    }
    assert statuses() == {
        ("ann@example.org", "news"): "active",
        ("info@example.org", "news"): "unsubscribed",
        ("info@example.org", "other"): "unsubscribed",
        ("dan@mailinator.com", "news"): "active",
        ("sales@example.org", "other"): "unsubscribed",
    }


def test_suppressing_adds_exactly_the_flagged_addresses_and_stops_their_queued_messages(mixed):
    to_dan = MessageFactory(to_email="dan@mailinator.com")
    to_ann = MessageFactory(to_email="ann@example.org")
    report = list_hygiene_report(mailing_list=mixed["list"])

    changed = list_hygiene_apply(report=report, action="suppress")

    assert changed == 2
    assert set(Suppression.objects.values_list("email", "reason", "source")) == {
        ("info@example.org", "manual", "hygiene:role"),
        ("dan@mailinator.com", "manual", "hygiene:disposable,inactive"),
    }
    to_dan.refresh_from_db()
    to_ann.refresh_from_db()
    assert (to_dan.status, to_ann.status) == (Message.Status.SUPPRESSED, Message.Status.QUEUED)
    assert set(Subscription.objects.values_list("status", flat=True)) == {"active"}  # consent is left as it is
    assert list_hygiene_report(mailing_list=mixed["list"]).flagged == []
    assert list_hygiene_apply(report=report, action="suppress") == 0


def test_applying_to_chosen_ids_leaves_the_other_flagged_alone(mixed):
    report = list_hygiene_report(mailing_list=mixed["list"])

    changed = list_hygiene_apply(report=report, action="suppress", subscriber_ids=[mixed["dan"].pk, mixed["ann"].pk])

    assert changed == 1
    assert list(Suppression.objects.values_list("email", flat=True)) == ["dan@mailinator.com"]


def test_an_unknown_action_changes_nothing(mixed):
    report = list_hygiene_report(mailing_list=mixed["list"])

    with pytest.raises(HygieneOptionsInvalid, match="Unknown action 'delete'"):
        list_hygiene_apply(report=report, action="delete")

    assert not Suppression.objects.exists()
    assert set(Subscription.objects.values_list("status", flat=True)) == {"active"}


def test_the_csv_has_email_and_reasons_with_formulas_neutralized():
    report = list_hygiene_report()
    report.flagged = [
        HygieneFlag(1, "=cmd@mailinator.com", ("disposable",)),
        HygieneFlag(2, "info@x.org", ("role", "mx")),
    ]

    rows = list(csv.reader(io.StringIO("".join(list_hygiene_csv(report=report)), newline="")))

    assert rows == [["email", "reasons"], ["'=cmd@mailinator.com", "disposable"], ["info@x.org", "role,mx"]]


# --- the command ---------------------------------------------------------------------------------------------


def run(*args) -> str:
    out = io.StringIO()
    call_command("list_hygiene", *args, stdout=out)
    return out.getvalue()


def test_the_command_prints_counts_and_writes_the_flagged_rows(mixed, tmp_path):
    member(mixed["list"], "=cmd@mailinator.com")
    path = tmp_path / "flagged.csv"

    output = run("--list", "news", "--output", str(path))

    assert output.splitlines() == [
        "Checked 4 subscribers of list 'news': 3 flagged.",
        "  invalid            0  Invalid address",
        "  disposable         2  Disposable domain",
        "  role               1  Role address",
        "  inactive           1  Inactive",
        f"Flagged rows written to {path}.",
    ]
    with path.open(newline="", encoding="utf-8") as stream:
        assert list(csv.reader(stream)) == [
            ["email", "reasons"],
            ["info@example.org", "role"],
            ["dan@mailinator.com", "disposable,inactive"],
            ["'=cmd@mailinator.com", "disposable"],
        ]
    assert not Suppression.objects.exists()
    assert set(Subscription.objects.values_list("status", flat=True)) == {"active"}


def test_the_command_applies_only_when_asked_and_only_the_chosen_checks(mixed):
    output = run("--only", "role", "--apply", "suppress")

    assert output.splitlines() == [
        "Checked 4 subscribers: 2 flagged.",
        "  role               2  Role address",
        "Suppressed 2 addresses.",
    ]
    assert sorted(Suppression.objects.values_list("email", flat=True)) == ["info@example.org", "sales@example.org"]


def test_the_command_unsubscribes_from_the_list(mixed):
    output = run("--list", "news", "--inactive-after", "20", "--apply", "unsubscribe")

    assert output.splitlines()[-1] == "Unsubscribed 2 from list 'news'."
    assert statuses()[("dan@mailinator.com", "news")] == "unsubscribed"
    assert statuses()[("info@example.org", "other")] == "active"


def test_the_command_checks_mx_with_a_timeout_per_lookup(news, resolver, monkeypatch):
    timeouts = []
    monkeypatch.setattr(hygiene, "mx_resolver", lambda *, timeout: timeouts.append(timeout) or resolver)
    member(news, "a@good.example")
    member(news, "d@nomail.example")
    member(news, "g@slow.example")

    output = run("--list", "news", "--mx", "--mx-timeout", "2", "--only", "mx")

    assert timeouts == [2.0]
    assert output.splitlines() == [
        "Checked 3 subscribers of list 'news': 1 flagged.",
        "  mx                 1  Domain receives no mail",
        "  1 not checked for mail: their domain's DNS did not answer.",
    ]


def test_the_command_names_a_missing_list_and_an_unknown_check(news):
    with pytest.raises(CommandError, match="No mailing list with slug 'nope'"):
        run("--list", "nope")
    with pytest.raises(CommandError, match="Unknown check bogus"):
        run("--only", "role,bogus")


# --- the admin -----------------------------------------------------------------------------------------------


def hygiene_url(mailing_list) -> str:
    return f"/admin/subscribers/mailinglist/{mailing_list.pk}/hygiene/"


def test_the_admin_action_opens_the_report_with_its_counts(admin_client, mixed):
    response = admin_client.post(
        "/admin/subscribers/mailinglist/", {"action": "hygiene_report", "_selected_action": [mixed["list"].pk]}
    )
    assert response.status_code == 302 and response["Location"] == hygiene_url(mixed["list"])

    page = admin_client.get(response["Location"]).content.decode()

    assert 'id="hygiene-flagged">2<' in page
    for reason, count in {"invalid": 0, "disposable": 1, "role": 1, "inactive": 1}.items():
        assert f'id="hygiene-{reason}">{count}<' in page
    assert "Checked 3 subscribers" in page


def test_the_admin_report_takes_its_options_and_offers_the_flagged_rows_as_csv(admin_client, mixed):
    page = admin_client.get(hygiene_url(mixed["list"]), {"checks": ["role", "inactive"], "inactive_after": 20})
    text = page.content.decode()

    assert 'id="hygiene-flagged">1<' in text and 'id="hygiene-disposable"' not in text
    download = admin_client.get(
        f"/admin/subscribers/mailinglist/{mixed['list'].pk}/hygiene.csv", {"checks": ["disposable"]}
    )
    assert download["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(b"".join(download.streaming_content).decode(), newline="")))
    assert rows == [["email", "reasons"], ["dan@mailinator.com", "disposable"]]


def test_the_admin_applies_only_after_confirmation(admin_client, mixed):
    options = {"checks": ["invalid", "disposable", "role", "inactive"], "inactive_after": 10, "min_age_days": 0}

    unconfirmed = admin_client.post(hygiene_url(mixed["list"]), {**options, "apply": "unsubscribe"})

    assert unconfirmed.status_code == 200 and "Tick the box" in unconfirmed.content.decode()
    assert set(Subscription.objects.values_list("status", flat=True)) == {"active"}

    done = admin_client.post(
        hygiene_url(mixed["list"]), {**options, "apply": "unsubscribe", "confirm": "on"}, follow=True
    )

    assert "News: 2 flagged, 2 unsubscribed from the list." in done.content.decode()
    assert sorted(Subscription.objects.filter(status="unsubscribed").values_list("subscriber__email", flat=True)) == [
        "dan@mailinator.com", "info@example.org"
    ]  # fmt: skip
    assert not Suppression.objects.exists()


def test_the_admin_suppresses_the_flagged(admin_client, mixed):
    options = {"checks": ["role"], "inactive_after": 10, "min_age_days": 0, "apply": "suppress", "confirm": "on"}

    response = admin_client.post(hygiene_url(mixed["list"]), options)

    assert response.status_code == 302
    assert list(Suppression.objects.values_list("email", "source")) == [("info@example.org", "hygiene:role")]


def test_suppressing_from_the_admin_needs_the_permission_to_add_suppressions(client, mixed):
    staff = User.objects.create_user("editor", password="pw", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_mailinglist", "change_mailinglist", "change_subscription"])
    )
    client.force_login(staff)
    options = {"checks": ["role"], "inactive_after": 10, "min_age_days": 0, "confirm": "on"}

    page = client.get(hygiene_url(mixed["list"])).content.decode()
    refused = client.post(hygiene_url(mixed["list"]), {**options, "apply": "suppress"})

    assert 'value="unsubscribe"' in page and 'value="suppress"' not in page
    assert refused.status_code == 403
    assert not Suppression.objects.exists()
