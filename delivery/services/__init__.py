"""delivery's business operations: suppression, mailings and messages, and sending.

The engine honours the suppression list on every path, claims work in chunks, makes ESP calls outside any
database transaction, and records every outcome so that no message vanishes.
"""

from delivery.services.mailings import mailing_cancel, mailing_create, message_status_apply, messages_erase_address
from delivery.services.sending import (
    ChunkResult,
    mailing_send_chunk,
    mailings_pump,
    messages_reclaim_expired,
)
from delivery.services.suppression import suppression_add, suppression_erase_address, suppression_remove

__all__ = [
    "ChunkResult",
    "mailing_cancel",
    "mailing_create",
    "mailing_send_chunk",
    "mailings_pump",
    "message_status_apply",
    "messages_erase_address",
    "messages_reclaim_expired",
    "suppression_add",
    "suppression_erase_address",
    "suppression_remove",
]
