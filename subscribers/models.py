"""Who receives mail: subscribers, the lists they belong to, and their consent per list."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from core.models import TimeStampedModel


class Subscriber(TimeStampedModel):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed from everything"
        CLEANED = "cleaned", "Cleaned (bounced or complained)"

    email = models.CharField(max_length=254, help_text="Normalized (lower-case) address.")
    name = models.CharField(max_length=200, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)

    # Engagement, kept current as campaigns finish and ESP events are applied (subscribers.services.engagement;
    # the score is explained in docs/ENGAGEMENT.md). Defaults live in the database too: the import inserts set-wise.
    sent_count = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Campaign messages sent to this subscriber."
    )
    open_count = models.PositiveIntegerField(default=0, db_default=0)
    click_count = models.PositiveIntegerField(default=0, db_default=0)
    last_sent_at = models.DateTimeField(null=True, blank=True)
    last_open_at = models.DateTimeField(null=True, blank=True)
    last_click_at = models.DateTimeField(null=True, blank=True)
    sent_since_open = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Campaigns sent since the last open (or ever, if never opened)."
    )
    # ln(score) plus the decay accrued since the epoch: the current score is exp(anchor - rate * days since the
    # epoch), so "score at least N" is a plain comparison on this column and ordering by it orders by score.
    score_anchor = models.FloatField(null=True, blank=True, help_text="Engagement score, stored decay-free.")

    class Meta:
        ordering = ["email"]
        # One unique index and the primary key, nothing more: every index costs each imported row. (unique=True
        # on the field would add a second, LIKE-pattern index on PostgreSQL; status has too few values to help.)
        constraints = [models.UniqueConstraint(fields=["email"], name="subscriber_email_unique")]

    def __str__(self) -> str:
        return self.email

    @property
    def engagement_score(self) -> int:
        from subscribers.engagement import score_now

        return score_now(self.score_anchor)


class MailingList(TimeStampedModel):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    double_opt_in = models.BooleanField(
        default=False, help_text="New subscribers must confirm by email before they receive any campaign."
    )
    from_email = models.CharField(
        max_length=320, blank=True, help_text="Sender of this list's confirmation emails; empty: DEFAULT_FROM_EMAIL."
    )
    subscribers = models.ManyToManyField(Subscriber, through="Subscription", related_name="lists")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Subscription(TimeStampedModel):
    """A subscriber's consent for one list."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending confirmation"
        ACTIVE = "active", "Subscribed"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"

    # No index of their own: the unique (subscriber, list) and the (list, status) indexes lead with them.
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="subscriptions", db_index=False)
    mailing_list = models.ForeignKey(
        MailingList, on_delete=models.CASCADE, related_name="subscriptions", db_index=False
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    source = models.CharField(max_length=100, blank=True)
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    confirmation_sent_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subscriber", "mailing_list"], name="subscription_unique_per_list"),
        ]
        indexes = [models.Index(fields=["mailing_list", "status"], name="subscription_list_status")]

    def __str__(self) -> str:
        return f"{self.subscriber_id} on {self.mailing_list_id}: {self.status}"


class SubscriberImport(TimeStampedModel):
    """One CSV upload from the admin, run by a worker; the page shows its progress and result."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    mailing_list = models.ForeignKey(MailingList, on_delete=models.CASCADE, related_name="imports")
    file = models.FileField(upload_to="imports/%Y/%m/")
    options = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    errors_file = models.CharField(max_length=500, blank=True, help_text="Rejected rows, with line and reason.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Import into {self.mailing_list} ({self.status})"


class Segment(TimeStampedModel):
    """A saved audience rule (subscribers.segments explains the rule language); its count is always live."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    rules = models.JSONField(
        default=dict,
        help_text='For example {"all": [{"field": "attribute.plan", "op": "eq", "value": "pro"}, '
        '{"field": "opened", "op": "within_days", "value": 30}]}',
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from subscribers.segments import SegmentRuleInvalid, segment_rules_check

        try:
            segment_rules_check(self.rules)
        except SegmentRuleInvalid as exc:
            raise ValidationError({"rules": exc.message}) from exc
