"""Demo data for `make run`: a list of 1,000 subscribers (with the ESP simulator's bounce and complaint
addresses), a template, a draft campaign and two example segments. Running it again changes nothing."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from campaigns.models import Campaign, Template
from subscribers.models import MailingList, Segment, Subscriber, Subscription

DEMO_LIST_SLUG = "demo"
DEMO_SIZE = 1000
SIMULATOR_ADDRESSES = ["bounce@simulator.amazonses.com", "complaint@simulator.amazonses.com"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Osaka", "Lima", "Tallinn", "Austin", "Perth"]

DEMO_HTML = """<!doctype html>
<html><body style="font-family: sans-serif; max-width: 36rem; margin: auto">
  <h1>Hello {{ name | default("there") }}!</h1>
  <p>Here is what is new in {{ attributes.city | default("your town") }} this week.</p>
  <p><a href="https://example.com/news">Read the news</a></p>
  <hr>
  <p style="font-size: 12px; color: #666">
    You receive this because you subscribed to the demo list.
    <a href="{{ unsubscribe_url }}">Unsubscribe</a>.
  </p>
</body></html>"""

DEMO_TEXT = """Hello {{ name | default("there") }}!

Here is what is new in {{ attributes.city | default("your town") }} this week:
https://example.com/news

Unsubscribe: {{ unsubscribe_url }}"""


# Examples of the rule language (docs/SEGMENTS.md) that match part of the demo list.
DEMO_SEGMENTS = {
    "Demo: pro plan in Oslo or Lisbon": {
        "all": [
            {"field": "list", "op": "in", "value": [DEMO_LIST_SLUG]},
            {"field": "attribute.plan", "op": "eq", "value": "pro"},
            {"field": "attribute.city", "op": "in", "value": ["Oslo", "Lisbon"]},
        ]
    },
    "Demo: opened in the last 30 days": {"field": "opened", "op": "within_days", "value": 30},
}


@dataclass(frozen=True)
class DemoData:
    mailing_list: MailingList
    template: Template
    campaign: Campaign
    subscribers_created: int


@transaction.atomic
def demo_data_ensure(*, size: int = DEMO_SIZE) -> DemoData:
    mailing_list, _ = MailingList.objects.get_or_create(
        slug=DEMO_LIST_SLUG, defaults={"name": "Demo list", "description": "Made by `make run`."}
    )
    addresses = SIMULATOR_ADDRESSES + [f"demo{i:04d}@example.com" for i in range(size - len(SIMULATOR_ADDRESSES))]
    existing = set(Subscriber.objects.filter(email__in=addresses).values_list("email", flat=True))
    new = [
        Subscriber(
            email=address,
            name=f"Demo Person {index}",
            attributes={"city": CITIES[index % len(CITIES)], "plan": "free" if index % 3 else "pro"},
        )
        for index, address in enumerate(addresses)
        if address not in existing
    ]
    Subscriber.objects.bulk_create(new, batch_size=500)
    subscriber_ids = Subscriber.objects.filter(email__in=addresses).values_list("pk", flat=True)
    Subscription.objects.bulk_create(
        [Subscription(subscriber_id=pk, mailing_list=mailing_list, source="demo") for pk in subscriber_ids],
        batch_size=500,
        ignore_conflicts=True,
    )
    template, _ = Template.objects.get_or_create(
        name="Demo newsletter",
        defaults={"subject": "What's new in {{ attributes.city }}, {{ name }}", "html": DEMO_HTML, "text": DEMO_TEXT},
    )
    campaign = Campaign.objects.filter(name="Demo campaign").first()
    if campaign is None:
        campaign = Campaign.objects.create(
            name="Demo campaign", template=template, from_email="Mailer Demo <demo@mailer.example>"
        )
        campaign.lists.set([mailing_list])
    for name, rules in DEMO_SEGMENTS.items():
        Segment.objects.get_or_create(name=name, defaults={"rules": rules, "description": "Made by `make run`."})
    return DemoData(mailing_list, template, campaign, len(new))
