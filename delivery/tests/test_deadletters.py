"""The dead-letter list: retry, discard and purge through the services, the admin and `manage.py deadletters`."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from core.exceptions import ApplicationError, NotFound
from delivery.models import Message, Provider, SendAttempt
from delivery.services import (
    deadletters_discard,
    deadletters_list,
    deadletters_purge,
    deadletters_retry,
    suppression_add,
    suppression_erase_address,
)
from delivery.tasks import mailing_send_task
from tests.factories import MailingFactory, MessageFactory, ProviderFactory, SendAttemptFactory

pytestmark = pytest.mark.django_db

GAVE_UP = "gave up after 5 attempts: provider answered 503"


def dead(**fields) -> Message:
    fields.setdefault("last_error", GAVE_UP)
    return MessageFactory(status=Message.Status.DEAD, attempts=5, **fields)


def dead_for(message: Message, days: int) -> None:
    Message.objects.filter(pk=message.pk).update(updated_at=timezone.now() - timedelta(days=days))


def state(message: Message) -> tuple:
    message.refresh_from_db()
    return message.status, message.attempts, message.last_error


# --- services ---------------------------------------------------------------------------------------------------


def test_retry_requeues_dead_messages_with_fresh_attempts_and_keeps_the_error_in_a_note(
    django_capture_on_commit_callbacks,
):
    mailing = MailingFactory()
    first, second = dead(mailing=mailing), dead(mailing=mailing)
    other_mailing = dead()
    sent = MessageFactory(mailing=mailing, status=Message.Status.SENT, attempts=1)
    before = timezone.now()

    with django_capture_on_commit_callbacks() as callbacks:
        result = deadletters_retry(mailing_id=mailing.pk)

    assert (result.requeued, result.suppressed, result.mailing_ids) == (2, 0, [mailing.pk])
    for message in (first, second):
        assert state(message) == (Message.Status.QUEUED, 0, f"retried by operator after: {GAVE_UP}")
        assert before <= message.next_attempt_at <= timezone.now()
        assert message.lease_expires_at is None
    assert state(other_mailing) == (Message.Status.DEAD, 5, GAVE_UP)
    assert state(sent) == (Message.Status.SENT, 1, "")
    assert len(callbacks) == 1  # one start for the one mailing, run only once the retry has committed


def test_retry_twice_changes_nothing_the_second_time(django_capture_on_commit_callbacks):
    message = dead()
    deadletters_retry(message_ids=[message.pk])
    after_first = state(message)

    with django_capture_on_commit_callbacks() as callbacks:
        result = deadletters_retry(message_ids=[message.pk])

    assert (result.requeued, result.suppressed, result.mailing_ids) == (0, 0, [])
    assert state(message) == after_first
    assert callbacks == []  # nothing requeued, nothing started


def test_a_dead_message_to_a_suppressed_address_is_never_requeued(django_capture_on_commit_callbacks):
    mailing = MailingFactory()
    kept = dead(mailing=mailing, to_email="kept@example.org")
    bounced = dead(mailing=mailing, to_email="bounced@example.org")
    erased = dead(mailing=mailing, to_email="erased@example.org")
    suppression_add(email="Bounced@example.org", reason="hard_bounce", source="test")
    suppression_erase_address(email="erased@example.org", source="test")  # only its hash is kept

    with django_capture_on_commit_callbacks() as callbacks:
        result = deadletters_retry(mailing_id=mailing.pk)

    assert (result.requeued, result.suppressed) == (1, 2)
    assert state(kept)[0] == Message.Status.QUEUED
    for message in (bounced, erased):
        assert state(message) == (Message.Status.SUPPRESSED, 5, "address is on the suppression list")
    assert len(callbacks) == 1


def test_only_suppressed_messages_start_no_sending(django_capture_on_commit_callbacks):
    message = dead(to_email="gone@example.org")
    suppression_add(email="gone@example.org", reason="complaint", source="test")

    with django_capture_on_commit_callbacks() as callbacks:
        result = deadletters_retry(all_dead=True)

    assert (result.requeued, result.suppressed, result.mailing_ids) == (0, 1, [])
    assert state(message)[0] == Message.Status.SUPPRESSED
    assert callbacks == []


def test_a_retry_is_sent_by_the_real_task_once_committed(sandbox, django_capture_on_commit_callbacks, monkeypatch):
    mailing = MailingFactory(provider=ProviderFactory(kind=Provider.Kind.POSTMARK))
    message = dead(mailing=mailing, to_email="ann@example.org")

    with django_capture_on_commit_callbacks() as callbacks:
        deadletters_retry(message_ids=[message.pk])

    assert sandbox.messages == []  # nothing moves before the commit
    monkeypatch.setitem(mailing_send_task.app.conf, "task_always_eager", True)  # the task runs here, not on a broker
    for callback in callbacks:
        callback()

    assert [m.to for m in sandbox.messages] == [["ann@example.org"]]
    message.refresh_from_db()
    assert (message.status, message.attempts) == (Message.Status.SENT, 1)


def test_retry_needs_exactly_one_scope_and_names_unknown_ids_and_mailings():
    message = dead()

    with pytest.raises(ApplicationError, match="exactly one scope"):
        deadletters_retry()
    with pytest.raises(ApplicationError, match="exactly one scope"):
        deadletters_retry(message_ids=[message.pk], all_dead=True)
    with pytest.raises(NotFound, match=rf"No message with id {message.pk + 1}, {message.pk + 2}\."):
        deadletters_retry(message_ids=[message.pk, message.pk + 2, message.pk + 1])
    with pytest.raises(NotFound, match=rf"No mailing with id {message.mailing_id + 1}\."):
        deadletters_retry(mailing_id=message.mailing_id + 1)

    assert state(message) == (Message.Status.DEAD, 5, GAVE_UP)  # a refused call changes nothing


def test_retry_of_many_ids_is_done_in_batches_in_one_call(django_capture_on_commit_callbacks):
    mailing = MailingFactory()
    messages = MessageFactory.create_batch(1203, mailing=mailing, status=Message.Status.DEAD, attempts=5)

    with django_capture_on_commit_callbacks():
        result = deadletters_retry(message_ids=[m.pk for m in messages])

    assert result.requeued == 1203
    assert Message.objects.filter(status=Message.Status.QUEUED, attempts=0).count() == 1203


def test_discard_ends_dead_messages_failed_and_keeps_them():
    chosen, left = dead(), dead()
    sent = MessageFactory(status=Message.Status.SENT)

    assert deadletters_discard(message_ids=[chosen.pk, sent.pk]) == 1
    assert deadletters_discard(message_ids=[chosen.pk]) == 0  # a second run finds nothing dead

    assert state(chosen) == (Message.Status.FAILED, 5, f"discarded by operator after: {GAVE_UP}")
    assert state(left) == (Message.Status.DEAD, 5, GAVE_UP)
    assert state(sent)[0] == Message.Status.SENT
    with pytest.raises(NotFound, match=r"No message with id"):
        deadletters_discard(message_ids=[sent.pk + 100])


def test_purge_discards_only_old_dead_messages_and_deletes_no_row():
    old, recent = dead(), dead()
    old_failed = MessageFactory(status=Message.Status.FAILED, last_error="recipient refused")
    dead_for(old, days=8)
    dead_for(old_failed, days=30)
    rows = Message.objects.count()

    assert deadletters_purge(older_than_days=7) == 1
    assert deadletters_purge(older_than_days=7) == 0

    assert Message.objects.count() == rows
    assert state(old) == (Message.Status.FAILED, 5, f"discarded by operator after: {GAVE_UP}")
    assert state(recent)[0] == Message.Status.DEAD
    assert state(old_failed) == (Message.Status.FAILED, 0, "recipient refused")
    with pytest.raises(ApplicationError, match="zero or more days, not -1"):
        deadletters_purge(older_than_days=-1)


def test_the_list_is_dead_messages_only_newest_first(django_assert_num_queries):
    mailing = MailingFactory()
    older, newer = dead(mailing=mailing), dead(mailing=mailing)
    dead_for(older, days=2)
    elsewhere = dead()
    MessageFactory(mailing=mailing, status=Message.Status.FAILED)

    with django_assert_num_queries(1):
        everything = [(m.pk, m.mailing.name) for m in deadletters_list()]

    assert [pk for pk, _ in everything] == [elsewhere.pk, newer.pk, older.pk]
    assert list(deadletters_list(mailing_id=mailing.pk, limit=1)) == [newer]
    assert list(deadletters_list(older_than_days=1)) == [older]
    with pytest.raises(NotFound):
        deadletters_list(mailing_id=mailing.pk + 100)


# --- admin ------------------------------------------------------------------------------------------------------

CHANGELIST = "/admin/delivery/deadletter/"


def test_the_dead_letter_page_lists_only_dead_messages(admin_client):
    shown = dead(to_email="dead@example.org")
    MessageFactory(to_email="fine@example.org", status=Message.Status.SENT)

    page = admin_client.get(CHANGELIST).content.decode()

    assert "dead@example.org" in page and "fine@example.org" not in page
    assert GAVE_UP in page
    filtered = admin_client.get(CHANGELIST, {"mailing": shown.mailing_id + 1}).content.decode()
    assert "dead@example.org" not in filtered


def test_the_retry_action_requeues_and_reports_suppressed_ones(admin_client, django_capture_on_commit_callbacks):
    mailing = MailingFactory()
    retried = dead(mailing=mailing, to_email="ann@example.org")
    blocked = dead(mailing=mailing, to_email="bob@example.org")
    untouched = dead(mailing=mailing)
    suppression_add(email="bob@example.org", reason="unsubscribe", source="test")

    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(
            CHANGELIST, {"action": "retry", "_selected_action": [retried.pk, blocked.pk]}, follow=True
        )

    page = response.content.decode()
    assert "1 message(s) back in the queue; sending started for 1 mailing(s)." in page
    assert "1 ended suppressed instead" in page
    assert state(retried)[0] == Message.Status.QUEUED
    assert state(blocked)[0] == Message.Status.SUPPRESSED
    assert state(untouched)[0] == Message.Status.DEAD
    assert len(callbacks) == 1


def test_the_discard_action_ends_them_failed_and_nothing_can_be_deleted(admin_client):
    message = dead()

    response = admin_client.post(CHANGELIST, {"action": "discard", "_selected_action": [message.pk]}, follow=True)

    assert "1 message(s) discarded" in response.content.decode()
    assert state(message)[0] == Message.Status.FAILED
    refused = admin_client.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [message.pk]})
    assert refused.status_code == 302  # no such action: the admin answers with a redirect and changes nothing
    assert Message.objects.filter(pk=message.pk).exists()


def test_each_try_shows_read_only_on_the_message_and_dead_letter_pages(admin_client):
    message = dead()
    provider = ProviderFactory(kind=Provider.Kind.SENDGRID)
    SendAttemptFactory(message=message, provider=provider, error="provider answered 503 (first)")
    SendAttemptFactory(
        message=message, provider=provider, outcome=SendAttempt.Outcome.FAILED, error="gave up: 503 (last)"
    )

    for url in (f"/admin/delivery/message/{message.pk}/change/", f"{CHANGELIST}{message.pk}/change/"):
        page = admin_client.get(url).content.decode()
        assert page.index("provider answered 503 (first)") < page.index("gave up: 503 (last)")
        assert "Failed, will retry" in page and "Failed for good" in page
        assert "sendgrid-test" in page
        assert 'name="attempts_log-0-error"' not in page  # shown, not editable


# --- command ----------------------------------------------------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command("deadletters", *args, stdout=out)
    return out.getvalue()


def test_list_prints_a_table_of_dead_messages():
    mailing = MailingFactory()
    dead_for(dead(mailing=mailing), days=1)
    message = dead(mailing=mailing, to_email="ann@example.org", last_error="x" * 100)

    lines = run("list", "--mailing", str(mailing.pk), "--limit", "1").splitlines()

    assert lines[0].split() == ["id", "to", "mailing", "attempts", "last", "error"]
    assert lines[1].split() == [str(message.pk), "ann@example.org", str(mailing.pk), "5", "x" * 59 + "…"]
    assert lines[2] == f"Dead letters in mailing {mailing.pk}: showing 1 of 2."
    assert run("list", "--mailing", str(MailingFactory().pk)).strip().startswith("No dead letters in mailing")


def test_retry_from_the_command_line(django_capture_on_commit_callbacks):
    mailing = MailingFactory()
    first, second = dead(mailing=mailing), dead(mailing=mailing)
    sent = MessageFactory(status=Message.Status.SENT)

    with django_capture_on_commit_callbacks():
        output = run("retry", "--id", str(first.pk), str(sent.pk))

    assert output.splitlines() == [
        f"Requeued 1 dead letter(s); sending started for mailing(s) {mailing.pk}.",
        "1 of the given id(s) were not dead; left as they are.",
    ]
    with django_capture_on_commit_callbacks():
        assert run("retry", "--all") == f"Requeued 1 dead letter(s); sending started for mailing(s) {mailing.pk}.\n"
    assert state(second)[0] == Message.Status.QUEUED


def test_retry_refuses_everything_without_all_and_names_unknown_ids():
    message = dead()

    with pytest.raises(CommandError, match="Say which dead letters to retry"):
        run("retry")
    with pytest.raises(CommandError, match=rf"No message with id {message.pk + 1}\."):
        run("retry", "--id", str(message.pk), str(message.pk + 1))
    with pytest.raises(CommandError, match=rf"No mailing with id {message.mailing_id + 1}\."):
        run("retry", "--mailing", str(message.mailing_id + 1))

    assert state(message)[0] == Message.Status.DEAD


def test_purge_counts_without_yes_and_discards_with_it():
    old = dead()
    dead_for(old, days=40)
    dead()

    assert "1 dead letter(s) older than 30 day(s) would be discarded" in run("purge", "--older-than", "30")
    assert state(old)[0] == Message.Status.DEAD

    assert run("purge", "--older-than", "30", "--yes").startswith("Discarded 1 dead letter(s) older than 30 day(s)")
    assert state(old)[0] == Message.Status.FAILED
    assert Message.objects.filter(status=Message.Status.DEAD).count() == 1
    with pytest.raises(CommandError, match="zero or more days"):
        run("purge", "--older-than", "-2", "--yes")
