"""The ESP tracking webhooks, mounted at /webhooks/ (the URLs configured at each ESP).

Only the three tracking views Mailer uses are served: anymail's other views (inbound mail, other ESPs) are not
mounted, so none of them is reachable without these checks.
"""

from django.urls import path

from webhooks.views import AmazonSesTrackingView, PostmarkTrackingView, SendGridTrackingView

app_name = "webhooks"
urlpatterns = [
    path("sendgrid/tracking/", SendGridTrackingView.as_view(), name="sendgrid_tracking"),
    path("amazon_ses/tracking/", AmazonSesTrackingView.as_view(), name="amazon_ses_tracking"),
    path("postmark/tracking/", PostmarkTrackingView.as_view(), name="postmark_tracking"),
]
