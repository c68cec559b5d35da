"""Provider kinds mapped to Django email backends, and how their errors are classified.

The vendor differences live in lookup tables here, so the sending flow is written once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from anymail.exceptions import AnymailAPIError, AnymailRecipientsRefused, AnymailRequestsAPIError
from django.conf import settings
from django.core.mail import get_connection
from django.core.mail.backends.base import BaseEmailBackend

from core.exceptions import ApplicationError
from delivery.batching import POSTMARK_MAX_BATCH
from delivery.models import Provider

BACKENDS: dict[str, str] = {
    Provider.Kind.SENDGRID: "anymail.backends.sendgrid.EmailBackend",
    # anymail's Postmark backend, able to post many different messages in one /email/batch call as well
    Provider.Kind.POSTMARK: "delivery.batching.PostmarkBatchBackend",
    Provider.Kind.AMAZON_SES: "anymail.backends.amazon_ses.EmailBackend",
    Provider.Kind.SMTP: "django.core.mail.backends.smtp.EmailBackend",
}

# SES error codes (botocore ClientError) worth another try later; everything else is the request's fault.
SES_RETRYABLE_CODES = {
    "TooManyRequestsException",
    "Throttling",
    "ThrottlingException",
    "ServiceUnavailable",
    "InternalFailure",
    "LimitExceededException",
}


class ProviderMisconfigured(ApplicationError):
    code = "provider_misconfigured"


def provider_secret(provider: Provider) -> str | None:
    """The provider's secret from the environment variable it names; None when it names none (the settings'
    default for its kind applies). Secrets are never stored in the database."""
    if not provider.secret_env:
        return None
    value = os.environ.get(provider.secret_env, "").strip()
    if not value:
        raise ProviderMisconfigured(
            f"Provider '{provider.name}': the environment variable {provider.secret_env} is not set.",
            {"provider": provider.pk, "variable": provider.secret_env},
        )
    return value


def provider_connection(provider: Provider) -> BaseEmailBackend:
    """A new backend instance for one chunk: backends are not thread-safe, so never share one.

    Raises ProviderMisconfigured when the secret it names is missing (or malformed).
    """
    kwargs: dict[str, Any] = {}
    secret = provider_secret(provider)
    if provider.kind == Provider.Kind.SENDGRID and secret:
        kwargs["api_key"] = secret
    elif provider.kind == Provider.Kind.POSTMARK:
        if secret:
            kwargs["server_token"] = secret
        if provider.message_stream:
            kwargs["message_stream"] = provider.message_stream
    elif provider.kind == Provider.Kind.AMAZON_SES:
        if secret:
            key_id, sep, secret_key = secret.partition(":")
            if not sep or not key_id or not secret_key:
                raise ProviderMisconfigured(
                    f"Provider '{provider.name}': {provider.secret_env} must hold ACCESS_KEY_ID:SECRET_ACCESS_KEY.",
                    {"provider": provider.pk, "variable": provider.secret_env},
                )
            params = dict(settings.ANYMAIL.get("AMAZON_SES_CLIENT_PARAMS", {}))
            params.update({"aws_access_key_id": key_id, "aws_secret_access_key": secret_key})
            kwargs["client_params"] = params
        if provider.configuration_set:
            kwargs["configuration_set_name"] = provider.configuration_set
    elif provider.kind == Provider.Kind.SMTP:
        url = urlsplit(secret or settings.SMTP_URL)
        kwargs = {
            "host": url.hostname or "127.0.0.1",
            "port": url.port or 25,
            "username": unquote(url.username or ""),
            "password": unquote(url.password or ""),
            "use_tls": url.scheme == "smtp+tls",
            "use_ssl": url.scheme == "smtps",
            "timeout": 30,
        }
    return get_connection(BACKENDS[provider.kind], **kwargs)


def provider_batch_limit(provider: Provider) -> int:
    """How many different messages one call to this provider can carry: 1 where there is no such API."""
    return POSTMARK_MAX_BATCH if provider.kind == Provider.Kind.POSTMARK else 1


@dataclass(frozen=True)
class SendError:
    retryable: bool
    reason: str


def send_error_classify(exc: Exception) -> SendError:
    """Retry only what can recover (network, timeouts, 5xx, 429, throttling); the rest fails for good."""
    text = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else exc.__class__.__name__
    if isinstance(exc, AnymailRecipientsRefused):
        return SendError(False, f"recipient refused: {text}")
    if isinstance(exc, AnymailRequestsAPIError):
        status = exc.status_code
        if status is None or status == 429 or status >= 500:
            return SendError(True, f"HTTP {status or 'network error'}: {text}")
        return SendError(False, f"HTTP {status}: {text}")
    if isinstance(exc, AnymailAPIError):
        cause = exc.__cause__
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code", "")
            http_status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            retryable = code in SES_RETRYABLE_CODES or http_status == 429 or http_status >= 500
            return SendError(retryable, f"{code or 'error'}: {text}")
        # botocore connection errors and the like carry no response.
        return SendError(cause is not None, text)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError, OSError)):
        return SendError(True, f"network error: {text}")
    return SendError(False, text)
