"""Settlement functions version 2 (billing/sql/settlement_v2.sql): each settled call is also
counted in its hour's usage rollup, in the same transaction."""

from django.db import migrations

from billing.sql import render

# Version 1's billing_log returned boolean; version 2's returns jsonb.
DROP_V2 = """
DROP FUNCTION IF EXISTS billing_log(jsonb, bigint);
DROP FUNCTION IF EXISTS billing_rollup(jsonb, bigint, integer);
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(render("settlement_v2.sql", apps).replace("%", "%%"))


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_V2)
        # Version 1 again (it drops nothing it does not recreate).
        schema_editor.execute(render("settlement_v1.sql", apps).replace("%", "%%"))


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0005_settlement_in_billing"),
        ("usage", "0003_backfill_rollups"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
