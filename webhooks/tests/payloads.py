"""Webhook bodies in each ESP's documented format (SendGrid Event Webhook, Postmark webhooks, SES
notifications delivered through SNS), with our message id carried the way each ESP returns metadata."""

from __future__ import annotations

import json
import uuid


def sendgrid_event(event: str, email: str, mailer_msg: int | None, **extra: object) -> dict:
    body = {
        "email": email,
        "timestamp": 1764072000,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": event,
        "category": ["newsletter"],
        "sg_event_id": extra.pop("sg_event_id", f"sg-{uuid.uuid4()}"),
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "anymail_id": "e4e8f1a2-1111-4a9d-9a3b-3f3a3f3a3f3a",
    }
    if mailer_msg is not None:
        body["mailer_msg"] = str(mailer_msg)  # SendGrid flattens custom_args into the event
    if event == "delivered":
        body["response"] = "250 OK"
    if event == "bounce":
        body.update({"type": "bounce", "status": "5.1.1", "reason": "550 5.1.1 The email account does not exist"})
    body.update(extra)
    return body


def postmark_delivery(email: str, mailer_msg: int | None, message_id: str = "883953f4-6105-42a2-a16a-77a8eac79483"):
    return {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": message_id,
        "Recipient": email,
        "Tag": "",
        "DeliveredAt": "2026-11-25T16:33:54.9070259Z",
        "Details": "Test delivery webhook details",
        "Metadata": {"mailer_msg": str(mailer_msg)} if mailer_msg is not None else {},
    }


def postmark_bounce(email: str, mailer_msg: int | None, bounce_type: str = "HardBounce", bounce_id: int = 4323372036):
    type_codes = {"HardBounce": 1, "SoftBounce": 4096, "Transient": 2, "SpamComplaint": 512}
    return {
        "RecordType": "SpamComplaint" if bounce_type == "SpamComplaint" else "Bounce",
        "MessageStream": "outbound",
        "ID": bounce_id,
        "Type": bounce_type,
        "TypeCode": type_codes[bounce_type],
        "Name": bounce_type,
        "Tag": "",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"mailer_msg": str(mailer_msg)} if mailer_msg is not None else {},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": email,
        "From": "news@mailer.example",
        "BouncedAt": "2026-11-25T16:33:54.9070259Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Hello",
    }


def ses_notification(kind: str, email: str, mailer_msg: int | None, *, bounce_type: str = "Permanent") -> dict:
    """An SNS envelope around an SES notification (the "Include original headers" option on)."""
    headers = [{"name": "From", "value": "news@mailer.example"}, {"name": "To", "value": email}]
    if mailer_msg is not None:
        headers.append({"name": "X-Metadata", "value": json.dumps({"mailer_msg": str(mailer_msg)})})
    message: dict = {
        "notificationType": kind,
        "mail": {
            "timestamp": "2026-11-25T17:58:59.000Z",
            "source": "news@mailer.example",
            "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/mailer.example",
            "sendingAccountId": "123456789012",
            "messageId": "0100018c-ses-message-id-000000",
            "destination": [email],
            "headersTruncated": False,
            "headers": headers,
            "commonHeaders": {"from": ["news@mailer.example"], "to": [email], "subject": "Hello"},
        },
    }
    if kind == "Bounce":
        message["bounce"] = {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": email,
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": "2026-11-25T17:59:00.000Z",
            "feedbackId": "0100018c-feedback-000000",
            "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
        }
    elif kind == "Complaint":
        message["complaint"] = {
            "complainedRecipients": [{"emailAddress": email}],
            "timestamp": "2026-11-25T18:00:00.000Z",
            "feedbackId": "0100018c-feedback-000001",
            "complaintFeedbackType": "abuse",
        }
    elif kind == "Delivery":
        message["delivery"] = {
            "timestamp": "2026-11-25T17:59:00.000Z",
            "processingTimeMillis": 546,
            "recipients": [email],
            "smtpResponse": "250 ok:  Message 64111812 accepted",
            "reportingMTA": "a8-70.smtp-out.amazonses.com",
        }
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:mailer-ses-events",
        "Message": json.dumps(message),
        "Timestamp": "2026-11-25T18:00:01.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+..",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:x",
    }
