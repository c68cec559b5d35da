"""Signed webhook payloads for the security tests, made with keys generated on this machine (no network).

- SendGrid's signed event webhook: an ECDSA P-256 key; its public half in SendGrid's form (base64 DER) goes into
  the verification-key setting, and each POST carries X-Twilio-Email-Event-Webhook-Signature over timestamp + body.
- SNS: an RSA key with a self-signed certificate "published" at an sns.<region>.amazonaws.com URL that is unique to
  this test run (the certificate cache outlives a run), served by `sns_certificate_serve` - the tests'
  MAILER_SNS_CERT_FETCHER - which also records each fetch.
"""

from __future__ import annotations

import base64
import copy
import functools
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from webhooks.sns import SnsCertificateUnavailable, sns_string_to_sign

# --- SendGrid


@functools.cache
def _sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def sendgrid_verification_key() -> str:
    """The public key as SendGrid's settings page shows it: base64 of the DER SubjectPublicKeyInfo."""
    der = (
        _sendgrid_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(der).decode()


def sendgrid_signed_headers(body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """Django test-client META for a signed SendGrid POST of `body`, signed at `timestamp` (default: now)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = _sendgrid_key().sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE": base64.b64encode(signature).decode(),
        "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_TIMESTAMP": stamp,
    }


# --- SNS

SERVED_CERTS: dict[str, bytes] = {}
CERT_FETCHES: list[str] = []


@dataclass(frozen=True)
class SnsSigner:
    key: rsa.RSAPrivateKey
    cert_pem: bytes
    cert_url: str


def _self_signed(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def sns_signer_new(*, region: str = "us-east-1", published: bool = True) -> SnsSigner:
    """A fresh key and certificate at a URL of its own; `published`: served by sns_certificate_serve."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    url = f"https://sns.{region}.amazonaws.com/SimpleNotificationService-{secrets.token_hex(16)}.pem"
    signer = SnsSigner(key=key, cert_pem=_self_signed(key), cert_url=url)
    if published:
        SERVED_CERTS[url] = signer.cert_pem
    return signer


@functools.cache
def sns_signer() -> SnsSigner:
    """This test run's SNS signing identity (RSA key generation is slow: one per run)."""
    return sns_signer_new()


def sns_certificate_serve(url: str, *, timeout: float) -> bytes:
    """The tests' certificate fetcher: what "the SNS host" serves at `url`; 404 for anything else."""
    CERT_FETCHES.append(url)
    try:
        return SERVED_CERTS[url]
    except KeyError:
        raise SnsCertificateUnavailable(f"{url} answered HTTP 404.", transient=False) from None


def sns_certificate_timeout(url: str, *, timeout: float) -> bytes:
    """A fetcher for when the SNS host does not answer in time."""
    CERT_FETCHES.append(url)
    raise SnsCertificateUnavailable(f"Fetching {url} timed out after {timeout} s.", transient=True)


def sns_signed(
    envelope: dict[str, Any], *, version: str = "1", signer: SnsSigner | None = None, cert_url: str | None = None
) -> dict[str, Any]:
    """A copy of `envelope` signed as SNS signs: SHA1withRSA for SignatureVersion 1, SHA256withRSA for 2.

    `cert_url` names a certificate URL other than the signer's (the signature is still the signer's).
    """
    signer = signer or sns_signer()
    signed = copy.deepcopy(envelope)
    signed["SignatureVersion"] = version
    signed["SigningCertURL"] = cert_url or signer.cert_url
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303 - SNS v1 is SHA1withRSA
    signature = signer.key.sign(sns_string_to_sign(message=signed), padding.PKCS1v15(), digest)
    signed["Signature"] = base64.b64encode(signature).decode()
    return signed


def sns_subscription_confirmation(*, topic_arn: str, token: str | None = None) -> dict[str, Any]:
    """An unsigned SubscriptionConfirmation in SNS's documented format (sign it with sns_signed)."""
    token = token or secrets.token_hex(64)
    region = topic_arn.split(":")[3]
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(uuid.uuid4()),
        "Token": token,
        "TopicArn": topic_arn,
        "Message": (
            f"You have chosen to subscribe to the topic {topic_arn}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message."
        ),
        "SubscribeURL": (
            f"https://sns.{region}.amazonaws.com/?Action=ConfirmSubscription&TopicArn={topic_arn}&Token={token}"
        ),
        "Timestamp": "2026-11-25T18:00:01.000Z",
    }
