"""anymail's tracking signal -> the EspEvent inbox. Only storing happens in the request; applying is a task."""

from __future__ import annotations

from typing import Any

from anymail.signals import AnymailTrackingEvent, tracking
from django.dispatch import receiver


@receiver(tracking, dispatch_uid="mailer.webhooks.tracking")
def tracking_event_store(sender: Any, event: AnymailTrackingEvent, esp_name: str, **kwargs: Any) -> None:
    from webhooks.services import esp_event_record

    esp = {"SendGrid": "sendgrid", "Amazon SES": "amazon_ses", "Postmark": "postmark"}.get(esp_name, esp_name.lower())
    esp_event_record(esp=esp, event=event)
