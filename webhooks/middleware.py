"""The front door of /webhooks/: basic auth answered with 401, malformed bodies refused before anymail, and
each POST's events stored all or nothing.

anymail checks the same secret, but answers a wrong one with 400; ESPs and operators expect 401 with a
challenge (SNS only sends credentials after one). A body that is not JSON, or not of the type the ESP sends,
gets a 4xx naming the problem instead of an error deep inside a parser. Either way, nothing is stored.
The body is parsed once, by anymail's view: here only its type and shape are checked before the view runs, and
a parse error the view raises is answered 400 (process_exception). Parsing it here as well took 7 % of a
worker's time on batches of 1,000 SendGrid events (docs/BENCHMARKS.md, "Webhook inbox").

The events of an accepted POST are collected while anymail's view runs (webhooks.inbox) and stored by one
statement in the POST's transaction: either all are stored and the answer is 2xx, or none is and the answer is
5xx, which makes the ESP post the whole batch again.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare

from webhooks.inbox import esp_events_store, inbox_batch

logger = logging.getLogger(__name__)

WEBHOOK_PREFIX = "/webhooks/"
MAX_BODY_BYTES = 5 * 1024 * 1024
# The body types each ESP posts its tracking events as: SNS posts its JSON as text/plain (or application/json
# when the subscription's delivery policy says so).
TRACKING_CONTENT_TYPES = {"amazon_ses": ("text/plain", "application/json")}
DEFAULT_TRACKING_CONTENT_TYPES = ("application/json",)
_JSON_CONTAINER_START = re.compile(rb"\s*[\[{]")


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
            problem = _content_type_problem(request)
            if problem:
                return _error(415, problem)
            problem = _json_problem(request)
            if problem:
                return _error(400, problem)
        # All events of one POST are stored together or not at all: on an error the ESP gets a 5xx and
        # posts the whole batch again, and the dedupe keys absorb what was already there.
        try:
            with transaction.atomic(), inbox_batch() as rows:
                response = self.get_response(request)
                if response.status_code >= 400:
                    # Django turned an exception into this response before it reached us: store nothing.
                    transaction.set_rollback(True)
                    return response
                esp_events_store(rows=rows)
        except DatabaseError:
            logger.exception("Storing the events of a webhook POST to %s failed; answering 503", request.path)
            return _error(503, "The events could not be stored; none of this POST was kept. Post it again.")
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A body (or a JSON document inside it) that anymail's view could not parse: the sender's error, a 400."""
        if request.path.startswith(WEBHOOK_PREFIX) and isinstance(
            exception, (json.JSONDecodeError, UnicodeDecodeError)
        ):
            return _error(400, f"Webhook body is not valid JSON: {exception}")
        return None


def _content_type_problem(request: HttpRequest) -> str:
    esp = request.path[len(WEBHOOK_PREFIX) :].split("/", 1)[0]
    accepted = TRACKING_CONTENT_TYPES.get(esp, DEFAULT_TRACKING_CONTENT_TYPES)
    if not request.content_type or request.content_type in accepted:
        return ""  # an untyped body is judged by whether it is JSON
    return f"Webhook body must be {' or '.join(accepted)}, not {request.content_type}."


def _json_problem(request: HttpRequest) -> str:
    """Whether the body can be the JSON object or array every ESP posts; its syntax is checked by the one parse."""
    if _JSON_CONTAINER_START.match(request.body):
        return ""
    return "Webhook body must be a JSON object or array."
