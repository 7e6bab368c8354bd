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

from accounts.models import ApiToken
from accounts.services import api_key_digest
from billing.models import Wallet
from relay.http import RelayError, Request

_MAX_CACHED_KEYS = 50_000


@dataclass(frozen=True, slots=True)
class KeyInfo:
    token_id: int
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
    # Whether calls count tokens against a quota (the key's or its group's).
    quota_tracked: bool

    @property
    def credit_limited(self) -> bool:
        return self.credit_limit_micros is not None


# digest -> (monotonic time loaded, key or None for an unknown key)
_cache: dict[str, tuple[float, KeyInfo | None]] = {}
_refreshing: set[str] = set()


def _load(digest: str) -> KeyInfo | None:
    user_wallet = Wallet.objects.filter(user_id=OuterRef("owner_id")).values("pk")[:1]
    org_wallet = Wallet.objects.filter(organization_id=OuterRef("organization_id")).values("pk")[:1]
    token = (
        ApiToken.objects.select_related("owner", "group")
        .annotate(user_wallet_id=Subquery(user_wallet), org_wallet_id=Subquery(org_wallet))
        .filter(digest=digest)
        .first()
    )
    if token is None:
        return None
    return KeyInfo(
        token_id=token.pk,
        name=token.name,
        owner_id=token.owner_id,
        organization_id=token.organization_id,
        group_id=token.group_id,
        group_name=token.group.name if token.group else "",
        wallet_id=token.org_wallet_id if token.organization_id else token.user_wallet_id,
        status=token.status,
        expires_at=token.expires_at,
        owner_blocked=token.owner.is_blocked,
        owner_active=token.owner.is_active,
        allowed_models=frozenset(token.allowed_models or ()),
        allowed_networks=tuple(ipaddress.ip_network(n) for n in token.allowed_ips or ()),
        max_cost_per_request_micros=token.max_cost_per_request_micros,
        credit_limit_micros=token.credit_limit_micros,
        quota_tracked=token.quota_tokens is not None,
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


# The same read in one SQL statement, for the PostgreSQL fast path (relay.pg).
KEY_SQL = """
SELECT t.id, t.name, t.owner_id, t.organization_id, t.group_id, coalesce(g.name, ''),
       CASE WHEN t.organization_id IS NULL
            THEN (SELECT w.id FROM billing_wallet w WHERE w.user_id = t.owner_id)
            ELSE (SELECT w.id FROM billing_wallet w WHERE w.organization_id = t.organization_id)
       END,
       t.status, t.expires_at, u.is_blocked, u.is_active, t.allowed_models, t.allowed_ips,
       t.max_cost_per_request_micros, t.credit_limit_micros, t.quota_tokens
  FROM accounts_apitoken t
  JOIN accounts_user u ON u.id = t.owner_id
  LEFT JOIN accounts_tokengroup g ON g.id = t.group_id
 WHERE t.digest = %s
"""


def from_row(row: tuple | None) -> KeyInfo | None:
    if row is None:
        return None
    (token_id, name, owner_id, organization_id, group_id, group_name, wallet_id, status,
     expires_at, blocked, active, models, ips, cap, credit_limit, quota) = row  # fmt: skip
    return KeyInfo(
        token_id=token_id,
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
        quota_tracked=quota is not None,
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
