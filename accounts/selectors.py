from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db.models import BigIntegerField, CharField, Count, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import (
    ApiToken,
    AuditEvent,
    Invitation,
    Membership,
    PersonalAccessToken,
    TokenGroup,
    User,
)

if TYPE_CHECKING:
    from accounts.scope import Scope


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


def api_tokens_for_scope(*, scope: "Scope") -> QuerySet[ApiToken]:
    """The keys of a console page's or API call's scope, newest first, with their group and
    owner (one query): personal = the user's keys spending from their own wallet (no
    organization); an organization's = every member's keys there for owners and admins, the
    user's own there for members. Playground keys are never listed (see api_tokens_for_user)."""
    return (
        ApiToken.objects.filter(scope.rows(user_field="owner"), is_playground=False)
        .select_related("group", "owner")
        .order_by("-created_at", "-id")
    )


def api_tokens_search(
    *, scope: "Scope", status: str = "", group_id: int | None = None, q: str = ""
) -> QuerySet[ApiToken]:
    """The scope's keys narrowed by status, group (0 = keys in no group) and a name/prefix text."""
    tokens = api_tokens_for_scope(scope=scope)
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


def scope_month_start(*, scope: "Scope", now: datetime | None = None) -> datetime:
    """Midnight of the first day of the current month where the scope counts its months: the
    user's time zone (personal) or the organization's (where member allowances restart too)."""
    from usage.selectors import month_start_for_user

    if scope.personal:
        return month_start_for_user(user=scope.user, now=now)
    try:
        zone = ZoneInfo(scope.organization.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = (now or timezone.now()).astimezone(zone)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _month_usage_by(
    *, scope: "Scope", field: str, now: datetime | None = None
) -> dict[int, MonthUsage]:
    from usage.models import UsageRollup

    # Rollups carry the organization as a plain id, 0 for personal calls.
    if scope.personal:
        rows = UsageRollup.objects.filter(user=scope.user, organization_id=0)
    else:
        rows = UsageRollup.objects.filter(organization_id=scope.organization_id)
        if not scope.sees_all:
            rows = rows.filter(user=scope.user)
    rows = (
        rows.filter(hour__gte=scope_month_start(scope=scope, now=now))
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


def _personal(user: User) -> "Scope":
    from accounts.scope import Scope

    return Scope(user=user)


def api_token_month_usage_for_scope(
    *, scope: "Scope", now: datetime | None = None
) -> dict[int, MonthUsage]:
    """Requests, tokens and cost of each key of the scope this month (scope_month_start), by
    key id, from the hourly rollups in one grouped query. A key without calls is absent."""
    return _month_usage_by(scope=scope, field="key_id", now=now)


def api_token_month_usage_for_user(
    *, user: User, now: datetime | None = None
) -> dict[int, MonthUsage]:
    """The same for the user's personal keys (the user's time zone)."""
    return _month_usage_by(scope=_personal(user), field="key_id", now=now)


def token_group_month_usage_for_user(
    *, user: User, now: datetime | None = None
) -> dict[int, MonthUsage]:
    """The same per group id: what the group's keys spent in it this month (one query). Groups
    are personal: an organization's keys have none."""
    return _month_usage_by(scope=_personal(user), field="group_id", now=now)


# The columns of a key export (console and API): metadata only, never the key nor its digest.
API_TOKEN_EXPORT_COLUMNS = [
    "id", "name", "prefix", "status", "group", "created_at", "expires_at", "last_used_at",
    "revoked_at", "allowed_models", "allowed_ips", "rpm", "tpm", "rpd", "quota_tokens",
    "quota_used_tokens", "quota_reset", "credit_limit_usd", "credit_used_usd",
    "max_cost_per_request_usd", "month_requests", "month_tokens", "month_cost_usd",
]  # fmt: skip
# Added at the end in an organization's scope (the columns above are a documented contract).
API_TOKEN_EXPORT_ORG_COLUMNS = ["member_email"]


def api_token_export_rows(
    *, scope: "Scope", ids: list[int] | None = None
) -> Iterator[list[str | int]]:
    """The header and one row per key of the scope (or of those ids among them) for a CSV
    export; in an organization's scope each row ends with the key's member (its owner).

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

    tokens = api_tokens_for_scope(scope=scope)
    if ids is not None:
        tokens = tokens.filter(pk__in=ids)
    usage = api_token_month_usage_for_scope(scope=scope)
    extra = [] if scope.personal else API_TOKEN_EXPORT_ORG_COLUMNS
    yield [*API_TOKEN_EXPORT_COLUMNS, *extra]
    for token in tokens.iterator(chunk_size=1000):
        month = usage.get(token.pk, MonthUsage())
        member = [] if scope.personal else [token.owner.email]
        yield [
            token.pk, token.name, token.prefix, token.status,
            token.group.name if token.group else "",
            iso(token.created_at), iso(token.expires_at), iso(token.last_used_at),
            iso(token.revoked_at),
            " ".join(token.allowed_models or ()), " ".join(token.allowed_ips or ()),
            count(token.rpm), count(token.tpm), count(token.rpd), count(token.quota_tokens),
            token.quota_used_tokens, token.quota_reset, usd(token.credit_limit_micros),
            usd(token.credit_used_micros), usd(token.max_cost_per_request_micros),
            month.requests, month.tokens, usd(month.cost_micros), *member,
        ]  # fmt: skip


# --- organizations (the /api/ organization endpoints read these) --------------------------------


def memberships_for_user(*, user: User) -> QuerySet[Membership]:
    """The user's memberships by organization name, each with its organization, that
    organization's wallet and `member_count` (one query)."""
    return (
        Membership.objects.filter(user=user)
        .select_related("organization", "organization__wallet")
        .annotate(member_count=Count("organization__memberships"))
        .order_by("organization__name", "organization_id")
    )


def memberships_for_organization(*, organization_id: int) -> QuerySet[Membership]:
    """An organization's members in the order they joined, with their users."""
    return (
        Membership.objects.filter(organization_id=organization_id)
        .select_related("user", "organization")
        .order_by("created_at", "id")
    )


def invitations_for_organization(*, organization_id: int) -> QuerySet[Invitation]:
    """An organization's invitations, newest first, with who sent and who accepted them."""
    return (
        Invitation.objects.filter(organization_id=organization_id)
        .select_related("organization", "invited_by", "accepted_by")
        .order_by("-created_at", "-id")
    )


def invitations_pending_for_email(*, email: str) -> QuerySet[Invitation]:
    """Invitations addressed to this email that can still be accepted, newest first, with
    their organization and who sent them (the console's organization page lists them)."""
    return (
        Invitation.objects.filter(
            email=email.lower(), accepted_at__isnull=True, declined_at__isnull=True,
            revoked_at__isnull=True, expires_at__gt=timezone.now(),
        )
        .select_related("organization", "invited_by")
        .order_by("-created_at", "-id")
    )  # fmt: skip


@dataclass(frozen=True)
class ScopeChoice:
    """One entry of the console header's scope switcher: personal (no organization) or one of
    the user's organizations, with the wallet balance the header shows in that scope."""

    organization_id: int | None
    name: str
    role: str
    balance_micros: int

    @property
    def role_label(self) -> str:
        return Membership.Role(self.role).label if self.role else ""


def scope_choices_for_user(*, user: User) -> list[ScopeChoice]:
    """Personal first, then the user's organizations by name, in ONE query (a UNION of the
    user's own wallet and their memberships with their organizations' wallets): every console
    page renders the switcher and the balance, so they cost what the balance alone used to."""
    from billing.models import Wallet

    columns = ("org_id", "org_name", "member_role", "balance")
    own = Wallet.objects.filter(user=user).annotate(
        org_id=Value(None, output_field=BigIntegerField()),
        org_name=Value("", output_field=CharField()),
        member_role=Value("", output_field=CharField()),
        balance=F("balance_micros"),
    )
    theirs = Membership.objects.filter(user=user).annotate(
        org_id=F("organization_id"),
        org_name=F("organization__name"),
        member_role=F("role"),
        balance=Coalesce(F("organization__wallet__balance_micros"), 0),
    )
    rows = own.values_list(*columns).union(theirs.values_list(*columns), all=True)
    personal_balance = 0
    organizations = []
    for org_id, name, role, balance in rows:
        if org_id is None:
            personal_balance = balance
        else:
            organizations.append(ScopeChoice(org_id, name, role, balance))
    organizations.sort(key=lambda choice: (choice.name.lower(), choice.organization_id))
    return [ScopeChoice(None, "Personal", "", personal_balance), *organizations]
