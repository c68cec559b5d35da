"""Amazon SES's tracking events, as SNS delivers them.

SES event-publishing records (the format that also carries opens and clicks), each wrapped in an SNS
Notification: one per POST, with the `x-amz-sns-*` headers anymail checks.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

from .messages import SandboxMessage
from .vocabulary import (
    BOUNCED,
    CLICKED,
    COMPLAINED,
    DELIVERED,
    FEEDBACK_LOOP_AGENT,
    OPEN_USER_AGENT,
    OPENED,
    SANDBOX_IP,
    SMTP_OK,
    SMTP_SUPPRESSED,
    SMTP_USER_UNKNOWN,
    iso_ms,
)

AWS_ACCOUNT_ID = "123456789012"
SNS_TOPIC_ARN = f"arn:aws:sns:us-east-1:{AWS_ACCOUNT_ID}:mailer-sandbox"
SNS_SUBSCRIPTION_ARN = f"{SNS_TOPIC_ARN}:5f1c2a8e-sandbox"
SNS_SIGNING_CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-sandbox.pem"
SES_CONFIGURATION_SET = "mailer-sandbox"


def _ses_mail(msg: SandboxMessage) -> dict[str, Any]:
    """The `mail` object of an SES event, with the original headers (X-Metadata, X-Tag) that anymail reads."""
    domain = msg.from_email.rpartition("@")[2] or "example.com"
    headers = [{"name": "From", "value": msg.from_email}]
    headers.append({"name": "To", "value": ", ".join(msg.destination)})
    headers.append({"name": "Subject", "value": msg.subject})
    headers += [{"name": name, "value": value} for name, value in msg.headers.items() if name.lower() != "x-tag"]
    headers += [{"name": "X-Tag", "value": tag} for tag in msg.tags]
    common_headers: dict[str, Any] = {
        "from": [msg.from_email],
        "to": list(msg.destination),
        "subject": msg.subject,
    }
    for name, value in msg.headers.items():
        if name.lower() == "message-id":
            common_headers["messageId"] = value
        elif name.lower() == "date":
            common_headers["date"] = value
    return {
        "timestamp": iso_ms(msg.received_at),
        "source": msg.from_email,
        "sourceArn": f"arn:aws:ses:us-east-1:{AWS_ACCOUNT_ID}:identity/{domain}",
        "sourceIp": SANDBOX_IP,
        "callerIdentity": "sandbox",
        "sendingAccountId": AWS_ACCOUNT_ID,
        "messageId": msg.esp_message_id,
        "destination": list(msg.destination),
        "headersTruncated": False,
        "headers": headers,
        "commonHeaders": common_headers,
        "tags": {
            "ses:configuration-set": [SES_CONFIGURATION_SET],
            "ses:source-ip": [SANDBOX_IP],
            "ses:from-domain": [domain],
            "ses:caller-identity": ["sandbox"],
        },
    }


def ses_event(
    msg: SandboxMessage, kind: str, *, when: datetime, url: str | None = None, suppressed: bool = False
) -> dict[str, Any]:
    """An SES event-publishing record (`eventType`), the format that also carries opens and clicks."""
    stamp = iso_ms(when)
    addr = msg.to[0]
    event: dict[str, Any]
    if kind == DELIVERED:
        event = {
            "eventType": "Delivery",
            "delivery": {
                "timestamp": stamp,
                "processingTimeMillis": 120,
                "recipients": [addr],
                "smtpResponse": SMTP_OK,
                "reportingMTA": "a8-1.smtp-out.amazonses.com",
                "remoteMtaIp": SANDBOX_IP,
            },
        }
    elif kind == BOUNCED:
        template = SMTP_SUPPRESSED if suppressed else SMTP_USER_UNKNOWN
        event = {
            "eventType": "Bounce",
            "bounce": {
                "bounceType": "Permanent",
                "bounceSubType": "OnAccountSuppressionList" if suppressed else "General",
                "bouncedRecipients": [
                    {
                        "emailAddress": addr,
                        "action": "failed",
                        "status": "5.1.1",
                        "diagnosticCode": "smtp; " + template.format(addr=addr),
                    }
                ],
                "timestamp": stamp,
                "feedbackId": f"{msg.esp_message_id}-bounce",
                "reportingMTA": "dns; a8-1.smtp-out.amazonses.com",
            },
        }
    elif kind == COMPLAINED:
        event = {
            "eventType": "Complaint",
            "complaint": {
                "complainedRecipients": [{"emailAddress": addr}],
                "timestamp": stamp,
                "feedbackId": f"{msg.esp_message_id}-complaint",
                "userAgent": FEEDBACK_LOOP_AGENT,
                "complaintFeedbackType": "abuse",
                "arrivalDate": stamp,
            },
        }
    elif kind == OPENED:
        event = {
            "eventType": "Open",
            "open": {"timestamp": stamp, "userAgent": OPEN_USER_AGENT, "ipAddress": SANDBOX_IP},
        }
    elif kind == CLICKED:
        event = {
            "eventType": "Click",
            "click": {
                "timestamp": stamp,
                "ipAddress": SANDBOX_IP,
                "userAgent": OPEN_USER_AGENT,
                "link": url,
                "linkTags": {},
            },
        }
    else:
        raise ValueError(f"unknown event kind {kind!r}")
    event["mail"] = _ses_mail(msg)
    return event


def sns_notification(ses_record: dict[str, Any], *, when: datetime) -> dict[str, Any]:
    """Wrap an SES record in an SNS Notification; the signature is filler (anymail doesn't check it)."""
    sns_message_id = str(uuid.uuid4())
    return {
        "Type": "Notification",
        "MessageId": sns_message_id,
        "TopicArn": SNS_TOPIC_ARN,
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps(ses_record),
        "Timestamp": iso_ms(when),
        "SignatureVersion": "1",
        "Signature": base64.b64encode(uuid.uuid4().bytes * 8).decode(),
        "SigningCertURL": SNS_SIGNING_CERT_URL,
        "UnsubscribeURL": (
            f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={SNS_SUBSCRIPTION_ARN}"
        ),
    }


def sns_headers(notification: dict[str, Any]) -> dict[str, str]:
    """The headers SNS sends with each Notification POST."""
    return {
        "Content-Type": "text/plain; charset=UTF-8",  # SNS posts its JSON as text/plain
        "x-amz-sns-message-type": notification["Type"],
        "x-amz-sns-message-id": notification["MessageId"],
        "x-amz-sns-topic-arn": notification["TopicArn"],
        "x-amz-sns-subscription-arn": SNS_SUBSCRIPTION_ARN,
        "User-Agent": "Amazon Simple Notification Service Agent",
    }
