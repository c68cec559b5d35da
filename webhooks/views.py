"""The ESP tracking webhooks: anymail's views, with Mailer's security checks run after anymail's own.

Order for each POST: webhooks.middleware (basic auth against every WEBHOOK_SECRET, body size, JSON) -> anymail's
validators (basic auth again; SendGrid: the ECDSA signature when a verification key is set; SES: the x-amz-sns-*
headers match the body) -> the checks here -> anymail parses and sends the tracking signal, and for SES confirms an
SNS subscription. Any refusal happens before the signal, so a refused POST stores nothing and, for SES, confirms
nothing. Refusals are JSON: {"error": {"code", "message"}}.
"""

from __future__ import annotations

from typing import Any

from anymail.exceptions import AnymailAPIError, AnymailWebhookValidationFailure
from anymail.webhooks.amazon_ses import AmazonSESTrackingWebhookView
from anymail.webhooks.postmark import PostmarkTrackingWebhookView
from anymail.webhooks.sendgrid import SendGridTrackingWebhookView
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from webhooks.security import WebhookRejected, signed_timestamp_check, source_ip_check, webhook_rejection_response
from webhooks.sns import sns_message_verify


class SecurityChecksMixin:
    """Runs `security_check` once anymail's validators passed, and answers every refusal as JSON.

    anymail raises AnymailWebhookValidationFailure for its own refusals (Django would answer a bare 400 page);
    `anymail_rejection_status` says what they mean for this ESP.
    """

    anymail_rejection_status = 400
    anymail_rejection_code = "webhook_invalid"

    def security_check(self, request: HttpRequest) -> None:
        raise NotImplementedError

    def run_validators(self, request: HttpRequest) -> None:
        super().run_validators(request)  # type: ignore[misc]
        self.security_check(request)

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return super().post(request, *args, **kwargs)  # type: ignore[misc]
        except WebhookRejected as rejection:
            return webhook_rejection_response(rejection=rejection, request=request)
        except AnymailWebhookValidationFailure as failure:
            anymails = WebhookRejected(self.anymail_rejection_status, self.anymail_rejection_code, str(failure))
            return webhook_rejection_response(rejection=anymails, request=request)


class SendGridTrackingView(SecurityChecksMixin, SendGridTrackingWebhookView):
    """With a verification key set (SENDGRID_WEBHOOK_VERIFICATION_KEY), anymail verifies the signature over
    timestamp + body; here the signed timestamp must also be recent, which anymail does not check."""

    # With a key, anymail's only refusals are a missing or wrong signature: the sender is not shown genuine.
    anymail_rejection_status = 403
    anymail_rejection_code = "signature_invalid"

    def security_check(self, request: HttpRequest) -> None:
        if self.webhook_verification_key is None:
            return  # no key configured: basic auth only
        signed_timestamp_check(
            timestamp=request.headers["X-Twilio-Email-Event-Webhook-Timestamp"],  # anymail required it
            now=timezone.now().timestamp(),
            max_age_seconds=settings.MAILER_SENDGRID_SIGNATURE_MAX_AGE_SECONDS,
            max_future_seconds=settings.MAILER_SENDGRID_SIGNATURE_MAX_FUTURE_SECONDS,
        )


class AmazonSesTrackingView(SecurityChecksMixin, AmazonSESTrackingWebhookView):
    """SES events through SNS: the SNS signature, certificate URL and topic allow-list (webhooks.sns) are checked
    before anymail parses the events or confirms a SubscriptionConfirmation."""

    def run_validators(self, request: HttpRequest) -> None:
        # anymail raises AnymailAPIError (a 500, which SNS would retry) for an unparsable body or an unknown
        # SNS Type: malformed input, answered 400.
        try:
            if not isinstance(self._parse_sns_message(request), dict):
                raise WebhookRejected(400, "sns_message_invalid", "An SNS message is a JSON object.")
            super().run_validators(request)
        except AnymailAPIError as exc:
            raise WebhookRejected(400, "sns_message_invalid", str(exc)) from exc

    def security_check(self, request: HttpRequest) -> None:
        sns_message_verify(message=self._parse_sns_message(request))


class PostmarkTrackingView(SecurityChecksMixin, PostmarkTrackingWebhookView):
    """Postmark does not sign its webhooks: basic auth, plus an optional source-IP allow-list."""

    def security_check(self, request: HttpRequest) -> None:
        source_ip_check(
            request=request,
            allowed=settings.MAILER_POSTMARK_ALLOWED_IPS,
            trusted_proxy_count=settings.MAILER_TRUSTED_PROXY_COUNT,
            esp="Postmark",
        )
