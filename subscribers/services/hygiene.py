"""List hygiene: find the subscribers a list is better off without, then unsubscribe or suppress them.

Five checks (HygieneReason), each chosen or left out by the caller:
- invalid: the address fails the import's own check (import_rows.email_check, no DNS), so an address that
  came in another way (API, admin, an older import) is held to today's rule;
- disposable: its domain, or a parent of it, is on the disposable-email-domains package's blocklist;
- role: the local part before any +tag names a function, not a person (info@, noreply@, ...): such mailboxes
  are shared, rarely gave consent themselves, and complain more;
- inactive: sent_since_open >= N (N campaigns without an open), optionally only for subscribers older than
  a minimum age, decided by the database;
- mx (off unless asked for): the domain does not receive mail, by email-validator's deliverability rule,
  the same one the import's --check-dns uses (no MX and no A/AAAA, a null MX, or no such domain). A lookup
  that times out or finds no name server decides nothing: it is counted as unknown, never flagged.

Who is checked: the people we still mail, so that a second run after applying finds none of them again:
active subscribers (of a list: with a subscription there that has not ended) whose address is not suppressed.

Cost: one query streams (pk, email, inactive) in chunks, whatever the number of rows; Python checks each
address once and each distinct domain once (memoized). With the MX check, a first query collects the distinct
domains and their lookups run in parallel threads before the scan, so no DNS waits while a cursor is open.
The report keeps the flagged rows (not the clean ones): its memory grows with what it flags.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import chain
from typing import Any

import dns.resolver
from disposable_email_domains import blocklist
from django.db import models, transaction
from django.db.models import BooleanField, Case, Exists, OuterRef, Q, QuerySet, Value, When
from django.utils import timezone
from email_validator import EmailUndeliverableError
from email_validator.deliverability import validate_email_deliverability

from core.exceptions import ApplicationError
from delivery.models import Suppression
from delivery.services import suppression_add
from subscribers.models import MailingList, Subscriber, Subscription
from subscribers.services.exporting import cell_neutralize, csv_chunks
from subscribers.services.import_rows import email_check
from subscribers.services.subscriptions import subscriber_unsubscribe


class HygieneReason(models.TextChoices):
    INVALID = "invalid", "Invalid address"
    DISPOSABLE = "disposable", "Disposable domain"
    ROLE = "role", "Role address"
    INACTIVE = "inactive", "Inactive"
    MX = "mx", "Domain receives no mail"


class HygieneAction(models.TextChoices):
    UNSUBSCRIBE = "unsubscribe", "Unsubscribe"
    SUPPRESS = "suppress", "Suppress"


class HygieneOptionsInvalid(ApplicationError):
    code = "hygiene_options_invalid"


# The MX check makes DNS queries for every distinct domain: only when asked for.
DEFAULT_CHECKS = frozenset(
    {HygieneReason.INVALID, HygieneReason.DISPOSABLE, HygieneReason.ROLE, HygieneReason.INACTIVE}
)
DEFAULT_INACTIVE_AFTER = 10
MX_TIMEOUT_SECONDS = 5.0
MX_LOOKUP_THREADS = 16
SCAN_CHUNK_SIZE = 2000
APPLY_CHUNK_SIZE = 500

# Local parts that name a function or a machine rather than a person (RFC 2142 and common practice).
ROLE_LOCAL_PARTS = frozenset(
    {
        "abuse", "accounting", "accounts", "admin", "administrator", "all", "billing", "careers", "compliance",
        "contact", "customercare", "customerservice", "devnull", "dns", "do-not-reply", "donotreply", "enquiries",
        "everyone", "feedback", "finance", "ftp", "hello", "help", "helpdesk", "hostmaster", "hr", "info",
        "inquiries", "it", "jobs", "legal", "mailer-daemon", "marketing", "media", "newsletter", "no-reply",
        "no_reply", "noc", "noreply", "office", "orders", "postmaster", "press", "privacy", "recruiting", "root",
        "sales", "security", "service", "staff", "subscribe", "support", "sysadmin", "team", "tech", "unsubscribe",
        "usenet", "uucp", "webmaster", "www",
    }
)  # fmt: skip

_MX_OK, _MX_NONE, _MX_UNKNOWN = "ok", "none", "unknown"


@dataclass(frozen=True, slots=True)
class HygieneFlag:
    subscriber_id: int
    email: str
    reasons: tuple[str, ...]  # in HygieneReason order


@dataclass
class HygieneReport:
    mailing_list_id: int | None
    checks: tuple[str, ...]  # in HygieneReason order
    inactive_after: int
    min_age_days: int
    checked: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # subscribers per reason; one may count under several
    flagged: list[HygieneFlag] = field(default_factory=list)
    mx_unknown: int = 0  # subscribers whose domain could not be looked up (timeout, no name server): not flagged

    @property
    def flagged_count(self) -> int:
        return len(self.flagged)


def _domain(email: str) -> str:
    _, at, domain = email.rpartition("@")
    return domain.lower() if at else ""


def _is_role_address(email: str) -> bool:
    local = email.rpartition("@")[0]
    return local.partition("+")[0].lower() in ROLE_LOCAL_PARTS


def _is_disposable_domain(domain: str) -> bool:
    """The domain or any parent below the top level is listed: the blocklist names registrable domains, and
    their services hand out addresses on any subdomain."""
    labels = domain.lower().split(".")
    return any(".".join(labels[start:]) in blocklist for start in range(len(labels) - 1))


def mx_resolver(*, timeout: float = MX_TIMEOUT_SECONDS) -> dns.resolver.Resolver:
    """A resolver of our own, so the process-wide default keeps its settings. `lifetime` bounds each lookup,
    retries included; the deliverability rule makes up to four per domain (MX, A, AAAA, TXT)."""
    resolver = dns.resolver.Resolver()
    resolver.lifetime = timeout
    resolver.timeout = min(resolver.timeout, timeout)
    return resolver


def _mx_verdict(domain: str, resolver: Any) -> str:
    try:
        info = validate_email_deliverability(domain, domain, dns_resolver=resolver)
    except EmailUndeliverableError:
        return _MX_NONE
    return _MX_UNKNOWN if "unknown-deliverability" in info else _MX_OK


class _Domains:
    """Each distinct domain's answers, computed once per report."""

    def __init__(self, resolver: Any) -> None:
        self.resolver = resolver
        self.disposable: dict[str, bool] = {}
        self.mx: dict[str, str] = {}

    def is_disposable(self, domain: str) -> bool:
        answer = self.disposable.get(domain)
        if answer is None:
            answer = self.disposable[domain] = _is_disposable_domain(domain)
        return answer

    def mx_verdict(self, domain: str) -> str:
        verdict = self.mx.get(domain)
        if verdict is None:  # a domain first seen after the prefetch: looked up on its own
            verdict = self.mx[domain] = _mx_verdict(domain, self.resolver)
        return verdict

    def mx_prefetch(self, domains: Iterable[str]) -> None:
        todo = sorted(set(domains) - self.mx.keys())
        with ThreadPoolExecutor(max_workers=MX_LOOKUP_THREADS, thread_name_prefix="mx") as pool:
            for domain, verdict in zip(todo, pool.map(lambda d: _mx_verdict(d, self.resolver), todo), strict=True):
                self.mx[domain] = verdict


def _scope(mailing_list: MailingList | None) -> QuerySet[Subscriber]:
    people = Subscriber.objects.filter(status=Subscriber.Status.ACTIVE).filter(
        ~Exists(Suppression.objects.filter(email=OuterRef("email")))
    )
    if mailing_list is not None:
        # One filter() call, so both conditions bind to the same subscription row.
        people = people.filter(
            subscriptions__mailing_list=mailing_list,
            subscriptions__status__in=[Subscription.Status.ACTIVE, Subscription.Status.PENDING],
        )
    return people.order_by("pk")


def _inactive(*, inactive_after: int, min_age_days: int) -> Q:
    condition = Q(sent_since_open__gte=inactive_after)
    if min_age_days:
        condition &= Q(created_at__lte=timezone.now() - timedelta(days=min_age_days))
    return condition


def _checks_read(checks: Collection[str]) -> tuple[str, ...]:
    unknown = sorted(set(checks) - set(HygieneReason.values))
    if unknown:
        raise HygieneOptionsInvalid(
            f"Unknown check {', '.join(unknown)}; choose from {', '.join(HygieneReason.values)}.",
            {"checks": unknown},
        )
    if not checks:
        raise HygieneOptionsInvalid("Choose at least one check.")
    return tuple(reason for reason in HygieneReason.values if reason in checks)


def list_hygiene_report(
    *,
    mailing_list: MailingList | None = None,
    checks: Collection[str] = DEFAULT_CHECKS,
    inactive_after: int = DEFAULT_INACTIVE_AFTER,
    min_age_days: int = 0,
    resolver: Any = None,
    mx_timeout: float = MX_TIMEOUT_SECONDS,
    chunk_size: int = SCAN_CHUNK_SIZE,
) -> HygieneReport:
    """Check a list's subscribers (everyone's without a list) and report who is flagged, and why.

    `resolver` answers the MX check's DNS queries (dnspython's Resolver interface); by default a fresh one
    with `mx_timeout` per lookup. Reads only: nothing is changed.
    """
    wanted = _checks_read(checks)
    if inactive_after < 1:
        raise HygieneOptionsInvalid("Inactive after must be at least 1 campaign.")
    if min_age_days < 0:
        raise HygieneOptionsInvalid("The minimum age cannot be negative.")
    report = HygieneReport(
        mailing_list_id=mailing_list.pk if mailing_list is not None else None,
        checks=wanted,
        inactive_after=inactive_after,
        min_age_days=min_age_days,
        counts=dict.fromkeys(wanted, 0),
    )
    scope = _scope(mailing_list)
    inactive = _inactive(inactive_after=inactive_after, min_age_days=min_age_days)
    check_inactive = HygieneReason.INACTIVE in wanted
    only_inactive = wanted == (HygieneReason.INACTIVE,)
    if only_inactive:
        # Nothing to look at in Python: the database finds the inactive ones, and only they are read.
        report.checked = scope.count()
        rows = scope.filter(inactive).values_list("pk", "email", Value(True))
    else:
        flag = (
            Case(When(inactive, then=Value(True)), default=Value(False), output_field=BooleanField())
            if check_inactive
            else Value(False, output_field=BooleanField())
        )
        rows = scope.values_list("pk", "email", flag)
    check_invalid = HygieneReason.INVALID in wanted
    check_disposable = HygieneReason.DISPOSABLE in wanted
    check_role = HygieneReason.ROLE in wanted
    check_mx = HygieneReason.MX in wanted
    domains = _Domains(resolver)
    if check_mx:
        if resolver is None:
            domains.resolver = mx_resolver(timeout=mx_timeout)
        domains.mx_prefetch(
            _domain(email)
            for email in scope.values_list("email", flat=True).iterator(chunk_size=chunk_size)
            if not email_check(email, False)[1]
        )
    counts = report.counts
    for pk, email, is_inactive in rows.iterator(chunk_size=chunk_size):
        if not only_inactive:
            report.checked += 1
        # An address that is not one is not looked up in the DNS, but its other faults are still named.
        valid = not email_check(email, False)[1]
        domain = _domain(email)
        reasons: list[str] = []
        if check_invalid and not valid:
            reasons.append(HygieneReason.INVALID)
        if check_disposable and domain and domains.is_disposable(domain):
            reasons.append(HygieneReason.DISPOSABLE)
        if check_role and _is_role_address(email):
            reasons.append(HygieneReason.ROLE)
        if check_inactive and is_inactive:
            reasons.append(HygieneReason.INACTIVE)
        if check_mx and valid:
            verdict = domains.mx_verdict(domain)
            if verdict == _MX_NONE:
                reasons.append(HygieneReason.MX)
            elif verdict == _MX_UNKNOWN:
                report.mx_unknown += 1
        if reasons:
            for reason in reasons:
                counts[reason] += 1
            report.flagged.append(HygieneFlag(pk, email, tuple(str(reason) for reason in reasons)))
    return report


def _source(flag: HygieneFlag) -> str:
    return "hygiene:" + ",".join(flag.reasons)


def list_hygiene_apply(
    *,
    report: HygieneReport,
    action: str,
    subscriber_ids: Collection[int] | None = None,
    chunk_size: int = APPLY_CHUNK_SIZE,
) -> int:
    """Act on a report's flagged subscribers (only those in `subscriber_ids` when given). Returns how many
    changed: subscribers unsubscribed, or addresses newly suppressed.

    unsubscribe: from the report's list, or from everything when the report covers everyone (the subscriber
    then becomes unsubscribed too). suppress: the address goes on the suppression list, reason manual, source
    hygiene:<reasons>, for every list; queued messages to it end suppressed. Both go through the services that
    own those rules, one transaction per chunk; running it twice changes nothing more.
    """
    if action not in HygieneAction.values:
        raise HygieneOptionsInvalid(f"Unknown action {action!r}; choose from {', '.join(HygieneAction.values)}.")
    flags = report.flagged
    if subscriber_ids is not None:
        chosen = set(subscriber_ids)
        flags = [flag for flag in flags if flag.subscriber_id in chosen]
    list_ids = [report.mailing_list_id] if report.mailing_list_id is not None else None
    changed = 0
    for start in range(0, len(flags), chunk_size):
        chunk = flags[start : start + chunk_size]
        with transaction.atomic():
            if action == HygieneAction.SUPPRESS:
                for flag in chunk:
                    _, created = suppression_add(
                        email=flag.email, reason=Suppression.Reason.MANUAL, source=_source(flag)
                    )
                    changed += created
                continue
            people = Subscriber.objects.in_bulk([flag.subscriber_id for flag in chunk])
            for flag in chunk:
                subscriber = people.get(flag.subscriber_id)
                if subscriber is None:  # erased since the report
                    continue
                was_active = subscriber.status == Subscriber.Status.ACTIVE
                ended = subscriber_unsubscribe(subscriber=subscriber, list_ids=list_ids, source=_source(flag))
                changed += bool(ended or (list_ids is None and was_active))
    return changed


def list_hygiene_csv(*, report: HygieneReport) -> Iterator[str]:
    """The flagged rows as CSV text (email, reasons), cells neutralized like the export's."""
    rows = ((cell_neutralize(flag.email), ",".join(flag.reasons)) for flag in report.flagged)
    return csv_chunks(chain([["email", "reasons"]], rows))
