from django.contrib import admin
from django.urls import include, path

from core.views import health

urlpatterns = [
    path("admin/", admin.site.urls),
    # The ESPs' tracking webhooks (anymail's views with Mailer's checks): /webhooks/sendgrid/tracking/,
    # /webhooks/amazon_ses/tracking/, /webhooks/postmark/tracking/
    path("webhooks/", include("webhooks.urls")),
    path("health/", health, name="health"),
    path("", include("subscribers.urls")),
]
