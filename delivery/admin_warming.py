"""Warming in the admin: plans (editable, validated) and the warming and reputation columns of the provider list."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count
from django.utils.html import format_html

from core.exceptions import ApplicationError
from delivery.models import Provider, WarmingPlan
from delivery.services.reputation import Reputation, provider_reputation_ok, providers_reputation_24h
from delivery.services.warming import (
    DEFAULT_WARMING_PLAN_NAME,
    warming_cap_today,
    warming_plan_errors,
    warming_start,
)


class WarmingPlanForm(forms.ModelForm):
    class Meta:
        model = WarmingPlan
        fields = ["name", "daily_caps", "max_bounce_rate", "max_complaint_rate"]
        widgets = {"daily_caps": forms.Textarea(attrs={"rows": 4, "cols": 80})}
        help_texts = {
            "max_bounce_rate": "A fraction: 0.02 holds the plan when a day's bounce rate is above 2 %.",
            "max_complaint_rate": "A fraction: 0.0008 holds the plan when a day's complaint rate is above 0.08 %.",
        }

    def clean(self) -> dict:
        cleaned = super().clean() or {}
        errors = warming_plan_errors(
            daily_caps=cleaned.get("daily_caps"),
            max_bounce_rate=cleaned.get("max_bounce_rate"),
            max_complaint_rate=cleaned.get("max_complaint_rate"),
        )
        for field, message in errors.items():
            if field not in self.errors:  # a field that did not even parse already says why
                self.add_error(field, message)
        return cleaned


@admin.register(WarmingPlan)
class WarmingPlanAdmin(admin.ModelAdmin):
    form = WarmingPlanForm
    list_display = ["name", "days", "first_day_cap", "last_day_cap", "bounce_threshold", "complaint_threshold",
                    "provider_count"]  # fmt: skip
    search_fields = ["name"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(provider_count=Count("providers"))

    @admin.display(description="Days")
    def days(self, plan: WarmingPlan) -> int:
        return len(plan.daily_caps) if isinstance(plan.daily_caps, list) else 0

    @admin.display(description="Day 1 cap")
    def first_day_cap(self, plan: WarmingPlan) -> int | None:
        return plan.cap_for_day(1)

    @admin.display(description="Last day cap")
    def last_day_cap(self, plan: WarmingPlan) -> int | None:
        return plan.cap_for_day(self.days(plan))

    @admin.display(description="Max bounce rate")
    def bounce_threshold(self, plan: WarmingPlan) -> str:
        return f"{plan.max_bounce_rate:.2%}"

    @admin.display(description="Max complaint rate")
    def complaint_threshold(self, plan: WarmingPlan) -> str:
        return f"{plan.max_complaint_rate:.2%}"

    @admin.display(description="Providers", ordering="provider_count")
    def provider_count(self, plan: WarmingPlan) -> int:
        return plan.provider_count  # type: ignore[attr-defined]


class ProviderChangeList(ChangeList):
    """Attaches each listed provider's last 24 hours, counted by one grouped query for the whole page."""

    def get_results(self, request) -> None:
        super().get_results(request)
        reputations = providers_reputation_24h()
        # Iterating fills the page queryset's cache: the rows rendered (and the list_editable formset) are these.
        for provider in self.result_list:
            provider.reputation_24h = reputations.get(provider.pk, Reputation())


class ProviderWarmingAdminMixin:
    """For ProviderAdmin: warming columns, the 24-hour rates, and the action that starts a warm-up."""

    warming_list_display = ["warming_status", "warming_cap", "bounce_rate_24h", "complaint_rate_24h",
                            "warming_held_reason"]  # fmt: skip
    list_select_related = ["warming_plan"]
    actions = ["warming_start_default"]

    def get_changelist(self, request, **kwargs):
        return ProviderChangeList

    @admin.display(description="Warming")
    def warming_status(self, provider: Provider) -> str:
        plan = provider.warming_plan
        if plan is None or provider.warming_day < 1:
            return "-"
        days = len(plan.daily_caps) if isinstance(plan.daily_caps, list) else 0
        if provider.warming_day > days:
            return f"done ({plan.name})"
        held = ", held" if provider.warming_held_reason else ""
        return f"day {provider.warming_day} of {days}{held}"

    @admin.display(description="Warming cap today")
    def warming_cap(self, provider: Provider) -> str:
        cap = warming_cap_today(provider=provider)
        return "-" if cap is None else f"{cap:,}"

    @admin.display(description="Bounces 24 h")
    def bounce_rate_24h(self, provider: Provider) -> str:
        reputation = self._reputation(provider)
        return self._rate(provider, reputation, reputation.bounce_rate, reputation.bounced)

    @admin.display(description="Complaints 24 h")
    def complaint_rate_24h(self, provider: Provider) -> str:
        reputation = self._reputation(provider)
        return self._rate(provider, reputation, reputation.complaint_rate, reputation.complained)

    @staticmethod
    def _reputation(provider: Provider) -> Reputation:
        return getattr(provider, "reputation_24h", None) or Reputation()

    @staticmethod
    def _rate(provider: Provider, reputation: Reputation, rate: float, count: int) -> str:
        if not reputation.sent:
            return "-"
        text = f"{rate:.2%} ({count} of {reputation.sent})"
        if provider_reputation_ok(reputation=reputation, plan=provider.warming_plan):
            return text
        return format_html('<strong style="color:#b3261e">{}</strong>', text)

    @admin.action(description="Start warming with the default plan")
    def warming_start_default(self, request, queryset) -> None:
        plan = WarmingPlan.objects.filter(name=DEFAULT_WARMING_PLAN_NAME).first()
        if plan is None:
            self.message_user(  # type: ignore[attr-defined]
                request, f"There is no warming plan named {DEFAULT_WARMING_PLAN_NAME!r}; add it first.", messages.ERROR
            )
            return
        try:
            started = [warming_start(provider=provider, plan=plan).name for provider in queryset.order_by("pk")]
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)  # type: ignore[attr-defined]
            return
        self.message_user(  # type: ignore[attr-defined]
            request,
            f"Warming started on day 1 of {plan.name!r} (cap {plan.cap_for_day(1)}) for: {', '.join(started)}.",
            messages.SUCCESS,
        )
