"""A campaign end to end: admin-side services -> real Celery worker -> ESP sandbox -> webhooks -> suppression.

Everything is real but the ESP itself: the database, the broker, a `celery worker` process, anymail's
backends, and the ESP's webhooks calling this test's live server.
"""

from __future__ import annotations

import pytest

from campaigns.models import Campaign
from campaigns.services import campaign_send, campaigns_dispatch_due
from delivery.models import Message, Provider, Suppression
from delivery.services import mailing_send_chunk
from tests.factories import (
    CampaignFactory,
    MailingListFactory,
    ProviderFactory,
    SubscriberFactory,
    SubscriptionFactory,
    SuppressionFactory,
    TemplateFactory,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BOUNCE = "bounce@simulator.amazonses.com"
COMPLAINT = "complaint@simulator.amazonses.com"
SUPPRESSED = "already-suppressed@example.org"


def _pending(campaign: Campaign) -> int:
    return Message.objects.filter(mailing=campaign.mailing, status__in=Message.PENDING_STATUSES).count()


@pytest.mark.parametrize("kind", [Provider.Kind.POSTMARK, Provider.Kind.SENDGRID, Provider.Kind.AMAZON_SES])
def test_a_campaign_goes_out_once_and_bounces_and_complaints_come_back_as_suppressions(
    celery_worker_process, sandbox_with_webhooks, wait_for, kind
):
    sandbox = sandbox_with_webhooks
    # Given a list of 200: 197 people, the two simulator addresses, and one address already suppressed.
    news = MailingListFactory(name="News")
    people = [SubscriberFactory(name=f"Person {i}", attributes={"city": f"City {i}"}) for i in range(197)]
    people += [SubscriberFactory(email=BOUNCE, name="Bouncy"), SubscriberFactory(email=COMPLAINT, name="Grumpy")]
    people.append(SubscriberFactory(email=SUPPRESSED, name="Gone"))
    for person in people:
        SubscriptionFactory(subscriber=person, mailing_list=news)
    SuppressionFactory(email=SUPPRESSED)
    template = TemplateFactory(
        subject="News for {{ name }}",
        html="<p>Dear {{ subscriber.name }} in {{ attributes.city | default('your town') }}</p>",
        text="Dear {{ name }} in {{ attributes.city | default('your town') }}",
    )
    campaign = CampaignFactory(template=template, provider=ProviderFactory(kind=kind))
    campaign.lists.set([news])

    # When it is sent.
    campaign = campaign_send(campaign=campaign)

    # Then exactly 199 messages reach the ESP, each rendered with its own subscriber's data.
    wait_for(lambda: len(sandbox.messages) >= 199 and _pending(campaign) == 0, what="199 messages sent")
    received = sandbox.messages
    assert len(received) == 199
    by_address = {m.to[0]: m for m in received}
    assert len(by_address) == 199
    assert SUPPRESSED not in by_address
    for person in people[:197]:
        got = by_address[person.email]
        assert got.subject == f"News for {person.name}"
        assert f"Dear {person.name} in {person.attributes['city']}" in got.html
        headers = {k.lower(): v for k, v in got.headers.items()}
        assert headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
        assert "<http" in headers["list-unsubscribe"] and "<mailto:" in headers["list-unsubscribe"]
    suppressed = Message.objects.get(mailing=campaign.mailing, to_email=SUPPRESSED)
    assert suppressed.status == Message.Status.SUPPRESSED
    assert Message.objects.filter(mailing=campaign.mailing).count() == 200

    # And the ESP's webhooks come back: the bounce and the complaint are suppressed.
    wait_for(
        lambda: Suppression.objects.filter(email__in=[BOUNCE, COMPLAINT]).count() == 2,
        what="bounce and complaint suppressions from webhooks",
    )
    assert Suppression.objects.get(email=BOUNCE).reason == Suppression.Reason.HARD_BOUNCE
    assert Suppression.objects.get(email=COMPLAINT).reason == Suppression.Reason.COMPLAINT
    wait_for(
        lambda: Message.objects.filter(mailing=campaign.mailing, status=Message.Status.DELIVERED).count() >= 197,
        what="delivery events applied",
    )
    assert Message.objects.get(mailing=campaign.mailing, to_email=BOUNCE).status == Message.Status.BOUNCED

    # Dispatching again sends nothing new.
    assert campaigns_dispatch_due()["finished"] == 1
    assert mailing_send_chunk(mailing_id=campaign.mailing_id).claimed == 0
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    assert len(sandbox.messages) == 199

    # A second campaign to the same list skips the bounced, complained and suppressed addresses.
    second = CampaignFactory(template=template, provider=campaign.provider)
    second.lists.set([news])
    second = campaign_send(campaign=second)
    wait_for(lambda: _pending(second) == 0 and len(sandbox.messages) >= 199 + 197, what="second campaign sent")
    second_addresses = {m.to[0] for m in sandbox.messages[199:]}
    assert len(second_addresses) == 197
    assert not second_addresses & {BOUNCE, COMPLAINT, SUPPRESSED}
