"""Billing owns the hold and settlement functions (they were relay_* in relay/migrations):
billing_hold, billing_settle and billing_log from billing/sql/settlement_v1.sql. Hold fields
say "key" for the API key, and a hold names its call for the sweep's log row."""

from django.db import migrations, models

from billing.sql import render

DROP_OLD = """
DROP FUNCTION IF EXISTS relay_hold(text, bigint, bigint, bigint, boolean, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS relay_hold(text, bigint, bigint, bigint, bigint, bigint, boolean, boolean,
                                   boolean, boolean, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS relay_settle(text, bigint, bigint, bigint, bigint, bigint, bigint,
                                     boolean, text, timestamptz);
DROP FUNCTION IF EXISTS relay_settle(text, bigint, bigint, boolean, bigint, bigint, bigint,
                                     boolean, text, timestamptz);
DROP FUNCTION IF EXISTS relay_settle(text, bigint, bigint, boolean, bigint, bigint, bigint,
                                     boolean, text, timestamptz, jsonb);
DROP FUNCTION IF EXISTS relay_log(jsonb, bigint);
"""

DROP_NEW = """
DROP FUNCTION IF EXISTS billing_settle(text, bigint, bigint, boolean, bigint, bigint, bigint,
                                       boolean, text, timestamptz, jsonb);
DROP FUNCTION IF EXISTS billing_hold(text, bigint, bigint, bigint, bigint, bigint, boolean,
                                     boolean, boolean, boolean, text, text, timestamptz,
                                     timestamptz);
DROP FUNCTION IF EXISTS billing_log(jsonb, bigint);
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_OLD)
        schema_editor.execute(render("settlement_v1.sql", apps).replace("%", "%%"))


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_NEW)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0004_hold_parts_low_balance_alerted"),
        ("accounts", "0002_quota_alerted_percent"),
        ("usage", "0001_initial"),
    ]

    operations = [
        migrations.RenameField("hold", "api_token", "key"),
        migrations.RenameField("hold", "token_credit_micros", "key_credit_micros"),
        migrations.RenameField("hold", "token_quota_tokens", "key_quota_tokens"),
        migrations.AddField(
            model_name="hold",
            name="model_id",
            field=models.CharField(blank=True, max_length=100, verbose_name="model"),
        ),
        migrations.AddField(
            model_name="hold",
            name="call_type",
            field=models.CharField(blank=True, max_length=24),
        ),
        migrations.RunPython(forwards, backwards),
    ]
