from typing import Any

from django.core.management.base import BaseCommand

from campaigns.services.demo import demo_data_ensure


class Command(BaseCommand):
    help = "Create the demo list (1,000 subscribers), template and draft campaign, if they are not there."

    def handle(self, *args: Any, **options: Any) -> None:
        demo = demo_data_ensure()
        self.stdout.write(
            f"Demo data ready: list '{demo.mailing_list.name}' ({demo.subscribers_created} new subscribers), "
            f"template '{demo.template.name}', campaign '{demo.campaign.name}' ({demo.campaign.status})."
        )
