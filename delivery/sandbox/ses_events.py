"""Amazon SES's tracking events, as SNS delivers them.

SES event-publishing records (the format that also carries opens and clicks), each wrapped in an SNS
Notification: one per POST, with the `x-amz-sns-*` headers anymail checks, signed the way SNS signs
(SignatureVersion 2, SHA256withRSA over SNS's canonical string) with the sandbox's own key below.
"""

from __future__ import annotations

import base64
import functools
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

# The sandbox's SNS signing identity: a key pair made for the sandbox, public by design (it is in the source). It
# proves only "this came from a sandbox", so Mailer trusts it only while MAILER_SNS_TRUST_SANDBOX is on (by default
# while ESP_SANDBOX_URL points at a sandbox), and then only for SNS_SIGNING_CERT_URL and SNS_TOPIC_ARN.
SNS_SIGNING_CERT_PEM = """\
-----BEGIN CERTIFICATE-----
MIIC2DCCAcCgAwIBAgIUA+1zMBsPOQ+W8P+KMi3UH2TlbMQwDQYJKoZIhvcNAQEL
BQAwJTEjMCEGA1UEAwwac25zLnNhbmRib3gubWFpbGVyLmludmFsaWQwIBcNMjYw
MTAxMDAwMDAwWhgPMjEyNjAxMDEwMDAwMDBaMCUxIzAhBgNVBAMMGnNucy5zYW5k
Ym94Lm1haWxlci5pbnZhbGlkMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKC
AQEAz1yNIETYI04CC/vhm9C6g20qfrLtDY31NxBXExtfxWftNHFIDN3gTH+5ns9l
ZxwpOYuauPtEM/CmLqFcLorBVMMt8sDlWogsMz/TZIoMepPQws7PedMXvF0gDvMD
5m93P4n/cGcQplovFPpyHppIishuOAtYQrUkdfr0oe/XmfdX6fI6fp59T4GI4j5v
mAk75rhgeJjIC/hWG2qD10iv29WC7qiyHxdF5//aaOIcGz3FTm7M5aDpqXXztuMT
kjZeO4NGzmemXqp9WH/Bey13IEnsPQimHF4Fbe/8y5Kc4DFiEytwvGKkyXK2BIXA
ppHvt/UpxkYR6sQiuLpBO5kZoQIDAQABMA0GCSqGSIb3DQEBCwUAA4IBAQA9ObGh
rOwlFkGBbVuGMVnh6klAbnh+tbLqjdAb1w4lpYMfnvttNeq8tS/PcNK7s5FIvEeH
YUs8zm0DU8WAbmA6gH1w6Atv4N8/dwa+vVCWSIydGfjXdYxumKUDkdfazDnL+3a9
ER1gZAuM5G0f0FTuFZUxdalDH9MMTBtTGy4Y46cK9Fau/6F4I5iaRHbiktWAkDAo
FqeiH/8nowjc6KaKAHsMFjBW4yxdZ9vwPQfwRNVWEqPpYcVg1Mq1ebwbIdN6EIo7
+KvkclF5IxuXFogXI0cBxqR7DwVSEZLlfc0q5ZUUSGwEH/Hl/JJDhIxEtRbnaaFS
jXQVqFr6cN5NOaQS
-----END CERTIFICATE-----
"""
_SNS_SIGNING_KEY_PEM = """\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDPXI0gRNgjTgIL
++Gb0LqDbSp+su0NjfU3EFcTG1/FZ+00cUgM3eBMf7mez2VnHCk5i5q4+0Qz8KYu
oVwuisFUwy3ywOVaiCwzP9Nkigx6k9DCzs950xe8XSAO8wPmb3c/if9wZxCmWi8U
+nIemkiKyG44C1hCtSR1+vSh79eZ91fp8jp+nn1PgYjiPm+YCTvmuGB4mMgL+FYb
aoPXSK/b1YLuqLIfF0Xn/9po4hwbPcVObszloOmpdfO24xOSNl47g0bOZ6Zeqn1Y
f8F7LXcgSew9CKYcXgVt7/zLkpzgMWITK3C8YqTJcrYEhcCmke+39SnGRhHqxCK4
ukE7mRmhAgMBAAECgf8IIBBHm2r8tynNXmlQubUVQUnQ/SHczhs1tSY0UXZHPfNF
gsrX9jm7xaV4W5gVmjzjTF0bsnzRrDRWz2vVRwqcT6mVQYm7KmrQ90dJQT+L7g7Y
E1J964+aieufqlYUyXlavAWOWfuFCTOfFtEx8cm15nSrLYaf1ok/Nj4vuj4wgjaA
9GM6hYdHAZCZYSYIoa7LFDPQoyTWiJWCUP/dI8o5CI2tBHQ8WHRBbtRmGMufE4hA
E5MTsWz/HCR1EbozYWJ68V4vICOKuw2HxOQki4ohe5j3sdQSryOPeBxGAI5mjM85
Fa6YkHDmegyL3ZTICWIfdu5uc923JPF+kFMKiIECgYEA/0S++D9qQN8SxOtDFS4i
C0jWTGzPBG5LP9patktkOMBvv2jG3FI9qY/cDaa7oiKagCJ2m2+ATqS+f5RwS9Tm
K/y4iTFKplOmUTwfMCcySms0wWVid3+CHHTG5duHkIYL/EYyI1UOkltnPtH/BIlL
JOs8oTSB3ijOswYgBLmVlSECgYEAz/Spq6BsrgfgDQq+zRPM7fLq9g5I0c3ImMGb
8mrUlCJMX0d22BzuSTcia8TSkRycKOY0fUw1RaG2TO+WvakEpXPXY3I3DVCKIKoX
msFFeZCfsH7Y2NRdSAP1rQ6qHGQxlRBF5RrdGOr1oaxVOY+Ay4M+uXpo3uv2K49U
sXTmdIECgYEAl8kP6NsEWiiKp47gp6Jz2dPooS799buDgSdcUxMHN/utNtqdjHpW
chG5nmBrJ6B9z/0uG4S0fY7WO1RPZbflWXh/XgxyP+5zcdBXFzHnZHrUtr6LS1UF
T9hcQGdF97jNPaebvoigDoTNInyJr+/XP8+kkJKBOlF3ftoAhe64NCECgYEAq27r
7NOspG9TkgzYrGF1YHgQoNW3zFXT17JMKDVPl+sKgMV+QLzg57SvCJ7SY9RtG/5j
KSQJCqU8jwI4h5Ptg6QS3SWMIsrRhAoUuXw5FPVX3/1CMMYpPDQfdRIQxKUIhvVK
WYui12bjJevWukQGDj/dFrTF/XgSkWhwjnZrgYECgYBn/ta278Bjw69+8t5w27L9
6yuXMLAOkJTTQiGNQwizMp7JApncZiaUTacvms/mj/5Gxpi6vYZfGuja8eTYIqB9
gWwadIQNA9kMxkxSavskeO9YxKTJM1nFUxowXfhMrlcGKAiQUcmSe7BU4kk3Xt5b
i3KkdR/qFxfVal7YSXwWCw==
-----END PRIVATE KEY-----
"""
# The fields SNS signs, in the order it signs them (Subject only when present).
SNS_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


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
    """Wrap an SES record in an SNS Notification, signed with the sandbox's key."""
    sns_message_id = str(uuid.uuid4())
    envelope = {
        "Type": "Notification",
        "MessageId": sns_message_id,
        "TopicArn": SNS_TOPIC_ARN,
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps(ses_record),
        "Timestamp": iso_ms(when),
        "SignatureVersion": "2",
        "SigningCertURL": SNS_SIGNING_CERT_URL,
        "UnsubscribeURL": (
            f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={SNS_SUBSCRIPTION_ARN}"
        ),
    }
    envelope["Signature"] = sns_signature(envelope)
    return envelope


def sns_string_to_sign(envelope: dict[str, Any]) -> bytes:
    """SNS's canonical string: "name\\nvalue\\n" for each signed field present, in SNS's order."""
    fields = SNS_SIGNED_FIELDS[envelope["Type"]]
    return "".join(f"{name}\n{envelope[name]}\n" for name in fields if envelope.get(name) is not None).encode()


@functools.cache
def _sns_signing_key() -> Any:
    # Imported here: only SES webhooks need it, and the sandbox's other users shouldn't pay for it.
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(_SNS_SIGNING_KEY_PEM.encode(), password=None)


def sns_signature(envelope: dict[str, Any]) -> str:
    """The base64 Signature of `envelope` with the sandbox's key (SHA256withRSA, as for SignatureVersion 2)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signed = _sns_signing_key().sign(sns_string_to_sign(envelope), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signed).decode()


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
