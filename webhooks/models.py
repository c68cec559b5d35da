"""The durable, idempotent inbox of what the ESPs report."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class EspEvent(models.Model):
    esp = models.CharField(max_length=20)
    dedupe_key = models.CharField(max_length=255, help_text="Unique per ESP; a repeated webhook maps to the same key.")
    event_type = models.CharField(max_length=20, db_index=True)
    recipient = models.CharField(max_length=254, blank=True, db_index=True)
    esp_message_id = models.CharField(max_length=255, blank=True)
    mailer_message_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    is_hard_bounce = models.BooleanField(default=False)
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
        ]

    def __str__(self) -> str:
        return f"{self.esp} {self.event_type} {self.recipient}"
