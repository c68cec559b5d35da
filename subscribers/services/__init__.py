"""subscribers: who receives mail and their consent — creating subscribers and subscriptions, importing and
exporting them, unsubscribing (from one list through a signed link, or from everything after a
complaint), and cleaning bounced addresses.
"""

from subscribers.services.subscriptions import (
    subscriber_clean,
    subscriber_unsubscribe,
    subscriber_upsert,
    subscription_create,
    unsubscribe_by_link,
    unsubscribe_link_resolve,
)

__all__ = [
    "subscriber_clean",
    "subscriber_unsubscribe",
    "subscriber_upsert",
    "subscription_create",
    "unsubscribe_by_link",
    "unsubscribe_link_resolve",
]
