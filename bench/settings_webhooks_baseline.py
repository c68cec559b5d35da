"""Bench-only settings for bench/webhooks.py's baseline: the project's settings, with the tracking receiver that
stores events replaced by one that does nothing. URLs, views (anymail's, with Mailer's checks) and the middleware
stack stay the same, so the difference between the two runs is what storing costs.
"""

from typing import Any

from mailer_project.settings import *  # noqa: F403
from mailer_project.settings import INSTALLED_APPS
from webhooks.apps import WebhooksConfig


def _tracking_ignore(sender: Any, **kwargs: Any) -> None:
    """Receives each event and keeps nothing."""


class BaselineWebhooksConfig(WebhooksConfig):
    def ready(self) -> None:
        super().ready()
        from anymail.signals import tracking

        if not tracking.disconnect(dispatch_uid="mailer.webhooks.tracking"):
            raise RuntimeError("the inbox's tracking receiver was not connected under the expected dispatch_uid")
        tracking.connect(_tracking_ignore, dispatch_uid="bench.webhooks.ignore", weak=False)


INSTALLED_APPS = [
    "bench.settings_webhooks_baseline.BaselineWebhooksConfig" if app == "webhooks" else app for app in INSTALLED_APPS
]
