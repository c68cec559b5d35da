from django import forms
from django.contrib import admin, messages

from core.addresses import email_clean
from core.exceptions import ApplicationError
from delivery.admin_deadletters import SendAttemptInline  # also registers the dead-letter list
from delivery.admin_warming import ProviderWarmingAdminMixin  # also registers the warming plans
from delivery.models import Mailing, Message, Provider, Suppression
from delivery.services import suppression_add


@admin.register(Provider)
class ProviderAdmin(ProviderWarmingAdminMixin, admin.ModelAdmin):
    list_display = ["name", "kind", "is_enabled", "priority", *ProviderWarmingAdminMixin.warming_list_display,
                    "updated_at"]  # fmt: skip
    list_filter = ["kind", "is_enabled"]
    list_editable = ["is_enabled", "priority"]
    search_fields = ["name"]


class SuppressionAddForm(forms.ModelForm):
    email = forms.CharField(max_length=254, help_text="The address to suppress; stored normalized.")

    class Meta:
        model = Suppression
        fields = ["email", "reason", "detail"]

    def clean_email(self) -> str:
        try:
            return email_clean(self.cleaned_data["email"])
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "reason", "source", "created_at"]
    list_filter = ["reason", "source"]
    search_fields = ["email", "email_hash"]
    date_hierarchy = "created_at"
    readonly_fields = ["email", "email_hash", "reason", "source", "created_at"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = SuppressionAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ["email", "reason", "detail"] if obj is None else [*self.readonly_fields, "detail"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        """Adding goes through suppression_add: queued messages to the address end suppressed at once, and an
        address already on the list (or erased) keeps its first reason."""
        if change:
            return super().save_model(request, obj, form, change)
        suppression, created = suppression_add(
            email=form.cleaned_data["email"],
            reason=form.cleaned_data["reason"],
            source=f"admin:{request.user.get_username()}",
            detail=form.cleaned_data["detail"],
        )
        obj.pk = suppression.pk
        if not created:
            self.message_user(request, "That address was already suppressed; its first reason stays.", messages.WARNING)


@admin.register(Mailing)
class MailingAdmin(admin.ModelAdmin):
    list_display = ["__str__", "kind", "from_email", "provider", "created_at"]
    list_filter = ["kind", "provider"]
    search_fields = ["name", "subject_template", "from_email"]
    readonly_fields = [f.name for f in Mailing._meta.fields]

    def has_add_permission(self, request) -> bool:  # mailings are frozen by whoever sends them, not typed in
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["to_email", "mailing", "status", "provider", "attempts", "sent_at", "delivered_at", "last_error"]
    list_filter = ["status", "provider", "mailing__kind"]
    search_fields = ["to_email", "esp_message_id"]
    list_select_related = ["mailing", "provider"]
    raw_id_fields = ["mailing"]
    readonly_fields = [f.name for f in Message._meta.fields]
    inlines = [SendAttemptInline]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:  # messages are made by mailings, not by hand
        return False
