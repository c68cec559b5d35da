"""campaigns: what is sent and when — templates, campaigns, scheduling, and the set-wise audience fan-out
that turns a campaign into a delivery Mailing with one Message per eligible subscriber.
"""

from campaigns.services.campaigns import (
    campaign_audience,
    campaign_cancel,
    campaign_finish,
    campaign_pause,
    campaign_resume,
    campaign_schedule,
    campaign_send,
    campaign_start,
    campaigns_dispatch_due,
)
from campaigns.services.fanout import Audience, audience_count, audience_materialize
from campaigns.services.templates import template_create, template_update

__all__ = [
    "Audience",
    "audience_count",
    "audience_materialize",
    "campaign_audience",
    "campaign_cancel",
    "campaign_finish",
    "campaign_pause",
    "campaign_resume",
    "campaign_schedule",
    "campaign_send",
    "campaign_start",
    "campaigns_dispatch_due",
    "template_create",
    "template_update",
]
