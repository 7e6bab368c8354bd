from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from accounts.models import User
from usage.models import RequestLog


def user_zone(user: User) -> ZoneInfo:
    """The user's time zone (UTC when the stored name is unknown)."""
    try:
        return ZoneInfo(user.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def month_start_for_user(*, user: User, now: datetime | None = None) -> datetime:
    """Midnight of the first day of the user's current month, in the user's zone."""
    local = (now or timezone.now()).astimezone(user_zone(user))
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    # micro-USD
    cost_micros: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_totals_for_user(*, user: User, since: datetime) -> UsageTotals:
    """Calls, tokens and spend of the user's logs from `since` on (one query)."""
    row = RequestLog.objects.filter(user=user, created_at__gte=since).aggregate(
        requests=Count("id"),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        cost_micros=Sum("cost_micros"),
    )
    return UsageTotals(
        requests=row["requests"] or 0,
        prompt_tokens=row["prompt_tokens"] or 0,
        completion_tokens=row["completion_tokens"] or 0,
        cost_micros=row["cost_micros"] or 0,
    )


def request_logs_for_user(*, user: User) -> QuerySet[RequestLog]:
    """The user's request logs, newest first (served by the log_user_created index).

    Key and group names are read from the copies on the log row, so no join is needed.
    """
    return RequestLog.objects.filter(user=user).order_by("-created_at", "-id")
