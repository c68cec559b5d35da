"""Reads for the campaign pages: its messages by status, and its numbers (kept current by the ESP events' apply in
delivery's MailingStats, MailingHourlyStats and MailingLinkClicks rows: a page reads a few rows, never the events)."""

from __future__ import annotations

from dataclasses import dataclass

from campaigns.models import Campaign
from delivery.models import MailingCounters, MailingHourlyStats, MailingLinkClicks, MailingStats, Message
from delivery.selectors import message_status_counts

# Messages that left for the recipient's mailbox, whatever the ESP reported afterwards: the campaign's "sent".
SENT_STATUSES = (Message.Status.SENT, Message.Status.DELIVERED, Message.Status.BOUNCED, Message.Status.COMPLAINED)


def campaign_message_counts(*, campaign: Campaign) -> dict[str, int]:
    if campaign.mailing_id is None:
        return {}
    return message_status_counts(mailing_id=campaign.mailing_id)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class CampaignNumbers:
    """A campaign's numbers and their rates (None where the base is zero).

    Sent comes from the messages' statuses (the sending engine keeps them; the events never say it for every ESP:
    Postmark reports no send). Rates of delivery and bounces are over the sent; opens, clicks, complaints and
    unsubscribes over the delivered; click-to-open is unique clicks over unique opens. Machine opens count in none.
    """

    sent: int = 0
    delivered: int = 0
    hard_bounced: int = 0
    soft_bounced: int = 0
    complained: int = 0
    unsubscribed: int = 0
    unique_opens: int = 0
    unique_clicks: int = 0
    opens: int = 0
    clicks: int = 0
    machine_opens: int = 0

    @property
    def bounced(self) -> int:
        return self.hard_bounced + self.soft_bounced

    @property
    def rates(self) -> dict[str, float | None]:
        return {
            "delivered": _share(self.delivered, self.sent),
            "hard_bounced": _share(self.hard_bounced, self.sent),
            "soft_bounced": _share(self.soft_bounced, self.sent),
            "complained": _share(self.complained, self.delivered),
            "unsubscribed": _share(self.unsubscribed, self.delivered),
            "unique_opens": _share(self.unique_opens, self.delivered),
            "unique_clicks": _share(self.unique_clicks, self.delivered),
            "click_to_open": _share(self.unique_clicks, self.unique_opens),
        }


def campaign_numbers(*, campaign: Campaign, status_counts: dict[str, int] | None = None) -> CampaignNumbers | None:
    """None before the campaign has a mailing. `status_counts`: message_status_counts already read for the page."""
    if campaign.mailing_id is None:
        return None
    counts = status_counts if status_counts is not None else campaign_message_counts(campaign=campaign)
    stats = MailingStats.objects.filter(mailing_id=campaign.mailing_id).values(*MailingCounters.COUNTERS).first()
    return CampaignNumbers(sent=sum(counts.get(status, 0) for status in SENT_STATUSES), **(stats or {}))


def campaign_link_clicks(*, campaign: Campaign, limit: int = 50) -> list[tuple[str, int]]:
    """The most clicked links, with their clicks."""
    if campaign.mailing_id is None:
        return []
    rows = MailingLinkClicks.objects.filter(mailing_id=campaign.mailing_id).order_by("-clicks", "url")
    return list(rows.values_list("url", "clicks")[:limit])


def campaign_hourly(*, campaign: Campaign, limit: int = 72) -> list[MailingHourlyStats]:
    """The latest `limit` hours with events, oldest first."""
    if campaign.mailing_id is None:
        return []
    rows = MailingHourlyStats.objects.filter(mailing_id=campaign.mailing_id).order_by("-hour")[:limit]
    return list(reversed(rows))
