"""The admin's privacy actions on subscribers: one person's data as a JSON download, and erasure after a
confirmation page (Django's intermediate-page pattern, as its own "Delete selected"). A mixin of
SubscriberAdmin, kept apart so that the subscriber admin stays short.

The admin messages name subscribers by id, not address: messages may be kept in the session table, and an
erased address must not linger there.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.utils.http import content_disposition_header

from core.exceptions import ApplicationError
from subscribers.services import subscriber_data_export, subscriber_erase


class SubscriberPrivacyAdmin(admin.ModelAdmin):
    @admin.action(description="Export personal data (JSON)", permissions=["view"])
    def export_personal_data(self, request, queryset):
        # One person per file: a request comes from one person, and a file holding several people's data is
        # one more thing that could go to the wrong one.
        subscribers = list(queryset[:2])
        if len(subscribers) != 1:
            self.message_user(
                request, "Choose exactly one subscriber: a personal data export is one person's.", messages.ERROR
            )
            return None
        subscriber = subscribers[0]
        data = subscriber_data_export(subscriber=subscriber)
        return HttpResponse(
            json.dumps(data, indent=2, ensure_ascii=False),
            content_type="application/json; charset=utf-8",
            headers={
                "Content-Disposition": content_disposition_header(
                    as_attachment=True, filename=f"personal-data-subscriber-{subscriber.pk}.json"
                )
            },
        )

    @admin.action(description="Erase personal data", permissions=["delete"])
    def erase_personal_data(self, request, queryset):
        if request.POST.get("post") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Erase personal data?",
                "subscribers": list(queryset.order_by("email")),
                "opts": self.model._meta,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "action": "erase_personal_data",
            }
            request.current_app = self.admin_site.name
            return TemplateResponse(request, "admin/subscribers/subscriber/erase_personal_data.html", context)
        source = f"admin:{request.user.get_username()}"
        for subscriber in queryset.order_by("pk"):
            try:
                result = subscriber_erase(subscriber=subscriber, source=source)
            except ApplicationError as error:
                self.message_user(request, error.message, messages.ERROR)
                continue
            self.message_user(request, f"Subscriber {subscriber.pk} erased: {result.describe()}.", messages.SUCCESS)
        return None
