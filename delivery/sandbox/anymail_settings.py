"""anymail's settings pointed at a running sandbox: one place for tests, benchmarks and tools."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from delivery.sandbox.server import SandboxServer


def anymail_settings_for(server: SandboxServer, base: dict[str, Any]) -> dict[str, Any]:
    """`base` (settings.ANYMAIL) with every ESP's endpoint at `server`; SES makes one attempt per call, as in
    production, since retrying is the engine's decision."""
    return {
        **base,
        "SENDGRID_API_URL": server.sendgrid_api_url,
        "POSTMARK_API_URL": server.postmark_api_url,
        "AMAZON_SES_CLIENT_PARAMS": {
            "endpoint_url": server.ses_endpoint_url,
            "region_name": "us-east-1",
            "aws_access_key_id": "sandbox",
            "aws_secret_access_key": "sandbox",
            "config": {"retries": {"total_max_attempts": 1}},
        },
    }
