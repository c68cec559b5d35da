"""Mailer's own webhook checks, on top of the basic auth of webhooks.middleware and anymail's checks.

What a refusal is (WebhookRejected, answered as JSON by webhooks.views), SendGrid's signed-timestamp window, and the
source-IP allow-list with the rules for finding the client's address behind reverse proxies. The SNS signature
checks are in webhooks.sns. A refused POST reaches no receiver, so nothing is stored.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Sequence

from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRejected(Exception):
    """A webhook POST refused: 403 when the sender could not be shown genuine, 400 when the request is malformed,
    503 when a check could not be made right now (the ESP retries)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def webhook_rejection_response(*, rejection: WebhookRejected, request: HttpRequest) -> JsonResponse:
    logger.warning(
        "Webhook %s refused with %s (%s): %s",
        request.path,
        rejection.status,
        rejection.code,
        rejection.message,
        extra={"remote_addr": request.META.get("REMOTE_ADDR", "")},
    )
    return JsonResponse({"error": {"code": rejection.code, "message": rejection.message}}, status=rejection.status)


def signed_timestamp_check(*, timestamp: str, now: float, max_age_seconds: int, max_future_seconds: int) -> None:
    """Refuse a signed webhook whose signed timestamp (epoch seconds) is older than the window or too far ahead.

    The signature covers the timestamp, so an attacker who captured a POST can replay it only inside the window;
    within it, the inbox's dedupe keys make the replay a no-op.
    """
    try:
        signed_at = int(timestamp)
    except ValueError:
        raise WebhookRejected(403, "timestamp_invalid", f"Signed timestamp {timestamp!r} is not a number.") from None
    age = now - signed_at
    if age > max_age_seconds:
        raise WebhookRejected(
            403,
            "timestamp_too_old",
            f"Signed timestamp is {int(age)} s old, over the {max_age_seconds} s window: a replay is refused.",
        )
    if -age > max_future_seconds:
        raise WebhookRejected(
            403,
            "timestamp_in_future",
            f"Signed timestamp is {int(-age)} s in the future, over the {max_future_seconds} s allowed clock skew.",
        )


def request_client_ip(*, request: HttpRequest, trusted_proxy_count: int) -> IpAddress | None:
    """The address of whoever connected to the outermost of our own proxies; None when it cannot be told.

    With no proxy (0), that is REMOTE_ADDR. Behind N proxies that each append the address they received from to
    X-Forwarded-For, the last N entries were written by our proxies and the N-th from the right is the client as the
    outermost one saw it; entries further left were sent by the client and prove nothing.
    """
    if trusted_proxy_count <= 0:
        candidate = request.META.get("REMOTE_ADDR", "")
    else:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) < trusted_proxy_count:
            return None
        candidate = forwarded[-trusted_proxy_count]
    try:
        address = ipaddress.ip_address(candidate.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=16)
def _networks(allowed: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in allowed)


def source_ip_check(*, request: HttpRequest, allowed: Sequence[str], trusted_proxy_count: int, esp: str) -> None:
    """Refuse a POST whose client address is outside `allowed` (IPs or CIDRs); an empty list allows everyone."""
    if not allowed:
        return
    address = request_client_ip(request=request, trusted_proxy_count=trusted_proxy_count)
    if address is None:
        raise WebhookRejected(
            403,
            "source_ip_unknown",
            f"The client address of this {esp} webhook cannot be determined "
            f"(MAILER_TRUSTED_PROXY_COUNT={trusted_proxy_count}).",
        )
    if not any(address in network for network in _networks(tuple(allowed))):
        raise WebhookRejected(403, "source_ip_not_allowed", f"{esp} webhooks are not accepted from {address}.")
