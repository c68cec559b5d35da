"""anymail's tracking signal -> the EspEvent inbox. Only storing happens in the request; applying is a task."""

from __future__ import annotations

from typing import Any

from anymail.signals import AnymailTrackingEvent, tracking
from django.dispatch import receiver

from webhooks.inbox import esp_event_add

# anymail's ESP names -> ours (EspEvent.esp); an ESP not listed keeps its name in lower case.
ESP_NAMES = {"SendGrid": "sendgrid", "Amazon SES": "amazon_ses", "Postmark": "postmark"}


@receiver(tracking, dispatch_uid="mailer.webhooks.tracking")
def tracking_event_store(sender: Any, event: AnymailTrackingEvent, esp_name: str, **kwargs: Any) -> None:
    # Inside a webhook POST the event joins the POST's batch, stored by webhooks.middleware; else it is stored now.
    esp_event_add(esp=ESP_NAMES.get(esp_name) or esp_name.lower(), event=event)
