from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"

    def ready(self) -> None:
        from subscribers import personal_data
        from webhooks import receivers  # noqa: F401  (connects the anymail tracking receiver)
        from webhooks.privacy import esp_events_erase, esp_events_export

        # subscribers may not import webhooks, so its privacy export and erasure reach the events through this.
        personal_data.register("events", exporter=esp_events_export, eraser=esp_events_erase)
