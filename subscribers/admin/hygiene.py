"""The admin's "Hygiene report" on mailing lists: counts per reason on an intermediate page, the flagged rows
as CSV, and, after confirmation, unsubscribing or suppressing them. A mixin of MailingListAdmin, kept apart so
that the list admin stays short.

The page and the POST each compute the report afresh: the POST acts on who is flagged at that moment (the
message says how many), not on a list of ids carried through the form. The MX check is not offered here: its
DNS lookups belong in the command, not in a web request.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse

from subscribers.admin.downloads import csv_download
from subscribers.models import MailingList
from subscribers.services.hygiene import (
    DEFAULT_CHECKS,
    DEFAULT_INACTIVE_AFTER,
    HygieneAction,
    HygieneReason,
    HygieneReport,
    list_hygiene_apply,
    list_hygiene_csv,
    list_hygiene_report,
)

_PERMISSION_FOR = {
    HygieneAction.UNSUBSCRIBE: "subscribers.change_subscription",
    HygieneAction.SUPPRESS: "delivery.add_suppression",
}


class HygieneForm(forms.Form):
    checks = forms.MultipleChoiceField(
        choices=[(reason.value, reason.label) for reason in HygieneReason if reason != HygieneReason.MX],
        initial=sorted(DEFAULT_CHECKS),
        widget=forms.CheckboxSelectMultiple,
    )
    inactive_after = forms.IntegerField(
        min_value=1, initial=DEFAULT_INACTIVE_AFTER, help_text="Campaigns sent since the last open."
    )
    min_age_days = forms.IntegerField(
        min_value=0, initial=0, label="Minimum age (days)", help_text="Younger subscribers are never inactive."
    )

    @classmethod
    def from_request(cls, data) -> HygieneForm:
        """Bound to the request's options, the defaults filling in those it leaves out (no checks at all: all
        but MX)."""
        if not any(name in data for name in cls.base_fields):
            data = {"checks": sorted(DEFAULT_CHECKS)}
        data = data.copy()
        data.setdefault("inactive_after", DEFAULT_INACTIVE_AFTER)
        data.setdefault("min_age_days", 0)
        return cls(data)

    def query(self) -> str:
        return urlencode(self.cleaned_data, doseq=True)


class ApplyForm(forms.Form):
    apply = forms.ChoiceField(choices=HygieneAction.choices)
    confirm = forms.BooleanField(label="I have read the counts above.")


class MailingListHygieneAdmin(admin.ModelAdmin):
    @admin.action(description="Hygiene report")
    def hygiene_report(self, request: HttpRequest, queryset) -> HttpResponse | None:
        lists = list(queryset[:2])
        if len(lists) != 1:
            self.message_user(request, "Choose exactly one list for a hygiene report.", messages.ERROR)
            return None
        return HttpResponseRedirect(reverse("admin:subscribers_mailinglist_hygiene", args=[lists[0].pk]))

    def get_urls(self):
        view = self.admin_site.admin_view
        extra = [
            path("<int:pk>/hygiene/", view(self.hygiene_view), name="subscribers_mailinglist_hygiene"),
            path("<int:pk>/hygiene.csv", view(self.hygiene_csv_view), name="subscribers_mailinglist_hygiene_csv"),
        ]
        return extra + super().get_urls()

    def _report(self, request: HttpRequest, pk: int, data) -> tuple[MailingList, HygieneForm, HygieneReport | None]:
        mailing_list = get_object_or_404(MailingList, pk=pk)
        if not self.has_view_permission(request, mailing_list):
            raise PermissionDenied
        form = HygieneForm.from_request(data)
        report = None
        if form.is_valid():
            options = form.cleaned_data
            report = list_hygiene_report(
                mailing_list=mailing_list,
                checks=options["checks"],
                inactive_after=options["inactive_after"],
                min_age_days=options["min_age_days"],
            )
        return mailing_list, form, report

    def hygiene_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        data = request.POST if request.method == "POST" else request.GET
        mailing_list, form, report = self._report(request, pk, data)
        apply_form = ApplyForm(request.POST if request.method == "POST" else None)
        if report is not None and request.method == "POST" and apply_form.is_valid():
            action = apply_form.cleaned_data["apply"]
            if not request.user.has_perm(_PERMISSION_FOR[action]):
                raise PermissionDenied
            changed = list_hygiene_apply(report=report, action=action)
            if action == HygieneAction.UNSUBSCRIBE:
                done = f"{changed:,} unsubscribed from the list"
            else:
                done = f"{changed:,} addresses suppressed"
            self.message_user(request, f"{mailing_list}: {report.flagged_count:,} flagged, {done}.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:subscribers_mailinglist_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Hygiene report: {mailing_list}",
            "opts": self.model._meta,
            "mailing_list": mailing_list,
            "form": form,
            "apply_form": apply_form,
            "report": report,
            "rows": [(HygieneReason(r).label, r, report.counts[r]) for r in report.checks] if report else [],
            "query": form.query() if report is not None else "",
            "can_unsubscribe": request.user.has_perm(_PERMISSION_FOR[HygieneAction.UNSUBSCRIBE]),
            "can_suppress": request.user.has_perm(_PERMISSION_FOR[HygieneAction.SUPPRESS]),
        }
        return render(request, "admin/subscribers/mailinglist/hygiene.html", context)

    def hygiene_csv_view(self, request: HttpRequest, pk: int) -> HttpResponseBase:
        mailing_list, form, report = self._report(request, pk, request.GET)
        if report is None:
            return HttpResponseBadRequest(form.errors.as_text(), content_type="text/plain; charset=utf-8")
        return csv_download(list_hygiene_csv(report=report), f"hygiene-{mailing_list.slug}")
