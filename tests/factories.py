"""factory_boy factories shared by every app's tests."""

from __future__ import annotations

from datetime import timedelta

import factory
from django.utils import timezone

from campaigns.models import Campaign, Template
from delivery.models import Mailing, Message, Provider, SendAttempt, Suppression
from subscribers.models import MailingList, Subscriber, Subscription


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider
        django_get_or_create = ["name"]

    name = factory.LazyAttribute(lambda o: f"{o.kind}-test")
    kind = Provider.Kind.POSTMARK
    priority = 1


class SubscriberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscriber

    email = factory.Sequence(lambda n: f"person{n}@example.org")
    name = factory.Sequence(lambda n: f"Person {n}")
    attributes = factory.LazyFunction(dict)


class MailingListFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MailingList

    name = factory.Sequence(lambda n: f"List {n}")
    slug = factory.Sequence(lambda n: f"list-{n}")


class SubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscription

    subscriber = factory.SubFactory(SubscriberFactory)
    mailing_list = factory.SubFactory(MailingListFactory)


class TemplateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Template

    name = factory.Sequence(lambda n: f"Template {n}")
    subject = "Hello {{ name }}"
    html = "<p>Hi {{ name }} from {{ attributes.city | default('nowhere') }}</p><a href='{{ unsubscribe_url }}'>x</a>"
    text = "Hi {{ name }} from {{ attributes.city | default('nowhere') }}. Leave: {{ unsubscribe_url }}"


class CampaignFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Campaign

    name = factory.Sequence(lambda n: f"Campaign {n}")
    template = factory.SubFactory(TemplateFactory)
    from_email = "News <news@mailer.example>"


class MailingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Mailing

    name = "test mailing"
    subject_template = "Hi {{ name }}"
    html_template = "<p>Hello {{ name }}</p>"
    text_template = "Hello {{ name }}"
    from_email = "News <news@mailer.example>"


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    mailing = factory.SubFactory(MailingFactory)
    to_email = factory.Sequence(lambda n: f"rcpt{n}@example.org")
    context = factory.LazyAttribute(lambda o: {"email": o.to_email, "name": "Ann", "attributes": {}})


class SendAttemptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SendAttempt

    message = factory.SubFactory(MessageFactory)
    provider = factory.SubFactory(ProviderFactory)
    started_at = factory.LazyFunction(timezone.now)
    finished_at = factory.LazyAttribute(lambda o: o.started_at + timedelta(milliseconds=120))
    outcome = SendAttempt.Outcome.RETRY
    error = "provider answered 503"


class SuppressionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Suppression

    email = factory.Sequence(lambda n: f"suppressed{n}@example.org")
    reason = Suppression.Reason.MANUAL
