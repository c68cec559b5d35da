"""The subscribers admin: subscribers, lists, subscriptions and CSV imports here; the hygiene report, privacy
actions and segments in their own modules."""

from pathlib import Path

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from core.addresses import email_clean
from core.exceptions import ApplicationError
from delivery.selectors import suppression_is_erased
from subscribers.admin import segments  # noqa: F401 - registers SegmentAdmin
from subscribers.admin.downloads import csv_download
from subscribers.admin.hygiene import MailingListHygieneAdmin
from subscribers.admin.privacy import SubscriberPrivacyAdmin
from subscribers.models import MailingList, Subscriber, SubscriberImport, Subscription
from subscribers.services import subscribers_export_csv, subscription_create
from subscribers.services.import_jobs import subscriber_import_progress, subscriber_import_start
from subscribers.services.importing import ImportOptions


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    extra = 0
    raw_id_fields = ["subscriber"]
    fields = ["mailing_list", "subscriber", "status", "source", "unsubscribed_at", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(Subscriber)
class SubscriberAdmin(SubscriberPrivacyAdmin):  # the personal data export and erasure actions
    list_display = ["email", "name", "status", "created_at"]
    list_filter = ["status", "lists"]
    search_fields = ["email", "name"]
    inlines = [SubscriptionInline]
    show_full_result_count = False
    actions = ["export_selected_csv", "export_personal_data", "erase_personal_data"]

    @admin.action(description="Export selected as CSV")
    def export_selected_csv(self, request, queryset):
        return csv_download(subscribers_export_csv(subscribers=queryset), "subscribers-selected")


@admin.register(MailingList)
class MailingListAdmin(MailingListHygieneAdmin):  # the hygiene report's action and pages
    list_display = ["name", "slug", "double_opt_in", "from_email", "active_count", "created_at"]
    list_filter = ["double_opt_in"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    actions = ["export_subscribers_csv", "hygiene_report"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(_active=Count("subscriptions", filter=Q(subscriptions__status=Subscription.Status.ACTIVE)))
        )

    @admin.display(description="Active subscribers", ordering="_active")
    def active_count(self, obj: MailingList) -> int:
        return obj._active

    @admin.action(description="Export subscribers as CSV")
    def export_subscribers_csv(self, request, queryset):
        lists = list(queryset[:2])
        if len(lists) != 1:
            self.message_user(request, "Choose exactly one list to export.", messages.ERROR)
            return None
        return csv_download(subscribers_export_csv(mailing_list=lists[0]), f"subscribers-{lists[0].slug}")


class SubscriptionAddForm(forms.ModelForm):
    """Subscribe an address from the admin: the same service a sign-up form calls, so a double opt-in list gets
    a pending subscription and a confirmation email, and an address that left stays out."""

    email = forms.CharField(max_length=254)
    name = forms.CharField(max_length=200, required=False)

    class Meta:
        model = Subscription
        fields = ["mailing_list"]

    def clean_email(self) -> str:
        try:
            address = email_clean(self.cleaned_data["email"])
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc
        if suppression_is_erased(email=address):
            raise forms.ValidationError("This address was erased at its owner's request and cannot be added again.")
        return address


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["subscriber", "mailing_list", "status", "source", "created_at"]
    list_filter = ["status", "mailing_list"]
    search_fields = ["subscriber__email"]
    raw_id_fields = ["subscriber"]
    list_select_related = ["subscriber", "mailing_list"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = SubscriptionAddForm
            kwargs["fields"] = ["mailing_list", "email", "name"]
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ["mailing_list", "email", "name"] if obj is None else super().get_fields(request, obj)

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        created = subscription_create(
            mailing_list=form.cleaned_data["mailing_list"],
            email=form.cleaned_data["email"],
            name=form.cleaned_data["name"],
            source="admin",
        )
        obj.pk, obj.subscriber, obj.status = created.pk, created.subscriber, created.status
        if created.status == Subscription.Status.PENDING:
            self.message_user(request, "The subscription is pending until the address confirms it by email.")
        elif created.status == Subscription.Status.UNSUBSCRIBED:
            self.message_user(
                request, "This address unsubscribed from the list before; it stays unsubscribed.", messages.WARNING
            )


class SubscriberImportForm(forms.ModelForm):
    """The upload form: a list, a file and the import's options."""

    skip_existing = forms.BooleanField(required=False, help_text="Leave subscribers already known as they are.")
    dry_run = forms.BooleanField(required=False, help_text="Only report what would change.")
    resubscribe = forms.BooleanField(
        required=False, help_text="Subscribe again people who unsubscribed. Only with their consent."
    )
    encoding = forms.ChoiceField(choices=[("utf-8", "UTF-8"), ("latin-1", "Latin-1 (Windows)")], initial="utf-8")
    column_map = forms.CharField(
        required=False,
        label="Rename columns",
        help_text="One per line, e.g. <code>E-mail address=email</code> or <code>First name=name</code>.",
        widget=forms.Textarea(attrs={"rows": 3}),
    )

    class Meta:
        model = SubscriberImport
        fields = ["mailing_list", "file"]

    def clean_column_map(self) -> dict[str, str]:
        mapping = {}
        for number, line in enumerate(self.cleaned_data["column_map"].splitlines(), start=1):
            if not line.strip():
                continue
            source, sep, target = line.partition("=")
            if not sep or not source.strip() or not target.strip():
                raise forms.ValidationError(f"Line {number}: expected 'file column=email|name|attribute'.")
            mapping[source.strip()] = target.strip()
        return mapping

    def options(self) -> ImportOptions:
        data = self.cleaned_data
        return ImportOptions(
            update_existing=not data["skip_existing"],
            dry_run=data["dry_run"],
            resubscribe=data["resubscribe"],
            encoding=data["encoding"],
            column_map=data["column_map"],
        )


@admin.register(SubscriberImport)
class SubscriberImportAdmin(admin.ModelAdmin):
    list_display = ["created_at", "mailing_list", "status", "progress", "result"]
    list_filter = ["status", "mailing_list"]
    form = SubscriberImportForm
    change_form_template = "admin/subscribers/subscriberimport/change_form.html"
    readonly_fields = ["mailing_list", "file", "options", "status", "progress", "result", "error",
                       "errors_download", "created_by", "started_at", "finished_at"]  # fmt: skip

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["mailing_list", "file", "skip_existing", "dry_run", "resubscribe", "encoding", "column_map"]
        return self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else []

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None or super().has_view_permission(request, obj)

    def save_model(self, request, obj, form, change) -> None:
        if change:
            return
        job = subscriber_import_start(
            mailing_list=form.cleaned_data["mailing_list"],
            upload=form.cleaned_data["file"],
            options=form.options(),
            created_by=request.user,
        )
        obj.pk = job.pk

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["import_running"] = obj is not None and obj.status in (
            SubscriberImport.Status.QUEUED,
            SubscriberImport.Status.RUNNING,
        )
        return super().render_change_form(request, context, add, change, form_url, obj)

    @admin.display(description="Progress")
    def progress(self, obj: SubscriberImport) -> str:
        done, total = subscriber_import_progress(job=obj)
        share = done / total if total else (1.0 if obj.status == SubscriberImport.Status.DONE else 0.0)
        return format_html('<progress max="100" value="{}"></progress> {} %', round(share * 100), round(share * 100))

    @admin.display(description="Result")
    def result(self, obj: SubscriberImport) -> str:
        s = obj.summary
        if not s:
            return obj.error or "—"
        prefix = "Dry run, nothing changed: " if s.get("dry_run") else ""
        return (
            f"{prefix}{s['rows']:,} rows: {s['created']:,} created, {s['updated']:,} updated, "
            f"{s['unchanged']:,} unchanged, {s['invalid']:,} invalid, {s['duplicate']:,} duplicate, "
            f"{s['suppressed']:,} suppressed; {s['subscribed']:,} newly subscribed"
        )

    @admin.display(description="Rejected rows")
    def errors_download(self, obj: SubscriberImport) -> str:
        if not obj.errors_file:
            return "—"
        url = reverse("admin:subscribers_subscriberimport_errors", args=[obj.pk])
        return format_html('<a href="{}">Download (CSV: line, email, reason)</a>', url)

    def get_urls(self):
        extra = [
            path(
                "<int:pk>/errors.csv",
                self.admin_site.admin_view(self.errors_view),
                name="subscribers_subscriberimport_errors",
            )
        ]
        return extra + super().get_urls()

    def errors_view(self, request, pk: int) -> FileResponse:
        job = get_object_or_404(SubscriberImport, pk=pk)
        if not self.has_view_permission(request, job) or not job.errors_file or not Path(job.errors_file).exists():
            raise Http404("No rejected rows for this import.")
        return FileResponse(Path(job.errors_file).open("rb"), as_attachment=True,
                            filename=f"import-{job.pk}-rejected-rows.csv")  # fmt: skip
