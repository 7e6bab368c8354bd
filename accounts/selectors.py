from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import Count, Q, QuerySet, Sum
from django.http import HttpRequest

from accounts.models import ApiToken, AuditEvent, PersonalAccessToken, TokenGroup, User


def api_tokens_for_user(*, user: User) -> QuerySet[ApiToken]:
    """The user's API keys, newest first, with their group (one query).

    The playground's short-lived keys are not the user's to manage: they are left out here, so
    out of every console page and API answer that lists or fetches keys.
    """
    return (
        ApiToken.objects.filter(owner=user, is_playground=False)
        .select_related("group")
        .order_by("-created_at", "-id")
    )


def api_tokens_search(
    *, user: User, status: str = "", group_id: int | None = None, q: str = ""
) -> QuerySet[ApiToken]:
    """The user's keys narrowed by status, group (0 = keys in no group) and a name/prefix text."""
    tokens = api_tokens_for_user(user=user)
    if status:
        tokens = tokens.filter(status=status)
    if group_id == 0:
        tokens = tokens.filter(group__isnull=True)
    elif group_id is not None:
        tokens = tokens.filter(group_id=group_id)
    q = q.strip()
    if q:
        tokens = tokens.filter(Q(name__icontains=q) | Q(prefix__istartswith=q))
    return tokens


def token_groups_for_user(*, user: User) -> QuerySet[TokenGroup]:
    """The user's key groups by name, each with `key_count` (one query)."""
    return (
        TokenGroup.objects.filter(owner=user)
        .annotate(key_count=Count("tokens"))
        .order_by("name", "id")
    )


def audit_events_for_user(*, user: User, limit: int = 50) -> QuerySet[AuditEvent]:
    """The user's latest audit events, newest first (Profile shows 50)."""
    return AuditEvent.objects.filter(user=user).order_by("-created_at", "-id")[:limit]


def session_passed_mfa(*, request: HttpRequest) -> bool:
    """Whether this session's user proved a second factor through allauth.mfa: a TOTP or
    recovery code or a passkey after the first factor, a passwordless passkey sign-in (allauth
    requires user verification for it) or a reauthentication with one of them.

    allauth keeps the record of every authentication of the session server-side, in the
    session, and drops it with the session (sign-out, another user signing in).
    """
    from allauth.account.authentication import get_authentication_records

    user = request.user
    if not user.is_authenticated:
        return False
    records = get_authentication_records(request, user)
    return any(record.get("method") == "mfa" for record in records)


def access_tokens_for_user(*, user: User) -> QuerySet[PersonalAccessToken]:
    """The user's personal access tokens for /api/, newest first."""
    return PersonalAccessToken.objects.filter(user=user).order_by("-created_at", "-id")


# --- this month's usage per key and per group (hourly rollups) ------------------------------------


@dataclass(frozen=True)
class MonthUsage:
    requests: int = 0
    tokens: int = 0
    # micro-USD
    cost_micros: int = 0


def _month_usage_by(
    *, user: User, field: str, now: datetime | None = None
) -> dict[int, MonthUsage]:
    from usage.models import UsageRollup
    from usage.selectors import month_start_for_user

    rows = (
        UsageRollup.objects.filter(user=user, hour__gte=month_start_for_user(user=user, now=now))
        .exclude(**{field: 0})
        .values(field)
        .annotate(
            requests_sum=Sum("requests"),
            prompt_sum=Sum("prompt_tokens"),
            completion_sum=Sum("completion_tokens"),
            cost_sum=Sum("cost_micros"),
        )
        .order_by()
    )
    return {
        row[field]: MonthUsage(
            requests=row["requests_sum"] or 0,
            tokens=(row["prompt_sum"] or 0) + (row["completion_sum"] or 0),
            cost_micros=row["cost_sum"] or 0,
        )
        for row in rows
    }


def api_token_month_usage_for_user(
    *, user: User, now: datetime | None = None
) -> dict[int, MonthUsage]:
    """Requests, tokens and cost of each of the user's keys this month (the user's time zone),
    by key id, from the hourly rollups in one grouped query. A key without calls is absent."""
    return _month_usage_by(user=user, field="key_id", now=now)


def token_group_month_usage_for_user(
    *, user: User, now: datetime | None = None
) -> dict[int, MonthUsage]:
    """The same per group id: what the group's keys spent in it this month (one query)."""
    return _month_usage_by(user=user, field="group_id", now=now)


# The columns of a key export (console and API): metadata only, never the key nor its digest.
API_TOKEN_EXPORT_COLUMNS = [
    "id", "name", "prefix", "status", "group", "created_at", "expires_at", "last_used_at",
    "revoked_at", "allowed_models", "allowed_ips", "rpm", "tpm", "rpd", "quota_tokens",
    "quota_used_tokens", "quota_reset", "credit_limit_usd", "credit_used_usd",
    "max_cost_per_request_usd", "month_requests", "month_tokens", "month_cost_usd",
]  # fmt: skip


def api_token_export_rows(*, user: User, ids: list[int] | None = None) -> Iterator[list[str | int]]:
    """The header and one row per key of the user (or of those ids among them) for a CSV export.

    Times are ISO 8601 in UTC, money in USD with 6 decimals, lists joined by spaces, empty cells
    for "no limit". Two queries: the keys and this month's usage.
    """
    from tokenbyte.money import micros_to_usd

    def usd(micros: int | None) -> str:
        return "" if micros is None else f"{micros_to_usd(micros):f}"

    def iso(value: datetime | None) -> str:
        return "" if value is None else value.astimezone(UTC).isoformat()

    def count(value: int | None) -> str | int:
        return "" if value is None else value

    tokens = api_tokens_for_user(user=user)
    if ids is not None:
        tokens = tokens.filter(pk__in=ids)
    usage = api_token_month_usage_for_user(user=user)
    yield list(API_TOKEN_EXPORT_COLUMNS)
    for token in tokens.iterator(chunk_size=1000):
        month = usage.get(token.pk, MonthUsage())
        yield [
            token.pk, token.name, token.prefix, token.status,
            token.group.name if token.group else "",
            iso(token.created_at), iso(token.expires_at), iso(token.last_used_at),
            iso(token.revoked_at),
            " ".join(token.allowed_models or ()), " ".join(token.allowed_ips or ()),
            count(token.rpm), count(token.tpm), count(token.rpd), count(token.quota_tokens),
            token.quota_used_tokens, token.quota_reset, usd(token.credit_limit_micros),
            usd(token.credit_used_micros), usd(token.max_cost_per_request_micros),
            month.requests, month.tokens, usd(month.cost_micros),
        ]  # fmt: skip
