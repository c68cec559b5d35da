"""Campaign admin: the actions call the same services the API does; errors come back as admin messages."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from campaigns.models import Campaign, Template
from campaigns.selectors import (
    campaign_hourly,
    campaign_link_clicks,
    campaign_message_counts,
    campaign_numbers,
)
from campaigns.services import (
    audience_count,
    campaign_audience,
    campaign_cancel,
    campaign_pause,
    campaign_resume,
    campaign_schedule,
    campaign_send,
)
from core.exceptions import ApplicationError
from delivery.models import Message


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "subject", "updated_at"]
    search_fields = ["name", "subject"]


class ScheduleForm(forms.Form):
    scheduled_at = forms.DateTimeField(
        label="Send at", help_text="Your local time.", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "scheduled_at", "finished_at"]
    list_filter = ["status", "lists"]
    search_fields = ["name"]
    filter_horizontal = ["lists", "exclude_lists"]
    readonly_fields = [
        "status",
        "started_at",
        "finished_at",
        "mailing",
        "message_counts",
        "audience_size",
        "numbers",
        "link_clicks",
        "hourly_series",
    ]
    actions = ["send_now", "schedule", "pause", "resume", "cancel"]
    fieldsets = [
        (None, {"fields": ["name", "template", "from_email", "reply_to", "provider"]}),
        ("Audience", {"fields": ["lists", "segment", "exclude_lists", "audience_size"]}),
        ("Sending", {"fields": ["status", "scheduled_at", "started_at", "finished_at", "mailing", "message_counts"]}),
        ("Numbers", {"fields": ["numbers", "link_clicks", "hourly_series"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.status != Campaign.Status.DRAFT:
            fields += [
                "name",
                "template",
                "lists",
                "segment",
                "exclude_lists",
                "from_email",
                "reply_to",
                "provider",
                "scheduled_at",
            ]
        else:
            fields.append("scheduled_at")
        return fields

    def get_fieldsets(self, request, obj=None):
        # Once a campaign is under way, what happened to its messages is what the page is for.
        fieldsets = super().get_fieldsets(request, obj)
        return fieldsets[::-1] if obj is not None and obj.status != Campaign.Status.DRAFT else fieldsets

    @admin.display(description="Recipients now")
    def audience_size(self, obj: Campaign) -> str:
        """What "Send now" would reach at this moment: the audience minus suppressed addresses."""
        if obj.pk is None:
            return "Save the campaign to see its audience."
        if obj.status != Campaign.Status.DRAFT:
            return "Fixed when sending started: see the messages by status."
        audience = campaign_audience(campaign=obj)
        if audience.is_empty:
            return "No list or segment chosen yet."
        try:
            return f"{audience_count(audience=audience):,}"
        except ApplicationError as exc:
            return exc.message

    @staticmethod
    def _status_counts(obj: Campaign) -> dict[str, int]:
        """Read once per page: the status table and the numbers both use them."""
        if not hasattr(obj, "_status_counts"):
            obj._status_counts = campaign_message_counts(campaign=obj)  # type: ignore[attr-defined]
        return obj._status_counts  # type: ignore[attr-defined]

    @admin.display(description="Messages by status")
    def message_counts(self, obj: Campaign) -> str:
        counts = self._status_counts(obj)
        if not counts:
            return "Not started."
        total = sum(counts.values())
        rows = format_html_join(
            "",
            '<tr><td>{}</td><td style="text-align:right">{}</td><td style="text-align:right">{}</td></tr>',
            (
                (Message.Status(status).label, count, f"{100 * count / total:.1f} %")
                for status, count in counts.items()
                if count
            ),
        )
        return format_html(
            '<table class="mailer-counts"><thead><tr><th>Status</th><th>Messages</th><th>Share</th></tr></thead>'
            '<tbody>{}</tbody><tfoot><tr><th>Total</th><th style="text-align:right">{}</th><th></th></tr>'
            "</tfoot></table>",
            rows,
            total,
        )

    @admin.display(description="Numbers")
    def numbers(self, obj: Campaign) -> str:
        numbers = campaign_numbers(campaign=obj, status_counts=self._status_counts(obj)) if obj.pk else None
        if numbers is None:
            return "Not started."
        rates = numbers.rates

        def rate(name: str) -> str:
            value = rates[name]
            return "–" if value is None else f"{100 * value:.1f} %"

        rows: list[tuple[str, int, str, str]] = [
            ("Sent", numbers.sent, "", ""),
            ("Delivered", numbers.delivered, rate("delivered"), "of sent"),
            ("Hard bounced", numbers.hard_bounced, rate("hard_bounced"), "of sent"),
            ("Soft bounced", numbers.soft_bounced, rate("soft_bounced"), "of sent"),
            ("Complained", numbers.complained, rate("complained"), "of delivered"),
            ("Unsubscribed", numbers.unsubscribed, rate("unsubscribed"), "of delivered"),
            ("Unique opens", numbers.unique_opens, rate("unique_opens"), "of delivered"),
            ("Unique clicks", numbers.unique_clicks, rate("unique_clicks"), "of delivered"),
            ("Click-to-open", numbers.unique_clicks, rate("click_to_open"), "of unique opens"),
            ("All opens", numbers.opens, "", "people, not counting machine opens"),
            ("All clicks", numbers.clicks, "", ""),
            ("Machine opens", numbers.machine_opens, "", "privacy proxies and scanners: in no rate"),
        ]
        body = format_html_join(
            "",
            '<tr><td>{}</td><td style="text-align:right">{}</td><td style="text-align:right">{}</td><td>{}</td></tr>',
            ((label, f"{count:,}", share, base) for label, count, share, base in rows),
        )
        return format_html(
            '<table class="mailer-numbers"><thead><tr><th></th><th>Count</th><th>Rate</th><th></th></tr></thead>'
            "<tbody>{}</tbody></table>",
            body,
        )

    @admin.display(description="Clicks per link")
    def link_clicks(self, obj: Campaign) -> str:
        links = campaign_link_clicks(campaign=obj) if obj.pk else []
        if not links:
            return "No clicks yet."
        body = format_html_join(
            "", '<tr><td>{}</td><td style="text-align:right">{}</td></tr>', ((url, f"{n:,}") for url, n in links)
        )
        return format_html(
            '<table class="mailer-links"><thead><tr><th>Link</th><th>Clicks</th></tr></thead><tbody>{}</tbody></table>',
            body,
        )

    @admin.display(description="By the hour (UTC)")
    def hourly_series(self, obj: Campaign) -> str:
        hours = campaign_hourly(campaign=obj) if obj.pk else []
        if not hours:
            return "No events yet."
        columns = ["delivered", "hard_bounced", "soft_bounced", "complained", "unique_opens", "unique_clicks"]
        body = format_html_join(
            "",
            "<tr><td>{}</td>" + '<td style="text-align:right">{}</td>' * len(columns) + "</tr>",
            ((f"{row.hour:%Y-%m-%d %H}:00", *(getattr(row, c) for c in columns)) for row in hours),
        )
        head = format_html_join("", "<th>{}</th>", ((c.replace("_", " ").capitalize(),) for c in columns))
        return format_html(
            '<table class="mailer-hourly"><thead><tr><th>Hour</th>{}</tr></thead><tbody>{}</tbody></table>', head, body
        )

    def _run(self, request: HttpRequest, queryset, service, done: str, **kwargs) -> None:
        for campaign in queryset:
            try:
                service(campaign=campaign, **kwargs)
            except ApplicationError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(request, f"{campaign.name}: {done}", messages.SUCCESS)

    @admin.action(description="Send now")
    def send_now(self, request: HttpRequest, queryset) -> None:
        self._run(request, queryset, campaign_send, "sending started.")

    @admin.action(description="Pause")
    def pause(self, request: HttpRequest, queryset) -> None:
        self._run(request, queryset, campaign_pause, "paused; messages in flight finish, the rest wait.")

    @admin.action(description="Resume")
    def resume(self, request: HttpRequest, queryset) -> None:
        self._run(request, queryset, campaign_resume, "sending again.")

    @admin.action(description="Cancel")
    def cancel(self, request: HttpRequest, queryset) -> None:
        self._run(request, queryset, campaign_cancel, "cancelled.")

    @admin.action(description="Schedule…")
    def schedule(self, request: HttpRequest, queryset):
        ids = ",".join(str(pk) for pk in queryset.values_list("pk", flat=True))
        return HttpResponseRedirect(reverse("admin:campaigns_campaign_schedule") + f"?ids={ids}")

    def get_urls(self):
        extra = [path("schedule/", self.admin_site.admin_view(self.schedule_view), name="campaigns_campaign_schedule")]
        return extra + super().get_urls()

    def schedule_view(self, request: HttpRequest):
        ids = [int(pk) for pk in request.GET.get("ids", "").split(",") if pk.isdigit()]
        campaigns = [get_object_or_404(Campaign, pk=pk) for pk in ids]
        form = ScheduleForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            at = form.cleaned_data["scheduled_at"]
            if timezone.is_naive(at):
                at = timezone.make_aware(at)
            self._run(request, campaigns, campaign_schedule, f"scheduled for {at:%Y-%m-%d %H:%M %Z}.", at=at)
            return HttpResponseRedirect(reverse("admin:campaigns_campaign_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Schedule campaigns",
            "form": form,
            "campaigns": campaigns,
            "opts": self.model._meta,
        }
        return render(request, "admin/campaigns/schedule.html", context)
