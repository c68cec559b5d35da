"""The public pages reached from an email: unsubscribe (GET asks, POST unsubscribes: RFC 8058 one-click, no
cookie, no login), double opt-in confirmation, and the preference page.

None has a session. Each is authorized by the signed token in its URL alone, which is why they are csrf_exempt:
a forged cross-site POST would need the token, which only the mailbox holds, so a CSRF token would add no
protection, and would break the pages for readers whose mail app's browser keeps no cookies.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from subscribers.exceptions import (
    OptinLinkExpired,
    OptinLinkInvalid,
    OptinRefused,
    PreferencesLinkInvalid,
    UnsubscribeLinkInvalid,
)
from subscribers.models import Subscription
from subscribers.services import unsubscribe_by_link, unsubscribe_link_resolve
from subscribers.services.optin import optin_confirm, optin_link_resolve
from subscribers.services.preferences import (
    preferences_save,
    preferences_subscriber_resolve,
    preferences_subscriptions,
    preferences_unsubscribe_all,
)


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


_OPTIN_HEADINGS = {
    OptinLinkExpired: "This link has expired",
    OptinLinkInvalid: "This link does not work",
    OptinRefused: "We cannot confirm this subscription",
}


@csrf_exempt  # the signed token is the authority (see the module docstring)
@never_cache
@require_http_methods(["GET", "POST"])
def optin_confirm_page(request: HttpRequest, token: str) -> HttpResponse:
    """GET only asks: mail scanners and link previews fetch every link in a message, and must not confirm."""
    try:
        if request.method == "POST":
            subscription = optin_confirm(token=token)
            return render(request, "subscribers/optin_confirmed.html", {"subscription": subscription})
        subscription = optin_link_resolve(token=token)
    except (OptinLinkExpired, OptinLinkInvalid, OptinRefused) as exc:
        context = {"heading": _OPTIN_HEADINGS[type(exc)], "message": exc.message}
        return render(request, "subscribers/optin_problem.html", context, status=exc.status_code)
    context = {"subscription": subscription, "confirmed": subscription.status == Subscription.Status.ACTIVE}
    return render(request, "subscribers/optin_confirm.html", context)


def _checked_list_ids(request: HttpRequest) -> list[int]:
    return [int(value) for value in request.POST.getlist("list") if value.isdigit()]


@csrf_exempt  # the signed token is the authority (see the module docstring)
@never_cache
@require_http_methods(["GET", "POST"])
def preferences(request: HttpRequest, token: str) -> HttpResponse:
    try:
        subscriber = preferences_subscriber_resolve(token=token)
    except PreferencesLinkInvalid as exc:
        return render(request, "subscribers/unsubscribe_invalid.html", {"message": exc.message}, status=404)
    if subscriber is None:
        return render(request, "subscribers/preferences_empty.html")
    notice = ""
    if request.method == "POST":
        if request.POST.get("action") == "unsubscribe-all":
            preferences_unsubscribe_all(subscriber=subscriber)
            notice = "You are unsubscribed from everything. You will receive no more of our emails."
        else:
            saved = preferences_save(subscriber=subscriber, subscribed_list_ids=_checked_list_ids(request))
            notice = "Your choices are saved."
            if saved.refused:
                notice += (
                    " We could not subscribe you again: our records say this address must not receive email "
                    "from us. Please contact us if that is a mistake."
                )
    context = {
        "email": subscriber.email,
        "subscriptions": preferences_subscriptions(subscriber=subscriber),
        "notice": notice,
    }
    return render(request, "subscribers/preferences.html", context)
