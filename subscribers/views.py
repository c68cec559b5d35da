"""The public unsubscribe page: GET confirms, POST unsubscribes (RFC 8058 one-click: no cookie, no login)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from subscribers.exceptions import UnsubscribeLinkInvalid
from subscribers.services import unsubscribe_by_link, unsubscribe_link_resolve


@csrf_exempt  # mail clients POST here with no session; the signed token is the authority
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    try:
        if request.method == "POST":
            message = unsubscribe_by_link(token=token)
            return render(request, "subscribers/unsubscribed.html", {"email": message.to_email})
        message = unsubscribe_link_resolve(token=token)
    except UnsubscribeLinkInvalid as exc:
        return render(request, "subscribers/unsubscribe_invalid.html", {"message": exc.message}, status=404)
    return render(request, "subscribers/unsubscribe_confirm.html", {"email": message.to_email, "token": token})
