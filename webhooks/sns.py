"""Amazon SNS message verification, for SES events delivered through SNS (anymail checks no SNS signature).

A message is accepted only when all of these hold, checked cheapest first:
1. its SignatureVersion is "1" (SHA1withRSA) or "2" (SHA256withRSA);
2. its TopicArn is one we subscribed to (MAILER_SES_TOPIC_ARNS): a valid AWS signature proves only that *some*
   AWS account's topic sent it, so without this anyone could point their own topic at us, get it confirmed and
   post forged bounces;
3. its SigningCertURL is an https URL on an SNS regional host (`sns.<region>.amazonaws.com[.cn]`) with SNS's
   certificate path; the URL comes from the untrusted body, so anything looser lets an attacker name a
   certificate of their own (an S3 bucket called "sns" is the classic trick, which the region shape rules out);
4. the Signature verifies, with that certificate's RSA key, over SNS's canonical string of the signed fields.

The certificate is fetched over TLS only from that host, with a timeout and a size cap, and cached in the Django
cache under its URL (SNS rotates certificates by publishing new URLs). Where it comes from is a setting
(MAILER_SNS_CERT_FETCHER, a dotted path), so tests serve a locally made certificate without a network; while
MAILER_SNS_TRUST_SANDBOX is on, the ESP sandbox's certificate URL and topic are trusted as well.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from django.conf import settings
from django.core.cache import cache
from django.utils.module_loading import import_string

from webhooks.security import WebhookRejected

logger = logging.getLogger(__name__)

SIGNED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
OPTIONAL_FIELDS = frozenset({"Subject"})
SIGNATURE_HASHES: Mapping[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# The whole URL, not its parsed parts: what is checked is then exactly what is fetched (no userinfo, query,
# fragment, backslash or other port for a URL parser and an HTTP client to read differently). The region label has
# a region's shape (us-east-1, us-gov-west-1, cn-north-1), so legacy S3 hosts such as sns.s3-eu-west-1.amazonaws.com
# (an S3 bucket named "sns") do not pass.
CERT_URL_PATTERN = re.compile(
    r"https://sns\.[a-z]{2}(?:-[a-z]+)+-[0-9]+\.amazonaws\.com(?:\.cn)?(?::443)?"
    r"/SimpleNotificationService-[A-Za-z0-9]+\.pem"
)
MAX_CERT_BYTES = 64 * 1024
CACHE_KEY_PREFIX = "mailer:sns-cert:"


class SnsCertificateUnavailable(Exception):
    """The signing certificate could not be had. `transient`: worth SNS retrying later (a timeout, a 5xx)."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def sns_message_verify(*, message: Mapping[str, Any]) -> None:
    """Raise WebhookRejected unless `message` (a parsed SNS JSON body) is genuine and from an allowed topic."""
    version = message.get("SignatureVersion")
    if not isinstance(version, str) or version not in SIGNATURE_HASHES:
        raise WebhookRejected(
            403, "sns_signature_version_unsupported", f"SNS SignatureVersion {version!r} is not supported (1 or 2)."
        )
    topic_arn = message.get("TopicArn")
    if not isinstance(topic_arn, str) or topic_arn not in sns_allowed_topics():
        raise WebhookRejected(
            403,
            "sns_topic_not_allowed",
            f"SNS topic {topic_arn!r} is not in MAILER_SES_TOPIC_ARNS; its messages are neither stored nor confirmed.",
        )
    cert_url = message.get("SigningCertURL")
    if not isinstance(cert_url, str) or not CERT_URL_PATTERN.fullmatch(cert_url):
        raise WebhookRejected(
            403,
            "sns_certificate_url_untrusted",
            f"SNS SigningCertURL {cert_url!r} is not an https URL of an SNS certificate on sns.<region>.amazonaws.com.",
        )
    to_sign = sns_string_to_sign(message=message)
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
    except binascii.Error:
        raise WebhookRejected(403, "sns_signature_invalid", "SNS Signature is not base64.") from None
    try:
        certificate = sns_certificate_get(url=cert_url)
    except SnsCertificateUnavailable as exc:
        if exc.transient:
            raise WebhookRejected(503, "sns_certificate_unavailable", str(exc)) from exc
        raise WebhookRejected(403, "sns_certificate_unavailable", str(exc)) from exc
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise WebhookRejected(403, "sns_signature_invalid", "The SNS signing certificate does not hold an RSA key.")
    try:
        public_key.verify(signature, to_sign, padding.PKCS1v15(), SIGNATURE_HASHES[version]())
    except InvalidSignature:
        raise WebhookRejected(403, "sns_signature_invalid", "SNS message signature does not verify.") from None


def sns_string_to_sign(*, message: Mapping[str, Any]) -> bytes:
    """SNS's canonical string: "name\\nvalue\\n" for each signed field of the message's Type, in SNS's order."""
    fields = SIGNED_FIELDS.get(str(message.get("Type")))
    if fields is None:
        raise WebhookRejected(400, "sns_type_unknown", f"Unknown SNS message Type {message.get('Type')!r}.")
    lines = []
    for name in fields:
        value = message.get(name)
        if value is None and name in OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise WebhookRejected(400, "sns_field_missing", f"SNS {message['Type']} has no string field {name!r}.")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode("utf-8")


def sns_allowed_topics() -> frozenset[str]:
    topics = set(settings.MAILER_SES_TOPIC_ARNS)
    if settings.MAILER_SNS_TRUST_SANDBOX:
        from delivery.sandbox.ses_events import SNS_TOPIC_ARN

        topics.add(SNS_TOPIC_ARN)
    return frozenset(topics)


def sns_certificate_get(*, url: str) -> x509.Certificate:
    """The certificate at `url` (already checked against CERT_URL_PATTERN): the sandbox's, cached, or fetched."""
    if settings.MAILER_SNS_TRUST_SANDBOX:
        from delivery.sandbox.ses_events import SNS_SIGNING_CERT_PEM, SNS_SIGNING_CERT_URL

        if url == SNS_SIGNING_CERT_URL:
            return x509.load_pem_x509_certificate(SNS_SIGNING_CERT_PEM.encode())
    key = CACHE_KEY_PREFIX + hashlib.sha256(url.encode()).hexdigest()
    pem = cache.get(key)
    if pem is not None:
        return _certificate_load(pem, url=url)
    fetch: Callable[..., bytes] = import_string(settings.MAILER_SNS_CERT_FETCHER)
    pem = fetch(url, timeout=settings.MAILER_SNS_CERT_TIMEOUT_SECONDS)
    certificate = _certificate_load(pem, url=url)  # only what parses is cached
    cache.set(key, pem, timeout=settings.MAILER_SNS_CERT_CACHE_SECONDS)
    logger.info("SNS signing certificate %s fetched and cached", url)
    return certificate


def _certificate_load(pem: bytes, *, url: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise SnsCertificateUnavailable(f"{url} is not a PEM certificate.", transient=False) from exc


def sns_certificate_download(url: str, *, timeout: float) -> bytes:
    """The production fetcher: an HTTPS GET with TLS verification, no redirects, a timeout and a size cap."""
    try:
        with requests.get(url, timeout=timeout, allow_redirects=False, stream=True) as response:
            if response.status_code != 200:
                raise SnsCertificateUnavailable(
                    f"Fetching the SNS signing certificate {url} answered HTTP {response.status_code}.",
                    transient=response.status_code >= 500,
                )
            body = b""
            for chunk in response.iter_content(chunk_size=8192):
                body += chunk
                if len(body) > MAX_CERT_BYTES:
                    raise SnsCertificateUnavailable(f"{url} is over {MAX_CERT_BYTES} bytes.", transient=False)
            return body
    except requests.RequestException as exc:
        raise SnsCertificateUnavailable(
            f"Fetching the SNS signing certificate {url} failed: {exc}", transient=True
        ) from exc
