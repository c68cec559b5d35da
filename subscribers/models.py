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

    class Meta:
        ordering = ["email"]
        # One unique index and the primary key, nothing more: every index costs each imported row. (unique=True
        # on the field would add a second, LIKE-pattern index on PostgreSQL; status has too few values to help.)
        constraints = [models.UniqueConstraint(fields=["email"], name="subscriber_email_unique")]

    def __str__(self) -> str:
        return self.email


class MailingList(TimeStampedModel):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
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
