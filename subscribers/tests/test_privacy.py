"""A subscriber's privacy requests: a copy of everything held about them, and erasure that leaves only a hash.

Events come back the way they do in production: the message goes out through anymail's SES backend into the
ESP sandbox, and the sandbox's own SES webhooks are posted to the webhook URL. Erasure is checked by searching
every text and JSON column of every table for the address.
"""

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.management import CommandError, call_command
from django.db.models import CharField, JSONField, Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from core.addresses import address_hash
from delivery.models import Mailing, Message, Provider, Suppression
from delivery.sandbox.events import build_payload, webhook_headers
from delivery.sandbox.vocabulary import OPEN_USER_AGENT
from delivery.sandbox.webhooks import WEBHOOK_PATHS
from delivery.services import mailing_send_chunk, suppression_add
from subscribers import personal_data
from subscribers.engagement import anchor_after
from subscribers.exceptions import AddressErased
from subscribers.models import Subscriber, Subscription
from subscribers.services import subscriber_data_export, subscriber_erase, subscriber_upsert
from tests.factories import (
    MailingFactory,
    MailingListFactory,
    MessageFactory,
    ProviderFactory,
    SubscriberFactory,
    SubscriptionFactory,
    SuppressionFactory,
)

pytestmark = pytest.mark.django_db

ANN = "ann@example.org"
BOB = "bob@example.org"
WHEN = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
CLICKED = "https://mailer.example/offer"
BOUNCE_RESPONSE = f"smtp; 550 5.1.1 {ANN}: Recipient address rejected: User unknown in virtual mailbox table"


def _rows_holding(text: str) -> dict[str, int]:
    """Rows, per model of every installed app, with `text` in any text or JSON column (case-insensitive)."""
    found = {}
    for model in apps.get_models():
        if model._meta.proxy:  # the same table as its concrete model, already searched
            continue
        columns = [f.attname for f in model._meta.concrete_fields if isinstance(f, CharField | TextField | JSONField)]
        if not columns:
            continue
        rows = model._base_manager.annotate(**{f"_text_{c}": Cast(c, TextField()) for c in columns})
        match = Q()
        for column in columns:
            match |= Q(**{f"_text_{column}__icontains": text})
        if count := rows.filter(match).count():
            found[model._meta.label] = count
    return found


def _post_sandbox_webhook(client, sandbox_message, kind: str, url: str | None = None) -> None:
    """What the sandbox would post back for this message, through the real webhook URL and its basic auth."""
    payload = build_payload(sandbox_message, kind, when=WHEN, url=url)
    headers = webhook_headers(sandbox_message.esp, payload)
    content_type = headers.pop("Content-Type")
    headers["Authorization"] = "Basic " + base64.b64encode(settings.MAILER_WEBHOOK_SECRETS[0].encode()).decode()
    response = client.post(
        WEBHOOK_PATHS[sandbox_message.esp], json.dumps(payload), content_type=content_type, headers=headers
    )
    assert response.status_code == 200


def _send_and_report(client, sandbox, *addresses: str) -> Mailing:
    """A campaign mailing sent through SES into the sandbox; each recipient's delivery, open and click reported."""
    mailing = MailingFactory(name="Spring news", provider=ProviderFactory(kind=Provider.Kind.AMAZON_SES))
    for address in addresses:
        MessageFactory(mailing=mailing, to_email=address)
    assert mailing_send_chunk(mailing_id=mailing.pk).sent == len(addresses)
    for sandbox_message in sandbox.messages:
        _post_sandbox_webhook(client, sandbox_message, "delivered")
        _post_sandbox_webhook(client, sandbox_message, "opened")
        _post_sandbox_webhook(client, sandbox_message, "clicked", url=CLICKED)
    return mailing


@pytest.fixture
def ann() -> Subscriber:
    now = timezone.now()
    subscriber = SubscriberFactory(
        email=ANN,
        name="Ann Lee",
        attributes={"city": "Oslo", "plan": "pro"},
        sent_count=3,
        open_count=2,
        click_count=1,
        last_sent_at=now - timedelta(days=3),
        last_open_at=now - timedelta(days=2),
        last_click_at=now - timedelta(days=1),
        score_anchor=anchor_after(None, points=25.0, at=now),
    )
    SubscriptionFactory(
        subscriber=subscriber,
        mailing_list=MailingListFactory(slug="news", name="News"),
        source="form",
        confirmation_sent_at=now - timedelta(days=10, hours=1),
        confirmed_at=now - timedelta(days=10),
    )
    SubscriptionFactory(
        subscriber=subscriber,
        mailing_list=MailingListFactory(slug="offers", name="Offers"),
        status=Subscription.Status.UNSUBSCRIBED,
        source="unsubscribe-link",
        unsubscribed_at=now - timedelta(days=5),
    )
    return subscriber


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# Export


def test_the_export_holds_everything_about_the_subscriber_and_nothing_about_anyone_else(client, sandbox, ann):
    mailing = _send_and_report(client, sandbox, ANN, BOB)
    SuppressionFactory(email=ANN, reason=Suppression.Reason.MANUAL, source="admin", detail="asked by phone")
    ann.refresh_from_db()
    message = Message.objects.get(to_email=ANN)
    news, offers = ann.subscriptions.select_related("mailing_list").order_by("mailing_list__slug")
    suppression = Suppression.objects.get(email=ANN)

    data = subscriber_data_export(subscriber=ann)

    assert data == {
        "profile": {
            "email": ANN,
            "name": "Ann Lee",
            "attributes": {"city": "Oslo", "plan": "pro"},
            "status": "active",
            "created_at": ann.created_at.isoformat(),
            "updated_at": ann.updated_at.isoformat(),
            "engagement": {
                "sent_count": 3,
                "open_count": 2,
                "click_count": 1,
                "last_sent_at": ann.last_sent_at.isoformat(),
                "last_open_at": ann.last_open_at.isoformat(),
                "last_click_at": ann.last_click_at.isoformat(),
                "score": 25,
            },
        },
        "subscriptions": [
            {
                "list": "news",
                "list_name": "News",
                "status": "active",
                "source": "form",
                "created_at": news.created_at.isoformat(),
                "confirmation_sent_at": news.confirmation_sent_at.isoformat(),
                "confirmed_at": news.confirmed_at.isoformat(),
                "unsubscribed_at": None,
            },
            {
                "list": "offers",
                "list_name": "Offers",
                "status": "unsubscribed",
                "source": "unsubscribe-link",
                "created_at": offers.created_at.isoformat(),
                "confirmation_sent_at": None,
                "confirmed_at": None,
                "unsubscribed_at": offers.unsubscribed_at.isoformat(),
            },
        ],
        "messages": [
            {
                "mailing": "Spring news",
                "kind": "campaign",
                "status": "sent",
                "created_at": message.created_at.isoformat(),
                "sent_at": message.sent_at.isoformat(),
                "delivered_at": None,
                "opened_at": None,
                "clicked_at": None,
            }
        ],
        "suppression": {
            "reason": "manual",
            "source": "admin",
            "detail": "asked by phone",
            "created_at": suppression.created_at.isoformat(),
        },
        "events": [
            {
                "type": "delivered",
                "occurred_at": WHEN.isoformat(),
                "esp": "amazon_ses",
                "url": "",
                "user_agent": "",
                "description": "",
                "mta_response": "250 2.0.0 OK: queued as sandbox",
            },
            {
                "type": "opened",
                "occurred_at": WHEN.isoformat(),
                "esp": "amazon_ses",
                "url": "",
                "user_agent": OPEN_USER_AGENT,
                "description": "",
                "mta_response": "",
            },
            {
                "type": "clicked",
                "occurred_at": WHEN.isoformat(),
                "esp": "amazon_ses",
                "url": CLICKED,
                "user_agent": OPEN_USER_AGENT,
                "description": "",
                "mta_response": "",
            },
        ],
    }
    assert mailing.messages.count() == 2  # Bob's message was there, and is not in Ann's export
    assert json.loads(json.dumps(data)) == data  # JSON-ready as it is


# Erasure


@pytest.fixture
def ann_everywhere(client, sandbox, ann, admin_user) -> Subscriber:
    """Ann's address in every place it can be: messages (sent, failed with an MTA response quoting it, queued),
    ESP events (with SES dedupe keys naming her), and a line of the admin log. Bob's next to hers."""
    _send_and_report(client, sandbox, ANN, BOB)
    [ann_sent] = [m for m in sandbox.messages if m.to == [ANN]]
    _post_sandbox_webhook(client, ann_sent, "bounced")
    MessageFactory(to_email=ANN, status=Message.Status.FAILED, last_error=BOUNCE_RESPONSE.removeprefix("smtp; "))
    MessageFactory(to_email=ANN, mailing=MailingFactory(kind=Mailing.Kind.TRANSACTIONAL, name="Receipt"))
    LogEntry.objects.create(
        user=admin_user,
        content_type=ContentType.objects.get_for_model(Subscriber),
        object_id=str(ann.pk),
        object_repr=str(ann),
        action_flag=CHANGE,
        change_message='[{"changed": {"fields": ["Name"]}}]',
    )
    assert _rows_holding(ANN) == {
        "subscribers.Subscriber": 1,
        "delivery.Message": 3,
        "webhooks.EspEvent": 4,
        "admin.LogEntry": 1,
    }
    return ann


def test_erasure_removes_the_address_from_every_table_and_keeps_only_its_hash(ann_everywhere):
    ann = ann_everywhere
    ann_messages = list(Message.objects.filter(to_email=ANN).order_by("pk").values_list("pk", "status"))
    bob_message = Message.objects.get(to_email=BOB)

    result = subscriber_erase(subscriber=ann, source="test")

    assert _rows_holding(ANN) == {}
    assert _rows_holding(OPEN_USER_AGENT) == {"webhooks.EspEvent": 2}  # Bob's open and click only
    assert _rows_holding(CLICKED) == {"webhooks.EspEvent": 1}  # Bob's click only
    assert (result.subscriptions, result.messages_anonymized, result.messages_stopped) == (2, 3, 1)
    assert result.contributed == {"events": 4}
    assert (result.suppression_created, result.admin_log_entries) == (True, 1)
    assert not Subscriber.objects.filter(pk=ann.pk).exists()
    assert not Subscription.objects.exists()
    sent, failed, queued = (pk for pk, _ in ann_messages)
    assert list(
        Message.objects.filter(pk__in=[sent, failed, queued])
        .order_by("pk")
        .values_list("to_email", "context", "status", "last_error")
    ) == [
        (f"erased-{sent}@erased.invalid", {}, Message.Status.SENT, ""),
        (f"erased-{failed}@erased.invalid", {}, Message.Status.FAILED, ""),
        (f"erased-{queued}@erased.invalid", {}, Message.Status.SUPPRESSED, "address erased on request"),
    ]
    assert Message.objects.get(pk=bob_message.pk).context == bob_message.context
    assert _rows_holding(BOB) == {"delivery.Message": 1, "webhooks.EspEvent": 3}
    assert list(Suppression.objects.values_list("email", "email_hash", "reason", "source", "detail")) == [
        (None, address_hash(ANN), Suppression.Reason.ERASED, "test", "")
    ]
    assert LogEntry.objects.get().object_repr == "(erased)"


def test_erasing_a_suppressed_address_keeps_the_reason_and_drops_the_address_and_detail(ann):
    before = SuppressionFactory(
        email=ANN, reason=Suppression.Reason.COMPLAINT, source="webhook:sendgrid", detail=f"abuse report for {ANN}"
    )

    result = subscriber_erase(subscriber=ann, source="test")

    assert result.suppression_created is False
    assert list(Suppression.objects.values_list("pk", "email", "email_hash", "reason", "source", "detail")) == [
        (before.pk, None, address_hash(ANN), Suppression.Reason.COMPLAINT, "webhook:sendgrid", "")
    ]
    assert _rows_holding(ANN) == {}


def test_erasure_is_all_or_nothing(ann_everywhere, monkeypatch):
    def broken_eraser(*, email: str) -> int:
        raise RuntimeError("disk full")

    monkeypatch.setitem(
        personal_data._contributors,
        "broken",
        personal_data.Contributor(name="broken", exporter=lambda *, email: [], eraser=broken_eraser),
    )

    with pytest.raises(RuntimeError):
        subscriber_erase(subscriber=ann_everywhere, source="test")

    assert _rows_holding(ANN) == {
        "subscribers.Subscriber": 1,
        "delivery.Message": 3,
        "webhooks.EspEvent": 4,
        "admin.LogEntry": 1,
    }
    assert not Suppression.objects.exists()


def test_an_erased_address_cannot_sign_up_again(ann):
    subscriber_erase(subscriber=ann, source="test")

    with pytest.raises(AddressErased) as error:
        subscriber_upsert(email="  Ann@Example.org ", name="Ann")

    assert error.value.message == f"{ANN} was erased at its owner's request and cannot be added again."
    assert not Subscriber.objects.exists()


def test_an_erased_address_is_never_sent_to_again(sandbox, ann):
    subscriber_erase(subscriber=ann, source="test")
    mailing = MailingFactory(kind=Mailing.Kind.TRANSACTIONAL, provider=ProviderFactory(kind=Provider.Kind.POSTMARK))
    to_ann = MessageFactory(mailing=mailing, to_email=ANN)
    MessageFactory(mailing=mailing, to_email=BOB)

    result = mailing_send_chunk(mailing_id=mailing.pk)

    assert (result.claimed, result.sent, result.suppressed) == (2, 1, 1)
    assert [m.to[0] for m in sandbox.messages] == [BOB]
    to_ann.refresh_from_db()
    assert (to_ann.status, to_ann.last_error) == (Message.Status.SUPPRESSED, "address is on the suppression list")


def test_suppressing_an_erased_address_again_does_not_store_it(ann):
    subscriber_erase(subscriber=ann, source="test")

    suppression, created = suppression_add(
        email="ANN@example.org", reason=Suppression.Reason.HARD_BOUNCE, source="webhook:postmark", detail=ANN
    )

    assert created is False
    assert list(Suppression.objects.values_list("pk", "email", "reason", "detail")) == [
        (suppression.pk, None, Suppression.Reason.ERASED, "")
    ]
    assert _rows_holding(ANN) == {}


# The management command


def test_the_command_exports_json_to_stdout_and_to_a_file(ann, capsys, tmp_path):
    expected = subscriber_data_export(subscriber=ann)

    call_command("subscriber_privacy", "export", "ANN@example.org")
    assert json.loads(capsys.readouterr().out) == expected

    target = tmp_path / "ann.json"
    call_command("subscriber_privacy", "export", ANN, "--output", str(target))
    assert json.loads(target.read_text(encoding="utf-8")) == expected
    assert capsys.readouterr().err == f"Exported {ANN} to {target}.\n"


def test_the_command_refuses_to_erase_without_yes(ann):
    with pytest.raises(CommandError) as error:
        call_command("subscriber_privacy", "erase", ANN)

    assert str(error.value) == f"Erasing {ANN} cannot be undone; add --yes to go ahead."
    assert Subscriber.objects.filter(email=ANN).exists()
    assert not Suppression.objects.exists()


def test_the_command_erases_with_yes_and_says_what_it_erased(ann, capsys):
    call_command("subscriber_privacy", "erase", ANN, "--yes")

    assert capsys.readouterr().out == (
        f"Erased {ANN}: 2 subscription(s) deleted; 0 message(s) anonymized (0 queued stopped); 0 events scrubbed; "
        "suppressed by hash only (new entry, reason erased).\n"
    )
    assert _rows_holding(ANN) == {}


@pytest.mark.parametrize("action", [["export"], ["erase", "--yes"]])
def test_an_unknown_address_gets_a_clear_error(action):
    SubscriberFactory(email=BOB)

    with pytest.raises(CommandError) as error:
        call_command("subscriber_privacy", action[0], "nobody@example.org", *action[1:])

    assert str(error.value) == "No subscriber has the address nobody@example.org; nothing was exported or erased."
    assert list(Subscriber.objects.values_list("email", flat=True)) == [BOB]


def test_erasing_twice_says_the_address_is_erased_already(ann):
    call_command("subscriber_privacy", "erase", ANN, "--yes")

    with pytest.raises(CommandError) as error:
        call_command("subscriber_privacy", "erase", ANN, "--yes")

    assert str(error.value) == f"{ANN} was erased already: nothing is held under it but its hash."


# The admin actions

CHANGELIST = "/admin/subscribers/subscriber/"


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_the_admin_exports_one_subscriber_as_a_json_download(admin_client, ann):
    response = admin_client.post(CHANGELIST, {"action": "export_personal_data", "_selected_action": [ann.pk]})

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="personal-data-subscriber-{ann.pk}.json"'
    assert json.loads(response.content) == subscriber_data_export(subscriber=ann)


def test_the_admin_exports_one_person_at_a_time(admin_client, ann):
    bob = SubscriberFactory(email=BOB)

    response = admin_client.post(
        CHANGELIST, {"action": "export_personal_data", "_selected_action": [ann.pk, bob.pk]}, follow=True
    )

    assert _messages(response) == ["Choose exactly one subscriber: a personal data export is one person's."]


def test_the_admin_erases_after_a_confirmation_page(admin_client, ann_everywhere):
    ann = ann_everywhere
    bob = SubscriberFactory(email=BOB)
    chosen = {"action": "erase_personal_data", "_selected_action": [ann.pk]}

    page = admin_client.post(CHANGELIST, chosen)

    assert page.status_code == 200
    assert page.templates[0].name == "admin/subscribers/subscriber/erase_personal_data.html"
    assert f"<li>{ANN} (Ann Lee)</li>" in page.content.decode()
    assert Subscriber.objects.filter(pk=ann.pk).exists()  # nothing happens before the confirmation

    response = admin_client.post(CHANGELIST, {**chosen, "post": "yes"}, follow=True)

    assert _messages(response) == [
        f"Subscriber {ann.pk} erased: 2 subscription(s) deleted; 3 message(s) anonymized (1 queued stopped); "
        "4 events scrubbed; 1 admin log entr(ies) scrubbed; suppressed by hash only (new entry, reason erased)."
    ]
    assert list(Subscriber.objects.values_list("pk", flat=True)) == [bob.pk]
    assert _rows_holding(ANN) == {}
