from django.contrib import admin
from django.db.models import Count, Q

from subscribers.models import MailingList, Subscriber, Subscription


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    extra = 0
    raw_id_fields = ["subscriber"]
    fields = ["mailing_list", "subscriber", "status", "source", "unsubscribed_at", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(Subscriber)
class SubscriberAdmin(admin.ModelAdmin):
    list_display = ["email", "name", "status", "created_at"]
    list_filter = ["status", "lists"]
    search_fields = ["email", "name"]
    inlines = [SubscriptionInline]
    show_full_result_count = False


@admin.register(MailingList)
class MailingListAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "active_count", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(_active=Count("subscriptions", filter=Q(subscriptions__status=Subscription.Status.ACTIVE)))
        )

    @admin.display(description="Active subscribers", ordering="_active")
    def active_count(self, obj: MailingList) -> int:
        return obj._active


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["subscriber", "mailing_list", "status", "source", "created_at"]
    list_filter = ["status", "mailing_list"]
    search_fields = ["subscriber__email"]
    raw_id_fields = ["subscriber"]
    list_select_related = ["subscriber", "mailing_list"]
