from __future__ import annotations

import logging
from datetime import datetime
from email.utils import parseaddr

from django.db import transaction
from django.utils import timezone

from campaigns.exceptions import CampaignNotSendable
from campaigns.models import Campaign
from campaigns.services.fanout import Audience, audience_count, audience_materialize
from core.addresses import InvalidEmailAddress, email_clean
from delivery.models import Mailing
from delivery.rendering import template_check
from delivery.selectors import mailing_has_pending
from delivery.services import mailing_cancel, mailing_create, mailing_pause, mailing_resume
from delivery.tasks import mailing_send_start
from subscribers.segments import SegmentRuleInvalid
from subscribers.services import engagement_sent_record

logger = logging.getLogger(__name__)


def _check_sendable(campaign: Campaign) -> None:
    """Every reason a campaign cannot go out, said plainly, before anything is changed."""
    if campaign.status != Campaign.Status.DRAFT:
        raise CampaignNotSendable(
            f"Campaign '{campaign.name}' is {campaign.get_status_display().lower()}; only a draft can be sent "
            "or scheduled."
        )
    if campaign.template_id is None:
        raise CampaignNotSendable(f"Campaign '{campaign.name}' has no template.", {"field": "template"})
    for part in ("subject", "html", "text"):
        template_check(getattr(campaign.template, part), part=part)
    if not campaign.from_email:
        raise CampaignNotSendable(f"Campaign '{campaign.name}' has no sender address.", {"field": "from_email"})
    sender = parseaddr(campaign.from_email)[1]
    try:
        email_clean(sender)
    except InvalidEmailAddress as exc:
        raise CampaignNotSendable(
            f"Campaign '{campaign.name}': the sender {campaign.from_email!r} is not a valid address.",
            {"field": "from_email"},
        ) from exc
    audience = campaign_audience(campaign=campaign)
    if audience.is_empty:
        raise CampaignNotSendable(f"Campaign '{campaign.name}' targets no list and no segment.", {"field": "lists"})
    try:
        count = audience_count(audience=audience)
    except SegmentRuleInvalid as exc:
        raise CampaignNotSendable(
            f"Campaign '{campaign.name}': its segment is not valid. {exc.message}", {"field": "segment"}
        ) from exc
    if count == 0:
        raise CampaignNotSendable(
            f"Campaign '{campaign.name}' has no recipients: no active, unsuppressed subscriber with a confirmed "
            "subscription matches its lists, segment and exclusions.",
            {"field": "lists"},
        )


def campaign_audience(*, campaign: Campaign) -> Audience:
    """The campaign's aim as it stands now; campaign_start freezes it into Messages."""
    return Audience(
        list_ids=list(campaign.lists.values_list("pk", flat=True)),
        segment_rules=campaign.segment.rules if campaign.segment is not None else None,
        exclude_list_ids=list(campaign.exclude_lists.values_list("pk", flat=True)),
    )


def _locked(campaign: Campaign) -> Campaign:
    return Campaign.objects.select_for_update(of=("self",)).select_related("template", "segment").get(pk=campaign.pk)


@transaction.atomic
def campaign_schedule(*, campaign: Campaign, at: datetime) -> Campaign:
    """Schedule a draft for `at`. A time in the past is refused rather than silently sent now."""
    campaign = _locked(campaign)
    if at is None or timezone.is_naive(at):
        raise CampaignNotSendable("A schedule needs a date and time with a time zone.", {"field": "scheduled_at"})
    if at <= timezone.now():
        raise CampaignNotSendable(
            f"The schedule {at.isoformat()} is in the past; pick a future time or send now.",
            {"field": "scheduled_at"},
        )
    _check_sendable(campaign)
    campaign.status = Campaign.Status.SCHEDULED
    campaign.scheduled_at = at
    campaign.save(update_fields=["status", "scheduled_at", "updated_at"])
    return campaign


@transaction.atomic
def campaign_send(*, campaign: Campaign) -> Campaign:
    """Send now: the same path as a schedule that is already due; the audience is built right away."""
    campaign = _locked(campaign)
    _check_sendable(campaign)
    campaign.status = Campaign.Status.SCHEDULED
    campaign.scheduled_at = timezone.now()
    campaign.save(update_fields=["status", "scheduled_at", "updated_at"])
    return campaign_start(campaign=campaign)


@transaction.atomic
def campaign_start(*, campaign: Campaign) -> Campaign:
    """Freeze the content into a Mailing, build the audience, start sending. Running it twice is a no-op."""
    campaign = _locked(campaign)
    if campaign.status != Campaign.Status.SCHEDULED:
        return campaign
    template = campaign.template
    if template is None:  # only a draft can lose its template; a scheduled one is read-only
        raise CampaignNotSendable(f"Campaign '{campaign.name}' has no template.", {"field": "template"})
    audience = campaign_audience(campaign=campaign)
    mailing = mailing_create(
        kind=Mailing.Kind.CAMPAIGN,
        name=campaign.name,
        subject_template=template.subject,
        html_template=template.html,
        text_template=template.text,
        from_email=campaign.from_email,
        reply_to=campaign.reply_to,
        provider=campaign.provider,
        list_id=f"<campaign-{campaign.pk}.mailer>",
        # The lists an unsubscribe link leaves; a campaign aimed at a segment alone names none, so its link
        # unsubscribes from everything.
        owner_data={"campaign_id": campaign.pk, "list_ids": audience.list_ids},
    )
    count = audience_materialize(mailing=mailing, audience=audience)
    campaign.mailing = mailing
    campaign.status = Campaign.Status.SENDING
    campaign.started_at = timezone.now()
    campaign.save(update_fields=["mailing", "status", "started_at", "updated_at"])
    logger.info("campaign %s started: %s messages", campaign.pk, count)
    mailing_send_start(mailing.pk)
    return campaign


@transaction.atomic
def campaign_pause(*, campaign: Campaign) -> Campaign:
    """Stop sending within one chunk: messages not yet claimed wait; those in flight finish."""
    campaign = _locked(campaign)
    if campaign.status != Campaign.Status.SENDING or campaign.mailing is None:
        raise CampaignNotSendable(
            f"Campaign '{campaign.name}' is {campaign.get_status_display().lower()}; only a sending campaign can "
            "be paused."
        )
    mailing_pause(mailing=campaign.mailing)
    campaign.status = Campaign.Status.PAUSED
    campaign.save(update_fields=["status", "updated_at"])
    return campaign


@transaction.atomic
def campaign_resume(*, campaign: Campaign) -> Campaign:
    """Carry on where it stopped: only messages still queued are sent, so nothing goes twice."""
    campaign = _locked(campaign)
    if campaign.status != Campaign.Status.PAUSED or campaign.mailing is None:
        raise CampaignNotSendable(
            f"Campaign '{campaign.name}' is {campaign.get_status_display().lower()}; only a paused campaign can "
            "be resumed."
        )
    mailing_resume(mailing=campaign.mailing)
    campaign.status = Campaign.Status.SENDING
    campaign.save(update_fields=["status", "updated_at"])
    return campaign


@transaction.atomic
def campaign_cancel(*, campaign: Campaign) -> Campaign:
    campaign = _locked(campaign)
    if campaign.status not in (
        Campaign.Status.DRAFT,
        Campaign.Status.SCHEDULED,
        Campaign.Status.SENDING,
        Campaign.Status.PAUSED,
    ):
        raise CampaignNotSendable(f"Campaign '{campaign.name}' is {campaign.status} and cannot be cancelled.")
    if campaign.mailing is not None:
        mailing_cancel(mailing=campaign.mailing)
    campaign.status = Campaign.Status.CANCELLED
    campaign.finished_at = timezone.now()
    campaign.save(update_fields=["status", "finished_at", "updated_at"])
    return campaign


def campaigns_dispatch_due() -> dict[str, int]:
    """Start the campaigns whose time has come, and close the ones with nothing left to send."""
    started = finished = 0
    due = Campaign.objects.filter(status=Campaign.Status.SCHEDULED, scheduled_at__lte=timezone.now())
    for campaign in due.order_by("scheduled_at")[:20]:
        campaign_start(campaign=campaign)
        started += 1
    sending = Campaign.objects.filter(status=Campaign.Status.SENDING, mailing__isnull=False)
    for campaign_id, mailing_id in sending.values_list("pk", "mailing_id"):
        if not mailing_has_pending(mailing_id=mailing_id):
            finished += campaign_finish(campaign_id=campaign_id, mailing_id=mailing_id)
    return {"started": started, "finished": finished}


@transaction.atomic
def campaign_finish(*, campaign_id: int, mailing_id: int) -> int:
    """Close a campaign that has nothing left to send and count the send in its recipients' engagement.

    The status change is the guard: only the run that moves it from sending to sent counts, so two beats
    racing here count each send once.
    """
    updated = Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SENDING).update(
        status=Campaign.Status.SENT, finished_at=timezone.now()
    )
    if updated:
        engagement_sent_record(mailing_id=mailing_id)
    return updated
