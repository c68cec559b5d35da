"""Segments in the admin: the rule is edited as JSON and checked on save (the error names the rule), the page
shows the live count and the first matching subscribers, and an action exports who matches as CSV."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from subscribers.admin.downloads import csv_download
from subscribers.models import Segment
from subscribers.segments import SegmentRuleInvalid, segment_subscribers
from subscribers.selectors import segment_count
from subscribers.services import subscribers_export_csv

SAMPLE_SIZE = 10


def rules_format(rule: object, depth: int = 0) -> str:
    """JSON laid out as people read a rule: groups indented, each condition on one line."""
    pad = "  " * depth
    if isinstance(rule, dict) and len(rule) == 1 and next(iter(rule)) in ("all", "any", "not"):
        key, members = next(iter(rule.items()))
        if key == "not":
            return f'{{"not": {rules_format(members, depth)}}}'
        if isinstance(members, list) and members:
            inner = ",\n".join(f"{pad}  {rules_format(member, depth + 1)}" for member in members)
            return f'{{"{key}": [\n{inner}\n{pad}]}}'
    return json.dumps(rule, ensure_ascii=False)


class _RulesField(forms.JSONField):
    def prepare_value(self, value):  # type: ignore[no-untyped-def]
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return rules_format(value)


class SegmentForm(forms.ModelForm):
    rules = _RulesField(widget=forms.Textarea(attrs={"rows": 16, "cols": 90, "style": "font-family: monospace"}))

    class Meta:
        model = Segment
        fields = ["name", "description", "rules"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["rules"].help_text = format_html(
            "JSON: groups <code>all</code>, <code>any</code>, <code>not</code>; conditions "
            '<code>{{"field": …, "op": …, "value": …}}</code> on email, domain, name, status, list, '
            "attribute.&lt;key&gt;, created, opened, clicked, score and sent. Example: <code>{}</code>. "
            "The full reference is docs/SEGMENTS.md.",
            json.dumps(
                {
                    "all": [
                        {"field": "list", "op": "in", "value": ["newsletter"]},
                        {"field": "opened", "op": "within_days", "value": 90},
                    ]
                }
            ),
        )


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    form = SegmentForm
    list_display = ["name", "description", "updated_at"]
    search_fields = ["name", "description"]
    readonly_fields = ["matching_now", "sample"]
    fields = ["name", "description", "rules", "matching_now", "sample"]
    actions = ["export_matching_csv", "count_matching"]

    @admin.display(description="Matching now")
    def matching_now(self, obj: Segment) -> str:
        if obj.pk is None:
            return "Save to see how many match."
        try:
            return f"{segment_count(segment=obj):,} subscribers (of any status; a campaign reaches the consenting ones)"
        except SegmentRuleInvalid as exc:  # a list named by the rule was deleted since
            return exc.message

    @admin.display(description="First matches")
    def sample(self, obj: Segment) -> str:
        if obj.pk is None:
            return "—"
        try:
            emails = list(segment_subscribers(obj.rules).order_by("pk").values_list("email", flat=True)[:SAMPLE_SIZE])
        except SegmentRuleInvalid:
            return "—"
        if not emails:
            return "Nobody matches."
        return format_html(
            '<ul style="margin:0;padding:0;list-style:none">{}</ul>',
            format_html_join("", "<li>{}</li>", ((email,) for email in emails)),
        )

    @admin.action(description="Count matching subscribers")
    def count_matching(self, request: HttpRequest, queryset: QuerySet[Segment]) -> None:
        for segment in queryset:
            try:
                self.message_user(request, f"{segment.name}: {segment_count(segment=segment):,} subscribers match.")
            except SegmentRuleInvalid as exc:
                self.message_user(request, f"{segment.name}: {exc.message}", messages.ERROR)

    @admin.action(description="Export matching subscribers as CSV")
    def export_matching_csv(self, request: HttpRequest, queryset: QuerySet[Segment]):
        segments = list(queryset[:2])
        if len(segments) != 1:
            self.message_user(request, "Choose exactly one segment to export.", messages.ERROR)
            return None
        segment = segments[0]
        try:
            matching = segment_subscribers(segment.rules)
        except SegmentRuleInvalid as exc:
            self.message_user(request, f"{segment.name}: {exc.message}", messages.ERROR)
            return None
        return csv_download(subscribers_export_csv(subscribers=matching), f"segment-{segment.pk}")
