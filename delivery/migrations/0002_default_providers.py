from django.db import migrations

DEFAULTS = [("Postmark", "postmark", 10), ("Amazon SES", "amazon_ses", 20), ("SendGrid", "sendgrid", 30)]


def create_providers(apps, schema_editor):
    """A fresh installation can send at once: one provider row per ESP (credentials come from the environment)."""
    Provider = apps.get_model("delivery", "Provider")
    if Provider.objects.exists():
        return
    for name, kind, priority in DEFAULTS:
        Provider.objects.create(name=name, kind=kind, priority=priority, is_enabled=True)


class Migration(migrations.Migration):
    dependencies = [("delivery", "0001_initial")]
    operations = [migrations.RunPython(create_providers, migrations.RunPython.noop)]
