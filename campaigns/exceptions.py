from core.exceptions import ApplicationError


class CampaignNotSendable(ApplicationError):
    code = "campaign_not_sendable"
