"""The sending engine's data: providers, the suppression list, mailings (content) and messages (recipients).

delivery knows nothing of campaigns or subscribers: a higher app freezes its content into a Mailing and
creates one Message per recipient; everything else here is generic.
"""

from __future__ import annotations

from typing import ClassVar

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from core.addresses import address_hash
from core.models import TimeStampedModel


class WarmingPlan(TimeStampedModel):
    """How many messages a new provider (or IP, or domain) may send on each day of its warm-up.

    `daily_caps[0]` is day 1. After the last day the plan no longer limits the provider. A day whose bounce or
    complaint rate went above the thresholds is repeated (the provider is held) rather than followed by more.
    """

    name = models.CharField(max_length=100, unique=True)
    daily_caps = models.JSONField(help_text="Messages allowed on day 1, day 2, ... e.g. [50, 100, 500, 1000]")
    max_bounce_rate = models.FloatField(default=0.02, help_text="Hold the plan when a day's bounce rate is above.")
    max_complaint_rate = models.FloatField(
        default=0.0008, help_text="Hold the plan when a day's complaint rate is above (0.08 % by default)."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def cap_for_day(self, day: int) -> int | None:
        """The cap on warming day `day` (1-based); None once the plan is over (or not started: day 0)."""
        caps = self.daily_caps if isinstance(self.daily_caps, list) else []
        if day < 1 or day > len(caps):
            return None
        return int(caps[day - 1])


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
    weight = models.PositiveSmallIntegerField(
        default=1, help_text="Share of traffic among enabled providers of the same priority."
    )
    secret_env = models.CharField(
        max_length=100,
        blank=True,
        help_text="Name of the environment variable holding this provider's secret (API key, server token, "
        "'ACCESS_KEY_ID:SECRET' for SES, an smtp:// URL for SMTP). Empty: the settings' default for its kind.",
    )
    max_rate = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.01)],
        help_text="Messages per second at most; empty: no limit.",
    )
    daily_cap = models.PositiveIntegerField(null=True, blank=True, help_text="Messages per day at most.")
    routing_domains = models.JSONField(
        default=list,
        blank=True,
        help_text='Recipient domains this provider serves, with * wildcards, e.g. ["gmail.com", "*.edu"]. '
        "Empty: every domain.",
    )
    message_stream = models.CharField(max_length=100, blank=True, help_text="Postmark message stream.")
    configuration_set = models.CharField(max_length=100, blank=True, help_text="Amazon SES configuration set.")
    warming_plan = models.ForeignKey(
        WarmingPlan, null=True, blank=True, on_delete=models.PROTECT, related_name="providers"
    )
    warming_day = models.PositiveSmallIntegerField(default=0, help_text="Day of the warming plan; 0: not started.")
    warming_day_started_on = models.DateField(null=True, blank=True)
    warming_held_reason = models.CharField(
        max_length=300, blank=True, help_text="Why the plan is not advancing; empty: it advances each midnight."
    )

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
    providers = models.ManyToManyField(
        Provider, blank=True, related_name="pooled_mailings", help_text="A pool to route among; empty: all."
    )
    list_id = models.CharField(max_length=200, blank=True, help_text="List-Id header value for bulk mail.")
    is_paused = models.BooleanField(
        default=False, help_text="No new chunk is claimed while paused; a chunk already in flight finishes."
    )
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
        DEAD = "dead", "Dead (gave up after retries)"

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


class SendAttempt(models.Model):
    """One try at handing a message to a provider: the record that shows what happened to it, and when."""

    class Outcome(models.TextChoices):
        IN_FLIGHT = "in_flight", "In flight"
        SENT = "sent", "Sent"
        RETRY = "retry", "Failed, will retry"
        FAILED = "failed", "Failed for good"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attempts_log")
    provider = models.ForeignKey(Provider, null=True, on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.IN_FLIGHT)
    error = models.TextField(blank=True)
    esp_message_id = models.CharField(max_length=255, blank=True)

    class Meta:
        indexes = [models.Index(fields=["message", "started_at"], name="sendattempt_message")]

    def __str__(self) -> str:
        return f"attempt on {self.message_id}: {self.outcome}"


class DeadLetterManager(models.Manager["DeadLetter"]):
    def get_queryset(self) -> models.QuerySet[DeadLetter]:
        return super().get_queryset().filter(status=Message.Status.DEAD)


class DeadLetter(Message):
    """A message the engine gave up on after MAILER_MAX_ATTEMPTS retryable failures: the admin's dead-letter list.

    Only a view of Message (a proxy, no table of its own): an operator retries or discards it from there.
    """

    objects: ClassVar[DeadLetterManager] = DeadLetterManager()

    class Meta:
        proxy = True
        verbose_name = "dead letter"
        verbose_name_plural = "dead letters"


class MailingCounters(models.Model):
    """The numbers of a mailing that ESP events move (delivery.services.stats keeps them).

    Unique opens and clicks count a message's first human open and first click; `opens` and `clicks` count every
    one; machine opens (privacy proxies, scanners) are counted apart and in no rate. A message counts as bounced,
    hard or soft, by the bounce that moved it to `bounced`, and as complained once. How many were sent is read
    from the messages' statuses (delivery.selectors.message_status_counts), which the sending engine keeps.
    """

    delivered = models.PositiveIntegerField(default=0, db_default=0)
    hard_bounced = models.PositiveIntegerField(default=0, db_default=0)
    soft_bounced = models.PositiveIntegerField(default=0, db_default=0)
    complained = models.PositiveIntegerField(default=0, db_default=0)
    unsubscribed = models.PositiveIntegerField(default=0, db_default=0)
    unique_opens = models.PositiveIntegerField(default=0, db_default=0)
    unique_clicks = models.PositiveIntegerField(default=0, db_default=0)
    opens = models.PositiveIntegerField(default=0, db_default=0)
    clicks = models.PositiveIntegerField(default=0, db_default=0)
    machine_opens = models.PositiveIntegerField(default=0, db_default=0)

    COUNTERS: ClassVar[tuple[str, ...]] = (
        "delivered",
        "hard_bounced",
        "soft_bounced",
        "complained",
        "unsubscribed",
        "unique_opens",
        "unique_clicks",
        "opens",
        "clicks",
        "machine_opens",
    )

    class Meta:
        abstract = True


class MailingStats(MailingCounters):
    """A mailing's totals: one row read by its page instead of a scan of its events."""

    mailing = models.OneToOneField(Mailing, primary_key=True, on_delete=models.CASCADE, related_name="stats")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "mailing stats"

    def __str__(self) -> str:
        return f"stats of mailing {self.mailing_id}"


class MailingHourlyStats(MailingCounters):
    """The same numbers by the hour in which the events happened (UTC): the mailing's series."""

    mailing = models.ForeignKey(Mailing, on_delete=models.CASCADE, related_name="hourly_stats", db_index=False)
    hour = models.DateTimeField(help_text="Start of the hour, UTC.")

    class Meta:
        verbose_name_plural = "mailing hourly stats"
        constraints = [models.UniqueConstraint(fields=["mailing", "hour"], name="mailinghourlystats_unique_hour")]

    def __str__(self) -> str:
        return f"mailing {self.mailing_id} at {self.hour:%Y-%m-%d %H}:00"


class MailingLinkClicks(models.Model):
    """Clicks on one link of a mailing (every human click; the links Mailer adds per recipient, such as the
    unsubscribe link, are counted as one link each)."""

    mailing = models.ForeignKey(Mailing, on_delete=models.CASCADE, related_name="link_clicks", db_index=False)
    url = models.TextField()
    url_hash = models.CharField(max_length=64, help_text="SHA-256 of the url: the key (a url may be long).")
    clicks = models.PositiveIntegerField(default=0, db_default=0)

    class Meta:
        verbose_name_plural = "mailing link clicks"
        constraints = [models.UniqueConstraint(fields=["mailing", "url_hash"], name="mailinglinkclicks_unique_url")]

    def __str__(self) -> str:
        return f"{self.url} ({self.clicks})"


class MailingUnsubscribe(models.Model):
    """A message whose recipient unsubscribed through it, by its link or at the ESP: counted once, however many
    times and ways it is reported."""

    message = models.OneToOneField(Message, primary_key=True, on_delete=models.CASCADE, related_name="unsubscribe")
    mailing = models.ForeignKey(Mailing, on_delete=models.CASCADE, related_name="unsubscribes")
    occurred_at = models.DateTimeField()
    source = models.CharField(max_length=100, blank=True)

    def __str__(self) -> str:
        return f"unsubscribe through message {self.message_id}"
