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
from campaigns.selectors import campaign_message_counts
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
    readonly_fields = ["status", "started_at", "finished_at", "mailing", "message_counts", "audience_size"]
    actions = ["send_now", "schedule", "pause", "resume", "cancel"]
    fieldsets = [
        (None, {"fields": ["name", "template", "from_email", "reply_to", "provider"]}),
        ("Audience", {"fields": ["lists", "segment", "exclude_lists", "audience_size"]}),
        ("Sending", {"fields": ["status", "scheduled_at", "started_at", "finished_at", "mailing", "message_counts"]}),
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

    @admin.display(description="Messages by status")
    def message_counts(self, obj: Campaign) -> str:
        counts = campaign_message_counts(campaign=obj)
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
