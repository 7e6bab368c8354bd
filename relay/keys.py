"""API key authentication with a short in-process cache.

A key is looked up by its SHA-256 digest at most once per RELAY_KEY_CACHE_SECONDS per process, so
disabling or revoking a key takes effect within that time (1 s by default) on every process
without a shared invalidation channel.
"""

import ipaddress
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from accounts.models import ApiToken, Membership
from accounts.scope import member_keys_allowed
from accounts.services import api_key_digest
from billing.models import Wallet
from relay.http import RelayError, Request

_MAX_CACHED_KEYS = 50_000


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: int
    name: str
    owner_id: int
    organization_id: int | None
    group_id: int | None
    group_name: str
    wallet_id: int | None
    status: str
    expires_at: datetime | None
    owner_blocked: bool
    owner_active: bool
    allowed_models: frozenset[str]
    allowed_networks: tuple
    max_cost_per_request_micros: int | None
    credit_limit_micros: int | None
    # Limits: None means none. The group's apply to every key in it, on top of the key's own.
    quota_tokens: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    group_quota_tokens: int | None = None
    group_credit_limit_micros: int | None = None
    group_rpm: int | None = None
    group_tpm: int | None = None
    group_rpd: int | None = None
    # Percentages of the quotas at which the owner is alerted.
    alert_thresholds: tuple[int, ...] = ()
    group_alert_thresholds: tuple[int, ...] = ()
    low_balance_threshold_micros: int | None = None
    # An organization key: the owner's membership (None once they were removed), the monthly
    # allowance it counts against (None: no cap), and whether the member's keys may work now.
    membership_id: int | None = None
    allowance_micros: int | None = None
    member_keys_allowed: bool = True

    @property
    def credit_limited(self) -> bool:
        return self.credit_limit_micros is not None

    @property
    def quota_limited(self) -> bool:
        return self.quota_tokens is not None

    @property
    def group_quota_limited(self) -> bool:
        return self.group_id is not None and self.group_quota_tokens is not None

    @property
    def group_credit_limited(self) -> bool:
        return self.group_id is not None and self.group_credit_limit_micros is not None

    @property
    def settles_before_reply(self) -> bool:
        """Whether a call must be settled before its response ends.

        A call with no max_tokens may hold all that is left of a quota or credit limit; a
        client that sends its next call as soon as it has the answer must find that hold
        already swapped for the actual use (and the TPM estimate for the actual tokens), or
        it would be refused for what is merely held. For other keys the settlement follows the
        response, off the client's clock.
        """
        return (
            self.quota_limited
            or self.credit_limited
            or self.group_quota_limited
            or self.group_credit_limited
            or self.allowance_micros is not None
            or self.tpm is not None
            or (self.group_id is not None and self.group_tpm is not None)
        )

    @property
    def rate_limited(self) -> bool:
        return any(
            limit is not None
            for limit in (self.rpm, self.tpm, self.rpd, self.group_rpm, self.group_tpm,
                          self.group_rpd)
        )  # fmt: skip


def _thresholds(value) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(sorted({v for v in value if isinstance(v, int) and 0 < v <= 100}))


# digest -> (monotonic time loaded, key or None for an unknown key)
_cache: dict[str, tuple[float, KeyInfo | None]] = {}
_refreshing: set[str] = set()


def _member_fields(
    membership_id: int | None,
    allowance: int | None,
    role: str | None,
    member_keys_enabled: bool | None,
    can_create_keys: bool | None,
) -> dict:
    """KeyInfo's fields of an organization key's membership (its id None: not a member)."""
    if membership_id is None:
        return {"member_keys_allowed": False}
    return {
        "membership_id": membership_id,
        "allowance_micros": allowance,
        "member_keys_allowed": member_keys_allowed(
            role=role, member_keys_enabled=member_keys_enabled, can_create_keys=can_create_keys
        ),
    }


def _load(digest: str) -> KeyInfo | None:
    user_wallet = Wallet.objects.filter(user_id=OuterRef("owner_id"))[:1]
    org_wallet = Wallet.objects.filter(organization_id=OuterRef("organization_id"))[:1]
    token = (
        ApiToken.objects.select_related("owner", "group", "organization")
        .annotate(
            user_wallet_id=Subquery(user_wallet.values("pk")),
            user_wallet_threshold=Subquery(user_wallet.values("low_balance_threshold_micros")),
            org_wallet_id=Subquery(org_wallet.values("pk")),
            org_wallet_threshold=Subquery(org_wallet.values("low_balance_threshold_micros")),
        )
        .filter(digest=digest)
        .first()
    )
    if token is None:
        return None
    group = token.group
    in_org = token.organization_id is not None
    member = {}
    if in_org:
        membership_id, allowance, role, can_create_keys = Membership.objects.filter(
            organization_id=token.organization_id, user_id=token.owner_id
        ).values_list("pk", "monthly_allowance_micros", "role", "can_create_keys").first() or (
            None, None, None, None
        )  # fmt: skip
        member = _member_fields(
            membership_id, allowance, role, token.organization.member_keys_enabled,
            can_create_keys,
        )  # fmt: skip
    return KeyInfo(
        key_id=token.pk,
        name=token.name,
        owner_id=token.owner_id,
        organization_id=token.organization_id,
        group_id=token.group_id,
        group_name=group.name if group else "",
        wallet_id=token.org_wallet_id if in_org else token.user_wallet_id,
        status=token.status,
        expires_at=token.expires_at,
        owner_blocked=token.owner.is_blocked,
        owner_active=token.owner.is_active,
        allowed_models=frozenset(token.allowed_models or ()),
        allowed_networks=tuple(ipaddress.ip_network(n) for n in token.allowed_ips or ()),
        max_cost_per_request_micros=token.max_cost_per_request_micros,
        credit_limit_micros=token.credit_limit_micros,
        quota_tokens=token.quota_tokens,
        rpm=token.rpm,
        tpm=token.tpm,
        rpd=token.rpd,
        group_quota_tokens=group.quota_tokens if group else None,
        group_credit_limit_micros=group.credit_limit_micros if group else None,
        group_rpm=group.rpm if group else None,
        group_tpm=group.tpm if group else None,
        group_rpd=group.rpd if group else None,
        alert_thresholds=_thresholds(token.alert_thresholds),
        group_alert_thresholds=_thresholds(group.alert_thresholds) if group else (),
        low_balance_threshold_micros=(
            token.org_wallet_threshold if in_org else token.user_wallet_threshold
        ),
        **member,
    )


def store(digest: str, info: KeyInfo | None) -> None:
    if len(_cache) >= _MAX_CACHED_KEYS:
        _cache.clear()
    _cache[digest] = (time.monotonic(), info)
    _refreshing.discard(digest)


def lookup(digest: str) -> KeyInfo | None:
    """Load a key with the ORM and cache it (the SQLite path). Runs in a database thread."""
    info = _load(digest)
    store(digest, info)
    return info


# The same read in one SQL statement, for the PostgreSQL fast path (relay.pg). The wallet joins
# are two equality joins on unique columns (an OR in one join would defeat their indexes).
KEY_SQL = """
SELECT t.id, t.name, t.owner_id, t.organization_id, t.group_id, coalesce(g.name, ''),
       CASE WHEN t.organization_id IS NULL THEN uw.id ELSE ow.id END,
       t.status, t.expires_at, u.is_blocked, u.is_active, t.allowed_models, t.allowed_ips,
       t.max_cost_per_request_micros, t.credit_limit_micros, t.quota_tokens,
       t.rpm, t.tpm, t.rpd, g.quota_tokens, g.credit_limit_micros, g.rpm, g.tpm, g.rpd,
       t.alert_thresholds, g.alert_thresholds,
       CASE WHEN t.organization_id IS NULL THEN uw.low_balance_threshold_micros
            ELSE ow.low_balance_threshold_micros END,
       m.id, m.monthly_allowance_micros, m.role, o.member_keys_enabled, m.can_create_keys
  FROM accounts_apitoken t
  JOIN accounts_user u ON u.id = t.owner_id
  LEFT JOIN accounts_tokengroup g ON g.id = t.group_id
  LEFT JOIN billing_wallet uw ON uw.user_id = t.owner_id AND t.organization_id IS NULL
  LEFT JOIN billing_wallet ow ON ow.organization_id = t.organization_id
  LEFT JOIN accounts_organization o ON o.id = t.organization_id
  LEFT JOIN accounts_membership m ON m.organization_id = t.organization_id
                                 AND m.user_id = t.owner_id
 WHERE t.digest = %s
"""


def from_row(row: tuple | None) -> KeyInfo | None:
    if row is None:
        return None
    (key_id, name, owner_id, organization_id, group_id, group_name, wallet_id, status,
     expires_at, blocked, active, models, ips, cap, credit_limit, quota, rpm, tpm, rpd,
     group_quota, group_credit_limit, group_rpm, group_tpm, group_rpd, thresholds,
     group_thresholds, low_balance_threshold, membership_id, allowance, role, member_keys_enabled,
     can_create_keys) = row  # fmt: skip
    member = {}
    if organization_id is not None:
        member = _member_fields(
            membership_id, allowance, role, member_keys_enabled, can_create_keys
        )
    return KeyInfo(
        key_id=key_id,
        name=name,
        owner_id=owner_id,
        organization_id=organization_id,
        group_id=group_id,
        group_name=group_name,
        wallet_id=wallet_id,
        status=status,
        expires_at=expires_at,
        owner_blocked=blocked,
        owner_active=active,
        allowed_models=frozenset(models or ()),
        allowed_networks=tuple(ipaddress.ip_network(n) for n in ips or ()),
        max_cost_per_request_micros=cap,
        credit_limit_micros=credit_limit,
        quota_tokens=quota,
        rpm=rpm,
        tpm=tpm,
        rpd=rpd,
        group_quota_tokens=group_quota,
        group_credit_limit_micros=group_credit_limit,
        group_rpm=group_rpm,
        group_tpm=group_tpm,
        group_rpd=group_rpd,
        alert_thresholds=_thresholds(thresholds),
        group_alert_thresholds=_thresholds(group_thresholds),
        low_balance_threshold_micros=low_balance_threshold,
        **member,
    )


def cached(digest: str) -> tuple[bool, KeyInfo | None, bool]:
    """(hit, info, stale) without touching the database.

    An entry is used for RELAY_KEY_CACHE_SECONDS at most, so revocation reaches every process
    within that time. Past half of it the entry is `stale`: still served, while the caller
    reloads it in the background, so a steady client never waits for the database.
    """
    entry = _cache.get(digest)
    if entry is None:
        return False, None, False
    age = time.monotonic() - entry[0]
    ttl = settings.RELAY_KEY_CACHE_SECONDS
    if age >= ttl:
        return False, None, False
    stale = age >= ttl / 2 and digest not in _refreshing
    if stale:
        _refreshing.add(digest)
    return True, entry[1], stale


def presented_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def client_ip(request: Request) -> str | None:
    header = settings.RELAY_TRUSTED_PROXY_HEADER
    if header:
        # Behind a proxy the operator trusts: its header names the caller (first hop).
        value = request.headers.get(header.lower(), "")
        if value:
            return value.split(",")[0].strip()
    return request.client_ip


def check(info: KeyInfo | None, request: Request) -> KeyInfo:
    """The checks of the error table that need only the key, in its order."""
    if info is None:
        raise RelayError(401, "Incorrect API key provided.", code="invalid_api_key")
    if info.status == ApiToken.Status.REVOKED:
        raise RelayError(401, "This API key has been revoked.", code="invalid_api_key")
    if info.status != ApiToken.Status.ENABLED:
        raise RelayError(401, "This API key is disabled.", code="invalid_api_key")
    if info.expires_at is not None and info.expires_at <= timezone.now():
        raise RelayError(401, "This API key has expired.", code="invalid_api_key")
    if not info.owner_active:
        raise RelayError(401, "The account of this API key is deactivated.", code="invalid_api_key")
    if info.owner_blocked:
        raise RelayError(403, "The account of this API key is blocked.", code="account_blocked")
    if info.organization_id is not None and not info.member_keys_allowed:
        if info.membership_id is None:
            raise RelayError(
                403,
                "The owner of this API key is no longer a member of its organization.",
                code="organization_membership_ended",
            )
        raise RelayError(
            403,
            "This organization does not let this member's keys make calls now; "
            "an owner or admin can allow them.",
            code="organization_keys_not_allowed",
        )
    if info.allowed_networks:
        ip = client_ip(request)
        try:
            address = ipaddress.ip_address(ip) if ip else None
        except ValueError:
            address = None
        if address is None or not any(address in net for net in info.allowed_networks):
            raise RelayError(
                403,
                f"Requests from {ip or 'this address'} are not allowed for this API key.",
                code="ip_not_allowed",
            )
    return info


def missing_key_error() -> RelayError:
    return RelayError(
        401,
        "You didn't provide an API key. Send it as 'Authorization: Bearer sk-…' or 'x-api-key'.",
        code="missing_api_key",
    )


def digest_of(key: str) -> str:
    return api_key_digest(key)
