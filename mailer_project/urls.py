from django.contrib import admin
from django.urls import include, path

from core.views import health

urlpatterns = [
    path("admin/", admin.site.urls),
    # anymail's tracking views: /webhooks/sendgrid/tracking/, /webhooks/amazon_ses/tracking/, ...
    path("webhooks/", include("anymail.urls")),
    path("health/", health, name="health"),
    path("", include("subscribers.urls")),
]
