"""Count the logs written before the rollups existed (settlements count new calls from the next
migration on)."""

from datetime import UTC

from django.db import migrations
from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce, TruncHour


def backfill(apps, schema_editor):
    RequestLog = apps.get_model("usage", "RequestLog")
    UsageRollup = apps.get_model("usage", "UsageRollup")
    rows = (
        RequestLog.objects.annotate(
            bucket=TruncHour("created_at", tzinfo=UTC),
            org=Coalesce("organization_id", 0),
            key=Coalesce("api_token_id", 0),
            grp=Coalesce("group_id", 0),
        )
        .values("bucket", "user_id", "org", "key", "grp", "model_id", "call_type")
        .annotate(
            n=Count("id"),
            n_errors=Count("id", filter=Q(status_code__gte=400)),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cached=Sum("cached_tokens"),
            cost=Sum("cost_micros"),
            duration=Sum("duration_ms"),
        )
        .order_by()
    )
    batch = []
    for row in rows.iterator(chunk_size=5000):
        batch.append(
            UsageRollup(
                hour=row["bucket"], user_id=row["user_id"], organization_id=row["org"],
                key_id=row["key"], group_id=row["grp"], model_id=row["model_id"],
                call_type=row["call_type"], requests=row["n"], errors=row["n_errors"],
                prompt_tokens=row["prompt"], completion_tokens=row["completion"],
                cached_tokens=row["cached"], cost_micros=row["cost"], duration_ms=row["duration"],
            )
        )  # fmt: skip
        if len(batch) >= 5000:
            UsageRollup.objects.bulk_create(batch)
            batch = []
    UsageRollup.objects.bulk_create(batch)


class Migration(migrations.Migration):
    dependencies = [("usage", "0002_usage_rollup")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
