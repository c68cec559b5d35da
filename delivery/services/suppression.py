"""The suppression list: addresses that must never be mailed again, and the hashes of erased people's addresses."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import transaction

from core.addresses import address_hash, normalize_email
from delivery.models import Message, Suppression


@transaction.atomic
def suppression_add(*, email: str, reason: str, source: str, detail: str = "") -> tuple[Suppression, bool]:
    """Suppress an address for good. The first reason stays; later ones do not overwrite it.

    Messages still waiting for that address end `suppressed` at once, so a queued send cannot slip through.
    Looked up by hash, so that an erased address (a row with only the hash) is found too and is not written back:
    its owner asked for it to be forgotten, and it is suppressed already.
    """
    address = normalize_email(email)
    suppression, created = Suppression.objects.get_or_create(
        email_hash=address_hash(address),
        defaults={"email": address, "reason": reason, "source": source, "detail": detail[:2000]},
    )
    if created:
        Message.objects.filter(to_email=address, status=Message.Status.QUEUED).update(
            status=Message.Status.SUPPRESSED, last_error=f"suppressed: {reason}"
        )
    return suppression, created


def suppression_remove(*, email: str) -> bool:
    deleted, _ = Suppression.objects.filter(email=normalize_email(email)).delete()
    return bool(deleted)


@transaction.atomic
def suppression_erase_address(*, email: str, source: str) -> tuple[Suppression, bool]:
    """Keep an erased person's address suppressed by its hash alone. Returns the row and whether it is new.

    A row that already held the address loses it (and its detail, where MTA responses quote the address) but
    keeps its reason, by the rule of suppression_add: the first reason stays. An erased row is the one whose
    email is empty, whatever its reason; subscribers refuse to add such an address again.
    """
    suppression, created = Suppression.objects.get_or_create(
        email_hash=address_hash(email),
        defaults={"email": None, "reason": Suppression.Reason.ERASED, "source": source},
    )
    if not created and (suppression.email is not None or suppression.detail):
        suppression.email = None
        suppression.detail = ""
        suppression.save(update_fields=["email", "detail"])
    return suppression, created


@dataclass(frozen=True)
class SuppressionRequest:
    email: str
    reason: str
    source: str
    detail: str = ""


@transaction.atomic
def suppressions_add(*, requests: Sequence[SuppressionRequest]) -> list[str]:
    """suppression_add for many addresses in a few statements (applying a batch of ESP events); returns the
    addresses newly suppressed. The same rules: the first request for an address wins, an address suppressed before
    (or erased: found by hash) keeps its row, and its queued messages end `suppressed`."""
    wanted: dict[str, tuple[str, SuppressionRequest]] = {}
    for request in requests:
        address = normalize_email(request.email)
        wanted.setdefault(address_hash(address), (address, request))
    if not wanted:
        return []
    known = set(Suppression.objects.filter(email_hash__in=list(wanted)).values_list("email_hash", flat=True))
    new = [
        Suppression(email=address, email_hash=key, reason=r.reason, source=r.source[:100], detail=r.detail[:2000])
        for key, (address, r) in wanted.items()
        if key not in known
    ]
    Suppression.objects.bulk_create(new, ignore_conflicts=True)  # one added meanwhile by another worker stays
    by_reason: dict[str, list[str]] = defaultdict(list)
    for suppression in new:
        by_reason[suppression.reason].append(str(suppression.email))
    for reason, addresses in by_reason.items():
        Message.objects.filter(to_email__in=addresses, status=Message.Status.QUEUED).update(
            status=Message.Status.SUPPRESSED, last_error=f"suppressed: {reason}"
        )
    return [address for addresses in by_reason.values() for address in addresses]
