"""delivery's business operations: suppression, mailings and messages, and sending.

The engine honours the suppression list on every path, claims work in chunks, makes ESP calls outside any
database transaction, and records every outcome so that no message vanishes.
"""

from delivery.services.deadletters import (
    DeadLettersRetried,
    deadletters_discard,
    deadletters_list,
    deadletters_purge,
    deadletters_retry,
)
from delivery.services.mailings import (
    mailing_cancel,
    mailing_create,
    mailing_pause,
    mailing_resume,
    message_status_apply,
    messages_erase_address,
)
from delivery.services.reclaim import messages_reclaim_expired
from delivery.services.sending import ChunkResult, mailing_send_chunk, mailings_pump
from delivery.services.suppression import suppression_add, suppression_erase_address, suppression_remove
from delivery.services.warming import providers_warming_advance, warming_cap_today, warming_start

__all__ = [
    "ChunkResult",
    "DeadLettersRetried",
    "deadletters_discard",
    "deadletters_list",
    "deadletters_purge",
    "deadletters_retry",
    "mailing_cancel",
    "mailing_create",
    "mailing_pause",
    "mailing_resume",
    "mailing_send_chunk",
    "mailings_pump",
    "message_status_apply",
    "messages_erase_address",
    "messages_reclaim_expired",
    "providers_warming_advance",
    "suppression_add",
    "suppression_erase_address",
    "suppression_remove",
    "warming_cap_today",
    "warming_start",
]
