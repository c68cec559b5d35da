"""Fixtures shared by every test: factories, and the ESP sandbox wired into anymail's settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from django.conf import settings

if TYPE_CHECKING:
    from delivery.sandbox import SandboxServer


def sandbox_anymail_settings(server: SandboxServer) -> dict:
    return {
        **settings.ANYMAIL,
        "SENDGRID_API_URL": server.sendgrid_api_url,
        "POSTMARK_API_URL": server.postmark_api_url,
        "AMAZON_SES_CLIENT_PARAMS": {
            "endpoint_url": server.ses_endpoint_url,
            "region_name": "us-east-1",
            "aws_access_key_id": "sandbox",
            "aws_secret_access_key": "sandbox",
            # One attempt per call: retrying is the engine's decision, not botocore's.
            "config": {"retries": {"total_max_attempts": 1}},
        },
    }


def webhook_auth() -> tuple[str, str]:
    user, _, password = settings.MAILER_WEBHOOK_SECRETS[0].partition(":")
    return user, password


@pytest.fixture
def sandbox(settings) -> Iterator[SandboxServer]:
    """The ESP sandbox, with every anymail backend pointed at it; no webhooks."""
    from delivery.sandbox import SandboxServer

    with SandboxServer(seed=1) as server:
        settings.ANYMAIL = sandbox_anymail_settings(server)
        yield server


@pytest.fixture
def sandbox_with_webhooks(settings, live_server) -> Iterator[SandboxServer]:
    """The ESP sandbox posting its webhooks back to this test's live server."""
    from delivery.sandbox import SandboxServer

    with SandboxServer(seed=1, webhook_url=live_server.url, webhook_auth=webhook_auth()) as server:
        settings.ANYMAIL = sandbox_anymail_settings(server)
        yield server
