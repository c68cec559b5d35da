"""The durable, idempotent inbox of what the ESPs report."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class EspEvent(models.Model):
    esp = models.CharField(max_length=20)
    dedupe_key = models.CharField(max_length=255, help_text="Unique per ESP; a repeated webhook maps to the same key.")
    # No index: a dozen values over millions of rows selects nothing, and every index costs each stored event and
    # each apply (which rewrites the row's index entries, since applied_at is in the unapplied index's condition).
    event_type = models.CharField(max_length=20)
    recipient = models.CharField(max_length=254, blank=True)  # indexed in Meta: no LIKE-pattern twin
    esp_message_id = models.CharField(max_length=255, blank=True)
    # Our message id from the ESP's metadata; once applied, the message it was applied to (also when it was found
    # by the ESP's message id and the recipient), so that a message's timeline finds every event about it.
    mailer_message_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    is_hard_bounce = models.BooleanField(default=False)
    # Set when the event is applied (webhooks.classification explains each). Defaults in the database too, for
    # whatever inserts events set-wise.
    is_soft_bounce = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Not delivered this time; enough of these in a window suppress the address.",
    )
    is_machine_open = models.BooleanField(
        default=False,
        db_default=False,
        help_text="An open by a privacy proxy or a scanner: kept, not counted as engagement.",
    )
    is_orphan = models.BooleanField(
        default=False, db_default=False, help_text="Applied without a message of ours to apply it to."
    )
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    description = models.TextField(blank=True)
    mta_response = models.TextField(blank=True)
    click_url = models.TextField(blank=True)
    user_agent = models.TextField(blank=True)
    payload = models.JSONField(default=dict)
    applied_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-occurred_at"]
        constraints = [models.UniqueConstraint(fields=["esp", "dedupe_key"], name="espevent_unique_dedupe_key")]
        indexes = [
            models.Index(fields=["occurred_at", "id"], name="espevent_unapplied", condition=Q(applied_at=None)),
            # A person's timeline, privacy requests, the soft-bounce count. Declared here rather than with db_index,
            # which on PostgreSQL adds a second, LIKE-pattern index that no query here uses (the admin's search is
            # a %...% match) and that every stored and every applied event would pay for.
            models.Index(fields=["recipient"], name="espevent_recipient"),
            # Orphans are few: counting them must not read the whole inbox.
            models.Index(fields=["occurred_at"], name="espevent_orphans", condition=Q(is_orphan=True)),
        ]

    def __str__(self) -> str:
        return f"{self.esp} {self.event_type} {self.recipient}"
