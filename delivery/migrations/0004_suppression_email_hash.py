import hashlib

from django.db import migrations, models


def _fill_hashes(apps, schema_editor):
    Suppression = apps.get_model("delivery", "Suppression")
    for row in Suppression.objects.filter(email_hash__isnull=True).iterator():
        row.email_hash = hashlib.sha256(row.email.strip().lower().encode("utf-8")).hexdigest()
        row.save(update_fields=["email_hash"])


class Migration(migrations.Migration):
    dependencies = [("delivery", "0003_slimmer_indexes")]

    operations = [
        migrations.AlterField(
            model_name="suppression",
            name="email",
            field=models.CharField(
                blank=True, help_text="Normalized (lower-case) address.", max_length=254, null=True, unique=True
            ),
        ),
        migrations.AddField(
            model_name="suppression",
            name="email_hash",
            field=models.CharField(max_length=64, null=True),
        ),
        migrations.RunPython(_fill_hashes, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="suppression",
            name="email_hash",
            field=models.CharField(
                help_text="SHA-256 of the normalized address (core.addresses.address_hash).", max_length=64, unique=True
            ),
        ),
    ]
