"""What is sent and when: templates (Jinja2, sandboxed) and campaigns."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from core.models import TimeStampedModel
from delivery.exceptions import TemplateSyntaxInvalid
from delivery.models import Mailing, Provider
from delivery.rendering import template_check
from subscribers.models import MailingList, Segment


class Template(TimeStampedModel):
    name = models.CharField(max_length=200, unique=True)
    subject = models.CharField(max_length=500, help_text="Jinja2, e.g. Hello {{ name }}")
    html = models.TextField(blank=True, help_text="Jinja2 HTML body; values are HTML-escaped.")
    text = models.TextField(blank=True, help_text="Jinja2 plain-text body.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Refuse a template that does not compile or reaches for internals, naming the part and line."""
        errors: dict[str, str] = {}
        for field in ("subject", "html", "text"):
            try:
                template_check(getattr(self, field), part=field)
            except TemplateSyntaxInvalid as exc:
                errors[field] = exc.message
        if not (self.html or self.text):
            errors["html"] = "A template needs an HTML or a text body."
        if errors:
            raise ValidationError(errors)


class Campaign(TimeStampedModel):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SCHEDULED = "scheduled", "Scheduled"
        SENDING = "sending", "Sending"
        PAUSED = "paused", "Paused"
        SENT = "sent", "Sent"
        CANCELLED = "cancelled", "Cancelled"

    name = models.CharField(max_length=200)
    template = models.ForeignKey(Template, null=True, blank=True, on_delete=models.PROTECT, related_name="campaigns")
    lists = models.ManyToManyField(MailingList, blank=True, related_name="campaigns")
    segment = models.ForeignKey(
        Segment,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="campaigns",
        help_text="With lists: their subscribers who match. Alone: every subscriber who matches and has a "
        "confirmed subscription to some list.",
    )
    exclude_lists = models.ManyToManyField(
        MailingList,
        blank=True,
        related_name="excluded_from_campaigns",
        help_text="Subscribers of these lists are left out, whatever else they match.",
    )
    from_email = models.CharField(max_length=320, help_text="For example: Acme News &lt;news@acme.example&gt;")
    reply_to = models.CharField(max_length=320, blank=True)
    provider = models.ForeignKey(
        Provider,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        help_text="Pin every message to this provider. Empty: route among the pool below.",
    )
    providers = models.ManyToManyField(
        Provider,
        blank=True,
        related_name="pooled_campaigns",
        help_text="Providers this campaign may use; empty: every enabled provider.",
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT, db_index=True)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    mailing = models.OneToOneField(Mailing, null=True, blank=True, on_delete=models.PROTECT, related_name="campaign")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name
