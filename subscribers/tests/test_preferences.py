"""The preference page: a signed link in every bulk message (delivery adds a footer when the template has none)
leads to the recipient's lists, where they tick what they want or leave everything."""

import re

import pytest
from django.core import signing
from django.test import Client

from delivery.models import Mailing
from delivery.services import mailing_send_chunk, suppression_add
from delivery.services.composing import message_build
from delivery.unsubscribe import (
    preferences_token_make,
    preferences_token_read,
    unsubscribe_token_make,
    unsubscribe_token_read,
)
from subscribers.models import Subscriber, Subscription
from tests.factories import MailingFactory, MessageFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

PREFERENCES_LINK = re.compile(r"https?://[^/\s\"]+(/p/([^/\s\"]+)/)")
UNSUBSCRIBE_LINK = re.compile(r"https?://[^/\s\"]+(/u/([^/\s\"]+)/)")


def html_of(email) -> str:
    [(html, mimetype)] = email.alternatives
    assert mimetype == "text/html"
    return html


def links(body: str) -> tuple[str, str]:
    """The (preference, unsubscribe) tokens found in a body; each must be there."""
    return PREFERENCES_LINK.search(body).group(2), UNSUBSCRIBE_LINK.search(body).group(2)


# The footer: every bulk message carries both links


def test_a_template_without_links_gets_a_footer_with_both_in_html_and_text():
    message = MessageFactory(
        mailing=MailingFactory(html_template="<html><body><p>Hello {{ name }}</p></body></html>"),
        context={"name": "Ann"},
    )

    email = message_build(message.mailing, message)

    html = html_of(email)
    assert html.startswith("<html><body><p>Hello Ann</p><p ")
    assert html.endswith("</p></body></html>")  # inside the body, not after it
    assert "Manage your subscriptions" in html and ">Unsubscribe</a>" in html
    preferences_token, unsubscribe_token = links(html)
    assert preferences_token_read(preferences_token) == unsubscribe_token_read(unsubscribe_token) == message.pk
    assert email.body.startswith("Hello Ann\n\n--\nManage your subscriptions: http")
    assert links(email.body) == links(html)


def test_a_template_that_places_a_link_itself_gets_no_footer_and_can_use_preferences_url():
    mailing = MailingFactory(
        html_template='<p>Hi</p><a href="{{ preferences_url }}">Your settings</a>',
        text_template="Hi. Leave: {{ unsubscribe_url }}",
    )
    message = MessageFactory(mailing=mailing)

    email = message_build(mailing, message)

    html = html_of(email)
    assert "Manage your subscriptions" not in html and "Manage your subscriptions" not in email.body
    token = PREFERENCES_LINK.search(html).group(2)
    assert preferences_token_read(token) == message.pk
    assert email.body == f"Hi. Leave: http://127.0.0.1:8000/u/{unsubscribe_token_make(message.pk)}/"


def test_a_text_part_made_from_the_html_keeps_its_links():
    mailing = MailingFactory(html_template='<p>Hi</p><a href="{{ unsubscribe_url }}">Leave</a>', text_template="")
    message = MessageFactory(mailing=mailing)

    email = message_build(mailing, message)

    assert "Manage your subscriptions" not in html_of(email)
    assert "Manage your subscriptions" not in email.body
    assert email.body.startswith("Hi\n\nLeave (http")
    assert unsubscribe_token_read(UNSUBSCRIBE_LINK.search(email.body).group(2)) == message.pk


FOOTER = "Manage your subscriptions"


@pytest.mark.parametrize(
    ("html", "text", "footer_in_html", "footer_in_text"),
    [
        ("<p>Plain</p>", "Plain", True, True),
        ("", "Text only", False, True),
        ("<p>{{ unsubscribe_url }}</p>", "", False, False),  # the text made from the HTML keeps the link
        ("<p>x</p>", "{{ preferences_url }}", True, False),
        ("<html><BODY><p>Caps</p></BODY></html>", "", True, True),
    ],
)
def test_every_part_of_every_bulk_message_has_a_way_out(html, text, footer_in_html, footer_in_text):
    message = MessageFactory(mailing=MailingFactory(html_template=html, text_template=text))

    email = message_build(message.mailing, message)

    assert (FOOTER in email.body) is footer_in_text
    assert PREFERENCES_LINK.search(email.body) or UNSUBSCRIBE_LINK.search(email.body)
    for content, _ in email.alternatives:
        assert (FOOTER in content) is footer_in_html
        assert PREFERENCES_LINK.search(content) or UNSUBSCRIBE_LINK.search(content)
        assert content.lower().count("</body>") == html.lower().count("</body>")


def test_a_system_message_has_neither_links_nor_footer():
    mailing = MailingFactory(kind=Mailing.Kind.SYSTEM, html_template="<p>Confirm</p>", text_template="Confirm")
    message = MessageFactory(mailing=mailing)

    email = message_build(mailing, message)

    assert (email.body, html_of(email)) == ("Confirm", "<p>Confirm</p>")


def test_the_link_travels_through_the_sandbox_and_opens_the_page(sandbox):
    ann = SubscriptionFactory(subscriber__email="ann@example.org", mailing_list__name="Weekly News")
    mailing = MailingFactory(owner_data={"list_ids": [ann.mailing_list_id]})
    MessageFactory(mailing=mailing, to_email="ann@example.org")

    assert mailing_send_chunk(mailing_id=mailing.pk).sent == 1

    [received] = sandbox.messages
    path = PREFERENCES_LINK.search(received.text).group(1)
    assert path in received.html
    page = Client().get(path)
    assert page.status_code == 200
    assert "Weekly News" in page.content.decode()


# The page


@pytest.fixture
def ann():
    """Ann is active on News, has left Offers, and has not confirmed Events yet; a campaign reached her."""
    news = SubscriptionFactory(subscriber__email="ann@example.org", mailing_list__name="News")
    offers = SubscriptionFactory(
        subscriber=news.subscriber, mailing_list__name="Offers", status=Subscription.Status.UNSUBSCRIBED
    )
    events = SubscriptionFactory(
        subscriber=news.subscriber, mailing_list__name="Events", status=Subscription.Status.PENDING
    )
    SubscriptionFactory(subscriber__email="bob@example.org", mailing_list__name="Bob's list")
    message = MessageFactory(to_email="Ann@Example.org")
    return {
        "news": news,
        "offers": offers,
        "events": events,
        "url": f"/p/{preferences_token_make(message.pk)}/",
    }


def statuses(ann) -> dict[str, str]:
    return {name: Subscription.objects.get(pk=ann[name].pk).status for name in ("news", "offers", "events")}


def test_the_page_lists_every_list_of_the_subscriber_with_its_state(ann):
    response = Client().get(ann["url"])

    assert response.status_code == 200
    page = response.content.decode()
    assert "ann@example.org" in page
    boxes = re.findall(r'<input type="checkbox" name="list" value="(\d+)" id="list-\d+"( checked)?', page)
    assert boxes == [
        (str(ann["events"].mailing_list_id), ""),
        (str(ann["news"].mailing_list_id), " checked"),
        (str(ann["offers"].mailing_list_id), ""),
    ]
    assert "Not confirmed yet" in page
    assert "Bob&#x27;s list" not in page
    assert '<html lang="en">' in page and '<meta name="viewport"' in page
    assert "<fieldset>" in page and "<legend>Lists</legend>" in page
    assert f'<label for="list-{ann["news"].mailing_list_id}">' in page
    assert "no-store" in response["Cache-Control"]


def test_saving_applies_the_ticks_without_a_session_or_csrf_cookie(ann):
    client = Client(enforce_csrf_checks=True)
    bob_list = Subscription.objects.get(subscriber__email="bob@example.org").mailing_list_id

    response = client.post(
        ann["url"], {"action": "save", "list": [ann["offers"].mailing_list_id, ann["events"].mailing_list_id, bob_list]}
    )

    assert response.status_code == 200
    assert "Your choices are saved." in response.content.decode()
    assert statuses(ann) == {"news": "unsubscribed", "offers": "active", "events": "active"}
    offers = Subscription.objects.get(pk=ann["offers"].pk)
    assert (offers.source, offers.unsubscribed_at) == ("preference-page", None)
    assert offers.confirmed_at is not None
    assert not Subscription.objects.filter(subscriber__email="ann@example.org", mailing_list_id=bob_list).exists()
    page = response.content.decode()
    assert f'value="{ann["offers"].mailing_list_id}" id="list-{ann["offers"].mailing_list_id}" checked' in page


def test_saving_with_nothing_ticked_leaves_every_list(ann):
    Client().post(ann["url"], {"action": "save"})

    assert statuses(ann) == {"news": "unsubscribed", "offers": "unsubscribed", "events": "unsubscribed"}
    assert Subscriber.objects.get(email="ann@example.org").status == Subscriber.Status.ACTIVE


def test_unsubscribe_from_everything(ann):
    response = Client().post(ann["url"], {"action": "unsubscribe-all", "list": [ann["news"].mailing_list_id]})

    assert "unsubscribed from everything" in response.content.decode()
    assert statuses(ann) == {"news": "unsubscribed", "offers": "unsubscribed", "events": "unsubscribed"}
    assert Subscriber.objects.get(email="ann@example.org").status == Subscriber.Status.UNSUBSCRIBED


def test_ticking_a_list_again_after_leaving_everything_makes_the_subscriber_active(ann):
    Client().post(ann["url"], {"action": "unsubscribe-all"})

    Client().post(ann["url"], {"action": "save", "list": [ann["news"].mailing_list_id]})

    assert statuses(ann)["news"] == "active"
    assert Subscriber.objects.get(email="ann@example.org").status == Subscriber.Status.ACTIVE


def test_a_suppressed_address_can_leave_but_cannot_opt_back_in(ann):
    suppression_add(email="ann@example.org", reason="complaint", source="test")

    response = Client().post(ann["url"], {"action": "save", "list": [ann["offers"].mailing_list_id]})

    assert statuses(ann) == {"news": "unsubscribed", "offers": "unsubscribed", "events": "unsubscribed"}
    assert "We could not subscribe you again" in response.content.decode()


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "1:forged-signature",
        "unsubscribe-token",  # a genuine token of the other kind of link
        signing.dumps(999_999, salt="mailer.preferences"),  # a message that no longer exists
    ],
)
def test_an_invalid_link_is_a_404_and_changes_nothing(ann, token):
    if token == "unsubscribe-token":
        token = unsubscribe_token_make(ann["news"].pk)

    for response in (Client().get(f"/p/{token}/"), Client().post(f"/p/{token}/", {"action": "unsubscribe-all"})):
        assert response.status_code == 404
        assert "not valid" in response.content.decode()
    assert statuses(ann) == {"news": "active", "offers": "unsubscribed", "events": "pending"}


def test_a_recipient_who_is_no_subscriber_has_nothing_to_manage():
    message = MessageFactory(to_email="walk-in@example.org")
    url = f"/p/{preferences_token_make(message.pk)}/"

    for response in (Client().get(url), Client().post(url, {"action": "unsubscribe-all"})):
        assert response.status_code == 200
        assert "Nothing to manage" in response.content.decode()
    assert not Subscriber.objects.exists()


def test_list_names_are_escaped_on_the_page():
    SubscriptionFactory(subscriber__email="eve@example.org", mailing_list__name="<script>x</script>")
    message = MessageFactory(to_email="eve@example.org")

    page = Client().get(f"/p/{preferences_token_make(message.pk)}/").content.decode()

    assert "<script>x" not in page and "&lt;script&gt;x" in page
