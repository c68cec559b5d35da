"""Fixtures shared by every test: factories, and the ESP sandbox wired into anymail's settings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from django.conf import settings

if TYPE_CHECKING:
    from delivery.sandbox import SandboxServer


def sandbox_anymail_settings(server: SandboxServer) -> dict:
    from delivery.sandbox.anymail_settings import anymail_settings_for

    return anymail_settings_for(server, settings.ANYMAIL)


@pytest.fixture(autouse=True)
def limits_key_prefix(settings) -> str:
    """Rate limits, daily caps and circuits under a key prefix of this test's own: they live outside the test
    database (Redis, or a file shared by every run), and one test's open circuit must not reach the next."""
    settings.MAILER_LIMITS_KEY_PREFIX = f"test-{uuid.uuid4().hex[:12]}:"
    # Likewise the shared cache's minute-old reputation figures: another test's providers may have had these ids.
    from django.core.cache import cache

    from delivery.services.reputation import REPUTATION_CACHE_KEY

    cache.delete(REPUTATION_CACHE_KEY)
    return settings.MAILER_LIMITS_KEY_PREFIX


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
