"""Email providers (anymail), the ESP webhooks' shared secret and their other security settings.

With nothing set, every provider points at the ESP sandbox (`manage.py run_sandbox`), so no mail leaves the
machine. Set ESP_SANDBOX_URL to an empty value to use the real ESP endpoints.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import sys
from typing import NoReturn

from .base import DEBUG
from .environment import VAR_DIR, env, require

ESP_SANDBOX_URL = env.str("ESP_SANDBOX_URL", default="http://127.0.0.1:8025").rstrip("/")

# "user:password", or several separated by commas while a secret is being rotated.
_webhook_secret = require("WEBHOOK_SECRET", when_missing_ok=DEBUG, default="mailer:webhook-dev-secret")
MAILER_WEBHOOK_SECRETS = [s.strip() for s in _webhook_secret.split(",") if s.strip()]

SENDGRID_API_KEY = env.str("SENDGRID_API_KEY", default="sandbox-key")
POSTMARK_SERVER_TOKEN = env.str("POSTMARK_SERVER_TOKEN", default="sandbox-token")
AWS_REGION = env.str("AWS_REGION", default="us-east-1")

ANYMAIL = {
    "WEBHOOK_SECRET": MAILER_WEBHOOK_SECRETS,
    "SENDGRID_API_KEY": SENDGRID_API_KEY,
    "POSTMARK_SERVER_TOKEN": POSTMARK_SERVER_TOKEN,
    # One attempt per call: retries (with backoff and failover) are the engine's decision, and botocore's own
    # retries after an ambiguous 5xx could send a message twice.
    "AMAZON_SES_CLIENT_PARAMS": {"region_name": AWS_REGION, "config": {"retries": {"total_max_attempts": 1}}},
    "REQUESTS_TIMEOUT": (5, 30),
}
if ESP_SANDBOX_URL:
    ANYMAIL["SENDGRID_API_URL"] = f"{ESP_SANDBOX_URL}/sendgrid/v3/"
    ANYMAIL["POSTMARK_API_URL"] = f"{ESP_SANDBOX_URL}/postmark/"
    ANYMAIL["AMAZON_SES_CLIENT_PARAMS"] = {
        "region_name": AWS_REGION,
        "endpoint_url": f"{ESP_SANDBOX_URL}/ses",
        "aws_access_key_id": "sandbox",
        "aws_secret_access_key": "sandbox",
        "config": {"retries": {"total_max_attempts": 1}},
    }
else:
    if env.str("SENDGRID_API_URL", default=""):
        ANYMAIL["SENDGRID_API_URL"] = env.str("SENDGRID_API_URL")
    if env.str("POSTMARK_API_URL", default=""):
        ANYMAIL["POSTMARK_API_URL"] = env.str("POSTMARK_API_URL")


# Webhook security beyond basic auth (docs/WEBHOOKS.md, "Security").
def _config_error(message: str) -> NoReturn:
    sys.stderr.write(f"Configuration error: {message}\n")
    raise SystemExit(2)


# SendGrid's signed event webhook: the public key SendGrid shows for it (base64 DER, ECDSA P-256). When set, every
# SendGrid POST must carry a valid signature, and its signed timestamp must be at most MAX_AGE old (a replay window)
# and at most MAX_FUTURE ahead (clock skew). Leave it unset while the sandbox posts SendGrid webhooks: it signs none.
SENDGRID_WEBHOOK_VERIFICATION_KEY = env.str("SENDGRID_WEBHOOK_VERIFICATION_KEY", default="").strip()
if SENDGRID_WEBHOOK_VERIFICATION_KEY:
    try:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        _sendgrid_key: object = load_der_public_key(base64.b64decode(SENDGRID_WEBHOOK_VERIFICATION_KEY, validate=True))
    except (binascii.Error, ValueError):
        _sendgrid_key = None
    if not isinstance(_sendgrid_key, ec.EllipticCurvePublicKey):
        _config_error("SENDGRID_WEBHOOK_VERIFICATION_KEY is not a base64 ECDSA public key (as SendGrid shows it).")
    ANYMAIL["SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY"] = SENDGRID_WEBHOOK_VERIFICATION_KEY
MAILER_SENDGRID_SIGNATURE_MAX_AGE_SECONDS = env.int("MAILER_SENDGRID_SIGNATURE_MAX_AGE_SECONDS", default=600)
MAILER_SENDGRID_SIGNATURE_MAX_FUTURE_SECONDS = env.int("MAILER_SENDGRID_SIGNATURE_MAX_FUTURE_SECONDS", default=300)

# Amazon SES through SNS: every message's SNS signature is verified, and only these topics (comma-separated ARNs)
# are stored or have their subscription confirmed. Empty: every SES webhook is refused (403), unless the sandbox is
# trusted. MAILER_SNS_TRUST_SANDBOX (on by default while ESP_SANDBOX_URL is set) also accepts the ESP sandbox's
# topic and its signing certificate, a key pair published in the source: turn it off wherever real SES posts.
MAILER_SES_TOPIC_ARNS = env.list("MAILER_SES_TOPIC_ARNS", default=[])
MAILER_SNS_TRUST_SANDBOX = env.bool("MAILER_SNS_TRUST_SANDBOX", default=bool(ESP_SANDBOX_URL))
# Where signing certificates come from (a dotted path to `fetch(url, *, timeout) -> bytes`); the default is an HTTPS
# GET to the SNS host named by the (already checked) SigningCertURL. Each certificate is then cached under its URL.
MAILER_SNS_CERT_FETCHER = env.str("MAILER_SNS_CERT_FETCHER", default="webhooks.sns.sns_certificate_download")
MAILER_SNS_CERT_TIMEOUT_SECONDS = env.float("MAILER_SNS_CERT_TIMEOUT_SECONDS", default=5.0)
MAILER_SNS_CERT_CACHE_SECONDS = env.int("MAILER_SNS_CERT_CACHE_SECONDS", default=24 * 3600)

# Postmark signs nothing: optionally accept its webhooks only from these addresses (comma-separated IPs or CIDRs;
# empty: from anywhere). The client address is REMOTE_ADDR, unless Mailer sits behind MAILER_TRUSTED_PROXY_COUNT
# reverse proxies that each append to X-Forwarded-For: then it is the entry that many places from the right.
MAILER_POSTMARK_ALLOWED_IPS = env.list("MAILER_POSTMARK_ALLOWED_IPS", default=[])
for _entry in MAILER_POSTMARK_ALLOWED_IPS:
    try:
        ipaddress.ip_network(_entry, strict=False)
    except ValueError:
        _config_error(f"MAILER_POSTMARK_ALLOWED_IPS has {_entry!r}, which is not an IP address or CIDR network.")
MAILER_TRUSTED_PROXY_COUNT = env.int("MAILER_TRUSTED_PROXY_COUNT", default=0)

# Django's own mail (password resets, admin errors) goes through the default provider kind.
DEFAULT_PROVIDER_KIND = env.str("DEFAULT_PROVIDER_KIND", default="postmark")
EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
SMTP_URL = env.str("SMTP_URL", default="smtp://127.0.0.1:1025")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Mailer <mailer@example.com>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# Sending.
# Messages one sending task claims at a time: one Postmark batch call can carry 500 of them.
MAILER_CHUNK_SIZE = env.int("MAILER_CHUNK_SIZE", default=500)
MAILER_MAX_ATTEMPTS = env.int("MAILER_MAX_ATTEMPTS", default=5)
MAILER_LEASE_SECONDS = env.int("MAILER_LEASE_SECONDS", default=300)
MAILER_UNSUBSCRIBE_MAILTO = env.str("MAILER_UNSUBSCRIBE_MAILTO", default="")
MAILER_SEND_PARALLELISM = env.int("MAILER_SEND_PARALLELISM", default=2)
# ESP calls each worker process keeps in flight at once (threads, one connection each).
MAILER_SEND_THREADS = env.int("MAILER_SEND_THREADS", default=8)

# Provider reputation over the last 24 hours, for a provider without a warming plan (a plan has its own thresholds):
# above these rates it is left out of routing. 2 %: AWS's advice for SES (which reviews at 5 %); 0.08 %: under the
# 0.1 % at which SES reviews an account and Gmail starts filtering. Fewer messages than the minimum prove nothing.
MAILER_MAX_BOUNCE_RATE = env.float("MAILER_MAX_BOUNCE_RATE", default=0.02)
MAILER_MAX_COMPLAINT_RATE = env.float("MAILER_MAX_COMPLAINT_RATE", default=0.0008)
MAILER_REPUTATION_MIN_SENT = env.int("MAILER_REPUTATION_MIN_SENT", default=100)

# Applying ESP events (docs/WEBHOOKS.md, "What each event does"). A hard bounce suppresses an address at once; soft
# bounces (mailbox full, blocked, SES Transient) suppress it once MAILER_SOFT_BOUNCE_LIMIT messages to it soft-bounced
# within MAILER_SOFT_BOUNCE_WINDOW_DAYS. An open within MAILER_MACHINE_OPEN_SECONDS of its delivery is a machine's
# (a scanner or a privacy proxy fetching images on arrival): kept, flagged, not counted as engagement.
MAILER_SOFT_BOUNCE_LIMIT = env.int("MAILER_SOFT_BOUNCE_LIMIT", default=3)
MAILER_SOFT_BOUNCE_WINDOW_DAYS = env.int("MAILER_SOFT_BOUNCE_WINDOW_DAYS", default=30)
MAILER_MACHINE_OPEN_SECONDS = env.float("MAILER_MACHINE_OPEN_SECONDS", default=2.0)

# Rate limits shared by every worker: MAILER_GLOBAL_MAX_RATE (messages/s over all providers; empty: no limit) on top
# of each provider's own. The circuit breaker: this many retryable failures in a row open a provider's circuit,
# which stays open for the cool-down, then lets one trial call through. All of it lives in Redis when REDIS_URL is
# set, else in a SQLite file that the processes of this machine share. The key prefix lets several installations
# (or test runs) share one Redis.
MAILER_GLOBAL_MAX_RATE = env.float("MAILER_GLOBAL_MAX_RATE", default=None)
MAILER_CIRCUIT_FAILURES = env.int("MAILER_CIRCUIT_FAILURES", default=5)
MAILER_CIRCUIT_COOLDOWN_SECONDS = env.float("MAILER_CIRCUIT_COOLDOWN_SECONDS", default=60.0)
MAILER_LIMITS_FILE = env.str("MAILER_LIMITS_FILE", default="") or str(VAR_DIR / "limits-state.sqlite3")
MAILER_LIMITS_KEY_PREFIX = env.str("MAILER_LIMITS_KEY_PREFIX", default="mailer:limits:")

# Double opt-in: how long a confirmation link works; `manage.py optin_resend` re-sends the ones older than this.
MAILER_OPTIN_EXPIRY_DAYS = env.int("MAILER_OPTIN_EXPIRY_DAYS", default=7)
