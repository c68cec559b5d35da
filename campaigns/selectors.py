from __future__ import annotations

from campaigns.models import Campaign
from delivery.selectors import message_status_counts


def campaign_message_counts(*, campaign: Campaign) -> dict[str, int]:
    if campaign.mailing_id is None:
        return {}
    return message_status_counts(mailing_id=campaign.mailing_id)
