"""The front door of /webhooks/: basic auth answered with 401, and malformed bodies refused before anymail.

anymail checks the same secret, but answers a wrong one with 400; ESPs and operators expect 401 with a
challenge (SNS only sends credentials after one). A body that is not JSON gets a 400 naming the problem
instead of an error deep inside a parser. Either way, nothing is stored.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare

WEBHOOK_PREFIX = "/webhooks/"
MAX_BODY_BYTES = 5 * 1024 * 1024


def _credentials(request: HttpRequest) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        return base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def webhook_auth_ok(request: HttpRequest) -> bool:
    given = _credentials(request)
    if given is None:
        return False
    # Compare against every accepted secret (rotation), without stopping early.
    results = [constant_time_compare(given, secret) for secret in settings.MAILER_WEBHOOK_SECRETS]
    return any(results)


def _error(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"error": {"code": "webhook_rejected", "message": message}}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Basic realm="Mailer webhooks"'
    return response


class WebhookGateMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(WEBHOOK_PREFIX) or request.method != "POST":
            return self.get_response(request)
        if not webhook_auth_ok(request):
            return _error(401, "Missing or wrong webhook credentials.")
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _error(400, "Content-Length is not a number.")
        if length > MAX_BODY_BYTES:
            return _error(413, f"Webhook body of {length} bytes is over the {MAX_BODY_BYTES} byte limit.")
        if request.path.endswith("/tracking/"):
            problem = _json_problem(request)
            if problem:
                return _error(400, problem)
        # All events of one POST are stored together or not at all: on an error the ESP gets a 5xx and
        # posts the whole batch again, and the dedupe keys absorb what was already there.
        with transaction.atomic():
            response = self.get_response(request)
            if response.status_code >= 400:
                # Django turned an exception into this response before it reached us: undo the partial store.
                transaction.set_rollback(True)
            return response


def _json_problem(request: HttpRequest) -> str:
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"Webhook body is not valid JSON: {exc}"
    if not isinstance(body, (dict, list)):
        return "Webhook body must be a JSON object or array."
    return ""
