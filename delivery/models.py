"""The sending engine's data: providers, the suppression list, mailings (content) and messages (recipients).

delivery knows nothing of campaigns or subscribers: a higher app freezes its content into a Mailing and
creates one Message per recipient; everything else here is generic.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from core.addresses import address_hash
from core.models import TimeStampedModel


class Provider(TimeStampedModel):
    class Kind(models.TextChoices):
        SENDGRID = "sendgrid", "SendGrid"
        AMAZON_SES = "amazon_ses", "Amazon SES"
        POSTMARK = "postmark", "Postmark"
        SMTP = "smtp", "SMTP"

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    is_enabled = models.BooleanField(default=True)
    priority = models.PositiveSmallIntegerField(default=100, help_text="Lower numbers are tried first.")

    class Meta:
        ordering = ["priority", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"


class Suppression(models.Model):
    """An address that must never be sent to again, whatever list or campaign asks for it."""

    class Reason(models.TextChoices):
        HARD_BOUNCE = "hard_bounce", "Hard bounce"
        COMPLAINT = "complaint", "Spam complaint"
        UNSUBSCRIBE = "unsubscribe", "Unsubscribed"
        MANUAL = "manual", "Added by hand"
        ERASED = "erased", "Erased on request"

    # Empty (NULL) once the person is erased: only the hash is kept, so the address cannot come back.
    email = models.CharField(
        max_length=254, unique=True, null=True, blank=True, help_text="Normalized (lower-case) address."
    )
    email_hash = models.CharField(
        max_length=64, unique=True, help_text="SHA-256 of the normalized address (core.addresses.address_hash)."
    )
    reason = models.CharField(max_length=20, choices=Reason.choices)
    source = models.CharField(max_length=100, blank=True, help_text="Where it came from, e.g. webhook:postmark.")
    detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email or 'erased ' + self.email_hash[:12]} ({self.reason})"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.email and not self.email_hash:
            self.email_hash = address_hash(self.email)
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class Mailing(TimeStampedModel):
    """A frozen content snapshot sent to many: editing the source template mid-send changes nothing here."""

    class Kind(models.TextChoices):
        CAMPAIGN = "campaign", "Campaign"
        TRANSACTIONAL = "transactional", "Transactional"
        SYSTEM = "system", "System"

    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.CAMPAIGN)
    name = models.CharField(max_length=200, blank=True)
    subject_template = models.TextField()
    html_template = models.TextField(blank=True)
    text_template = models.TextField(blank=True)
    from_email = models.CharField(max_length=320)
    reply_to = models.CharField(max_length=320, blank=True)
    headers = models.JSONField(default=dict, blank=True)
    provider = models.ForeignKey(Provider, null=True, blank=True, on_delete=models.PROTECT, related_name="mailings")
    list_id = models.CharField(max_length=200, blank=True, help_text="List-Id header value for bulk mail.")
    # Opaque to delivery; the app that created the mailing reads it back (for example the lists an unsubscribe
    # link should leave).
    owner_data = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return self.name or f"Mailing {self.pk}"

    @property
    def is_bulk(self) -> bool:
        return self.kind == self.Kind.CAMPAIGN


class Message(models.Model):
    """One recipient of one Mailing. Rendered at send time; only the small personal context is stored."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        BOUNCED = "bounced", "Bounced"
        COMPLAINED = "complained", "Complained"
        FAILED = "failed", "Failed"
        SUPPRESSED = "suppressed", "Suppressed"
        CANCELLED = "cancelled", "Cancelled"

    PENDING_STATUSES = (Status.QUEUED, Status.SENDING)

    mailing = models.ForeignKey(Mailing, on_delete=models.CASCADE, related_name="messages")
    to_email = models.CharField(max_length=254)
    context = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    provider = models.ForeignKey(Provider, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    esp_message_id = models.CharField(max_length=255, blank=True, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["mailing", "to_email"], name="message_unique_per_mailing_address"),
        ]
        indexes = [
            models.Index(fields=["mailing", "status"], name="message_mailing_status"),
            models.Index(fields=["lease_expires_at"], name="message_sending_lease", condition=Q(status="sending")),
        ]

    def __str__(self) -> str:
        return f"{self.to_email} ({self.status})"
