from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone

from accounts.models import User
from usage.models import RequestLog, UsageRollup


def request_log_create(**fields) -> RequestLog:
    """Write one call's log row. The relay calls it inside the settlement transaction."""
    return RequestLog.objects.create(**fields)


def _hour(moment: datetime | str) -> datetime:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def usage_rollup_add(*, log: Mapping | RequestLog, cost_micros: int, sign: int = 1) -> None:
    """Count one call (sign=-1: take one back) in its hour's rollup row.

    Runs in the settlement's transaction, after the wallet's row is locked, like billing_rollup
    in billing/sql/settlement_v2.sql (the SQL backend's twin). `log` is the row or its columns
    by attname.
    """
    if isinstance(log, RequestLog):
        log = {f.attname: getattr(log, f.attname) for f in RequestLog._meta.concrete_fields}
    bucket = {
        "hour": _hour(log["created_at"]),
        "user_id": log["user_id"],
        "organization_id": log.get("organization_id") or 0,
        "key_id": log.get("api_token_id") or 0,
        "group_id": log.get("group_id") or 0,
        "model_id": log["model_id"],
        "call_type": log["call_type"],
    }
    counts = {
        "requests": sign,
        "errors": sign if log["status_code"] >= 400 else 0,
        "prompt_tokens": sign * (log.get("prompt_tokens") or 0),
        "completion_tokens": sign * (log.get("completion_tokens") or 0),
        "cached_tokens": sign * (log.get("cached_tokens") or 0),
        "cost_micros": sign * cost_micros,
        "duration_ms": sign * (log.get("duration_ms") or 0),
    }
    _rollup_increment(bucket, counts)


def _rollup_increment(bucket: dict, counts: dict) -> None:
    increments = {name: F(name) + value for name, value in counts.items()}
    if UsageRollup.objects.filter(**bucket).update(**increments):
        return
    try:
        with transaction.atomic():
            UsageRollup.objects.create(**bucket, **counts)
    except IntegrityError:
        # Another settlement created the row first; it exists now.
        UsageRollup.objects.filter(**bucket).update(**increments)


ROLLUP_BUCKET = (
    "hour",
    "user_id",
    "organization_id",
    "key_id",
    "group_id",
    "model_id",
    "call_type",
)
ROLLUP_COUNTS = (
    "requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_micros",
    "duration_ms",
)  # fmt: skip


def _log_buckets(logs):
    """The logs summed per rollup bucket, as rows named like UsageRollup's fields."""
    return (
        logs.annotate(
            hour=TruncHour("created_at", tzinfo=UTC),
            org=Coalesce("organization_id", 0),
            key=Coalesce("api_token_id", 0),
            grp=Coalesce("group_id", 0),
        )
        .values("hour", "user_id", "org", "key", "grp", "model_id", "call_type")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status_code__gte=400)),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cached=Sum("cached_tokens"),
            cost=Sum("cost_micros"),
            duration=Sum("duration_ms"),
        )
        .order_by()
    )


def _bucket_row(row: dict) -> tuple[tuple, dict]:
    bucket = (row["hour"], row["user_id"], row["org"], row["key"], row["grp"], row["model_id"],
              row["call_type"])  # fmt: skip
    counts = {
        "requests": row["requests"], "errors": row["errors"], "prompt_tokens": row["prompt"],
        "completion_tokens": row["completion"], "cached_tokens": row["cached"],
        "cost_micros": row["cost"], "duration_ms": row["duration"],
    }  # fmt: skip
    return bucket, counts


def usage_rollups_reconcile(*, now: datetime | None = None, hours: int = 3) -> int:
    """Check the last `hours` complete hours of rollups against their logs and correct any
    drift; returns the number of buckets corrected (0 when the books agree, as they should:
    each settlement writes both in one transaction).

    Both sides are read in one snapshot and the differences are added, not written, so
    settlements landing meanwhile (a late one, the outbox draining) count once either way.
    """
    end = _hour(now or timezone.now())
    start = end - timedelta(hours=hours)
    own_transaction = not connection.in_atomic_block
    with transaction.atomic():
        if own_transaction and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        logs = RequestLog.objects.filter(created_at__gte=start, created_at__lt=end)
        counted = dict(_bucket_row(row) for row in _log_buckets(logs))
        stored = {
            tuple(row[name] for name in ROLLUP_BUCKET): {name: row[name] for name in ROLLUP_COUNTS}
            for row in UsageRollup.objects.filter(hour__gte=start, hour__lt=end).values()
        }
    zero = dict.fromkeys(ROLLUP_COUNTS, 0)
    corrected = 0
    for bucket in counted.keys() | stored.keys():
        want, have = counted.get(bucket, zero), stored.get(bucket, zero)
        delta = {name: want[name] - have[name] for name in ROLLUP_COUNTS}
        if any(delta.values()):
            _rollup_increment(dict(zip(ROLLUP_BUCKET, bucket, strict=True)), delta)
            corrected += 1
    return corrected


def usage_rollups_rebuild(*, since: datetime | None = None, batch: int = 5000) -> int:
    """Recount the rollups from the request logs (from `since`'s hour on, or all of them).

    For a database whose logs predate the rollups, or after loading logs in bulk; the hours
    recounted must still have all their logs (retention removes logs, never rollups). Returns
    the number of rollup rows written.
    """
    logs = RequestLog.objects.all()
    rollups = UsageRollup.objects.all()
    if since is not None:
        since = _hour(since)
        logs = logs.filter(created_at__gte=since)
        rollups = rollups.filter(hour__gte=since)
    rows = _log_buckets(logs)
    written = 0
    with transaction.atomic():
        rollups.delete()
        pending: list[UsageRollup] = []
        for row in rows.iterator(chunk_size=batch):
            bucket, counts = _bucket_row(row)
            pending.append(UsageRollup(**dict(zip(ROLLUP_BUCKET, bucket, strict=True)), **counts))
            if len(pending) >= batch:
                UsageRollup.objects.bulk_create(pending)
                written += len(pending)
                pending = []
        UsageRollup.objects.bulk_create(pending)
        written += len(pending)
    return written


def log_retention_days_for(*, retention_days: int, extended_archive: bool) -> int:
    """How many days a user's request logs are kept: their window, or the archive's when the
    user turned extended archiving on (Profile), whichever is longer."""
    if extended_archive:
        return max(retention_days, settings.LOG_ARCHIVE_DAYS)
    return retention_days


def request_logs_expire(
    *, now: datetime | None = None, batch: int = 5000, max_batches: int = 200
) -> int:
    """Delete request logs older than their owner's window; returns how many went.

    Usage statistics are unaffected: they are read from the rollups, which are never deleted.
    Deletes run in batches (short transactions, each found through the created_at index), at
    most `max_batches` a run; the next run goes on where this one stopped.
    """
    now = now or timezone.now()
    default_days = settings.LOG_RETENTION_DAYS
    # Users whose window is not the default are few; everybody else shares one cutoff.
    windows: dict[int, list[int]] = {}
    users = User.objects.filter(
        Q(extended_log_archive=True) | ~Q(log_retention_days=default_days)
    ).values_list("pk", "log_retention_days", "extended_log_archive")
    for pk, days, archive in users:
        days = log_retention_days_for(retention_days=days, extended_archive=archive)
        windows.setdefault(days, []).append(pk)
    exceptions = [pk for pks in windows.values() for pk in pks]
    scopes = [(default_days, ~Q(user_id__in=exceptions) if exceptions else Q())]
    scopes += [(days, Q(user_id__in=pks)) for days, pks in windows.items()]
    deleted = 0
    batches = 0
    for days, scope in scopes:
        cutoff = now - timedelta(days=days)
        while batches < max_batches:
            ids = list(
                RequestLog.objects.filter(scope, created_at__lt=cutoff).values_list(
                    "pk", flat=True
                )[:batch]
            )
            if not ids:
                break
            deleted += RequestLog.objects.filter(pk__in=ids).delete()[0]
            batches += 1
    return deleted
