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


_cache: dict[str, tuple[float, KeyInfo | None]] = {}


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


def lookup(digest: str) -> KeyInfo | None:
    """The key for a digest, from the cache when fresh enough. Runs in a database thread."""
    now = time.monotonic()
    cached = _cache.get(digest)
    if cached is not None and cached[0] > now:
        return cached[1]
    info = _load(digest)
    if len(_cache) >= _MAX_CACHED_KEYS:
        _cache.clear()
    _cache[digest] = (now + settings.RELAY_KEY_CACHE_SECONDS, info)
    return info


def cached(digest: str) -> tuple[bool, KeyInfo | None]:
    """(hit, info) without touching the database, so a warm key costs no thread hop."""
    entry = _cache.get(digest)
    if entry is not None and entry[0] > time.monotonic():
        return True, entry[1]
    return False, None


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
