"""Settlement functions version 3 (billing/sql/settlement_v3.sql): billing_hold and
billing_settle also move the organization member's monthly allowance."""

from django.db import migrations

from billing.sql import render

DROP_V3 = """
DROP FUNCTION IF EXISTS billing_hold(
    text, bigint, bigint, bigint, bigint, bigint, boolean, boolean, boolean, boolean, text, text,
    timestamptz, timestamptz, bigint
);
"""

HOLD_START = "CREATE OR REPLACE FUNCTION billing_hold("
SETTLE_START = "CREATE OR REPLACE FUNCTION billing_settle("


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(render("settlement_v3.sql", apps).replace("%", "%%"))


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_V3)
        # Version 1's billing_hold (the rest of that file version 2 replaced) and version 2.
        v1 = render("settlement_v1.sql", apps)
        hold = v1[v1.index(HOLD_START) : v1.index(SETTLE_START)]
        schema_editor.execute(hold.replace("%", "%%"))
        schema_editor.execute(render("settlement_v2.sql", apps).replace("%", "%%"))


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_topup_refunds_stripe_events"),
        ("accounts", "0005_organization_settings_invitation_links"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
