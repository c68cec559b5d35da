"""Every webhooks test trusts this run's locally made SNS key (served by the tests' certificate fetcher) and the
topic of the SES payloads in payloads.py, as an installation trusts its own SES topic; nothing is fetched."""

from __future__ import annotations

import pytest

from webhooks.tests import signed_payloads

SES_TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:mailer-ses-events"  # payloads.ses_notification's topic


@pytest.fixture(autouse=True)
def sns_trust(settings) -> None:
    settings.MAILER_SES_TOPIC_ARNS = [SES_TOPIC_ARN]
    settings.MAILER_SNS_CERT_FETCHER = "webhooks.tests.signed_payloads.sns_certificate_serve"
    signed_payloads.CERT_FETCHES.clear()
