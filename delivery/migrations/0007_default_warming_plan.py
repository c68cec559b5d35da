from django.db import migrations

DEFAULT_PLAN_NAME = "Default 30-day warm-up"

# Messages allowed per day, day 1 first. How the numbers were made:
# - Growth of x1.4 a day: the rate of SendGrid's automated IP warm-up, whose published hourly schedule goes 20, 28,
#   39, 55, 77 ... messages an hour by day of warm-up (twilio.com/docs/sendgrid, "Warming Up an IP Address").
# - Starting at 50 a day: the first day of the manual daily schedules that follow SendGrid's guidance, about a tenth of
#   its automated day 0 (20 an hour, 480 a day if sent round the clock). We start that low because the cap applies
#   to a whole provider, and a provider may be a dedicated IP with no other warm IP to take the overflow.
# - Amazon SES warms a standard dedicated IP automatically over 45 days up to 50,000 messages a day, and says a new IP
#   needs at least 14 days and up to 6 weeks with many mailbox providers (SES Developer Guide, "Warming up dedicated
#   IP addresses"). This plan passes 50,000 a day on day 22: after SES's 14-day minimum, faster than its 45-day plan.
#   A sender who wants SES's pace adds a longer plan in the admin; managed SES pools warm themselves.
# - Postmark publishes no schedule (its sending IPs are shared and managed by Postmark); its advice, like SES's, is to
#   send to the most engaged recipients first, which the engine does while a provider warms.
# Rounded to two significant figures. Day 30 allows 860,000; after it the plan no longer limits the provider.
DEFAULT_DAILY_CAPS = [
    50, 70, 98, 140, 190, 270, 380, 530, 740, 1000,
    1400, 2000, 2800, 4000, 5600, 7800, 11000, 15000, 21000, 30000,
    42000, 59000, 82000, 110000, 160000, 220000, 310000, 440000, 620000, 860000,
]  # fmt: skip


def create_default_plan(apps, schema_editor):
    """Every installation has a plan to start warming a new provider with; an existing plan of that name stays."""
    WarmingPlan = apps.get_model("delivery", "WarmingPlan")
    WarmingPlan.objects.get_or_create(
        name=DEFAULT_PLAN_NAME,
        # Bounce rate above 2 %: under SES's review threshold of 5 % and at AWS's advice to stay below 2 %.
        # Complaint rate above 0.08 %: under SES's review threshold (0.1 %) and Gmail's limit (0.1 %).
        defaults={"daily_caps": DEFAULT_DAILY_CAPS, "max_bounce_rate": 0.02, "max_complaint_rate": 0.0008},
    )


def delete_default_plan(apps, schema_editor):
    """Only when no provider uses it: a provider's plan is protected, and its warming must not be lost."""
    WarmingPlan = apps.get_model("delivery", "WarmingPlan")
    WarmingPlan.objects.filter(name=DEFAULT_PLAN_NAME, providers__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("delivery", "0006_dead_letters")]
    operations = [migrations.RunPython(create_default_plan, delete_default_plan)]
