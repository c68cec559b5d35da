from __future__ import annotations

from django.db import transaction

from core.addresses import normalize_email
from delivery.models import Message, Suppression


@transaction.atomic
def suppression_add(*, email: str, reason: str, source: str, detail: str = "") -> tuple[Suppression, bool]:
    """Suppress an address for good. The first reason stays; later ones do not overwrite it.

    Messages still waiting for that address end `suppressed` at once, so a queued send cannot slip through.
    """
    address = normalize_email(email)
    suppression, created = Suppression.objects.get_or_create(
        email=address, defaults={"reason": reason, "source": source, "detail": detail[:2000]}
    )
    if created:
        Message.objects.filter(to_email=address, status=Message.Status.QUEUED).update(
            status=Message.Status.SUPPRESSED, last_error=f"suppressed: {reason}"
        )
    return suppression, created


def suppression_remove(*, email: str) -> bool:
    deleted, _ = Suppression.objects.filter(email=normalize_email(email)).delete()
    return bool(deleted)
