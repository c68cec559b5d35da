"""subscribers: who receives mail and their consent — creating subscribers and subscriptions, importing and
exporting them, unsubscribing (from one list through a signed link, or from everything after a
complaint), and cleaning bounced addresses; a person's copy of their data and its erasure (privacy).
"""

from subscribers.services.engagement import engagement_event_record, engagement_sent_record
from subscribers.services.exporting import (
    cell_neutralize,
    csv_chunks,
    csv_rows_write,
    subscriber_attribute_keys,
    subscribers_export_csv,
    subscribers_export_rows,
)
from subscribers.services.privacy import (
    ErasureResult,
    subscriber_data_export,
    subscriber_erase,
    subscriber_get_by_email,
)
from subscribers.services.subscriptions import (
    subscriber_clean,
    subscriber_unsubscribe,
    subscriber_upsert,
    subscription_create,
    unsubscribe_by_link,
    unsubscribe_link_resolve,
)

__all__ = [
    "engagement_event_record",
    "engagement_sent_record",
    "subscriber_clean",
    "subscriber_unsubscribe",
    "subscriber_upsert",
    "subscription_create",
    "unsubscribe_by_link",
    "unsubscribe_link_resolve",
    "cell_neutralize",
    "csv_chunks",
    "csv_rows_write",
    "subscriber_attribute_keys",
    "subscribers_export_csv",
    "subscribers_export_rows",
    "ErasureResult",
    "subscriber_data_export",
    "subscriber_erase",
    "subscriber_get_by_email",
]
