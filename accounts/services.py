import hashlib
import ipaddress
import logging
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.mail import send_mail
from django.db import transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.text import slugify

from accounts.models import (
    ApiToken,
    AuditEvent,
    Invitation,
    LimitsMixin,
    Membership,
    Organization,
    PersonalAccessToken,
    QuotaReset,
    TokenGroup,
    User,
)
from tokenbyte.errors import ApplicationError

if TYPE_CHECKING:
    from accounts.scope import Scope

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "sk-"
# Characters of the key kept for display: "sk-" plus the first 8 of its random part.
API_KEY_DISPLAY_LENGTH = len(API_KEY_PREFIX) + 8


def api_key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_generate() -> str:
    # 36 random bytes: 288 bits, 48 url-safe characters.
    return API_KEY_PREFIX + secrets.token_urlsafe(36)


def user_get_or_create(*, email: str) -> tuple[User, bool]:
    email = User.objects.normalize_email(email.strip()).lower()
    if not email or "@" not in email:
        raise ApplicationError(f"not an email address: {email!r}")
    user = User.objects.filter(email=email).first()
    if user is not None:
        return user, False
    return User.objects.create_user(email=email, password=None), True


def _clean_ips(ips: Iterable[str]) -> list[str]:
    cleaned = []
    for item in ips:
        try:
            cleaned.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError as exc:
            raise ApplicationError(f"not an IP address or CIDR range: {item!r}") from exc
    return cleaned


def _clean_models(model_ids: Iterable[str]) -> list[str]:
    from catalog.models import Model

    wanted = [m.strip() for m in model_ids if m.strip()]
    known = set(Model.objects.filter(model_id__in=wanted).values_list("model_id", flat=True))
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise ApplicationError(f"unknown model(s): {', '.join(unknown)}")
    return wanted


def _check_non_negative(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 0:
            raise ApplicationError(f"{name} must not be negative")


def token_group_create(
    *,
    owner: User,
    name: str,
    organization: Organization | None = None,
    description: str = "",
    quota_tokens: int | None = None,
    quota_reset: str = QuotaReset.MANUAL,
    credit_limit_micros: int | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    rpd: int | None = None,
) -> TokenGroup:
    name = name.strip()
    if not name:
        raise ApplicationError("a group needs a name", extra={"param": "name"})
    if quota_reset not in QuotaReset.values:
        raise ApplicationError(f"quota reset must be one of {', '.join(QuotaReset.values)}")
    _check_non_negative(
        quota_tokens=quota_tokens, credit_limit=credit_limit_micros, rpm=rpm, tpm=tpm, rpd=rpd
    )
    if TokenGroup.objects.filter(owner=owner, name=name).exists():
        raise ApplicationError(f"a group named {name!r} already exists", extra={"param": "name"})
    return TokenGroup.objects.create(
        owner=owner,
        organization=organization,
        name=name,
        description=description.strip(),
        quota_tokens=quota_tokens,
        quota_reset=quota_reset,
        quota_next_reset_at=quota_next_reset(
            period=quota_reset, time_zone=owner.time_zone, after=timezone.now()
        ),
        credit_limit_micros=credit_limit_micros,
        rpm=rpm,
        tpm=tpm,
        rpd=rpd,
    )


def api_token_create(
    *,
    owner: User,
    name: str,
    organization: Organization | None = None,
    group: TokenGroup | None = None,
    allowed_models: Iterable[str] = (),
    allowed_ips: Iterable[str] = (),
    rpm: int | None = None,
    tpm: int | None = None,
    rpd: int | None = None,
    quota_tokens: int | None = None,
    quota_reset: str = QuotaReset.MANUAL,
    max_cost_per_request_micros: int | None = None,
    credit_limit_micros: int | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Create a key; returns it with the plaintext, which is never stored and never shown again."""
    name = name.strip()
    if not name:
        raise ApplicationError("a key needs a name", extra={"param": "name"})
    if quota_reset not in QuotaReset.values:
        raise ApplicationError(f"quota reset must be one of {', '.join(QuotaReset.values)}")
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("the expiry must be in the future", extra={"param": "expires_at"})
    if group is not None and group.owner_id != owner.pk:
        raise ApplicationError("the group belongs to someone else", extra={"param": "group"})
    if organization is not None:
        _check_org_keys(owner, organization)
        if group is not None:
            raise ApplicationError(ORG_KEY_NO_GROUP, extra={"param": "group"})
    _check_non_negative(
        rpm=rpm,
        tpm=tpm,
        rpd=rpd,
        quota_tokens=quota_tokens,
        max_cost_per_request=max_cost_per_request_micros,
        credit_limit=credit_limit_micros,
    )
    with _about("allowed_models"):
        models = _clean_models(allowed_models)
    with _about("allowed_ips"):
        ips = _clean_ips(allowed_ips)
    key = api_key_generate()
    with transaction.atomic():
        token = ApiToken.objects.create(
            owner=owner,
            name=name,
            organization=organization,
            group=group,
            prefix=key[:API_KEY_DISPLAY_LENGTH],
            digest=api_key_digest(key),
            allowed_models=models,
            allowed_ips=ips,
            rpm=rpm,
            tpm=tpm,
            rpd=rpd,
            quota_tokens=quota_tokens,
            quota_reset=quota_reset,
            quota_next_reset_at=quota_next_reset(
                period=quota_reset, time_zone=owner.time_zone, after=timezone.now()
            ),
            max_cost_per_request_micros=max_cost_per_request_micros,
            credit_limit_micros=credit_limit_micros,
            expires_at=expires_at,
        )
        # No request here (console, API and command alike): the event has no address.
        audit_event_record(
            user=owner, kind=AuditEvent.Kind.KEY_CREATED, detail=f"{token.name} ({token.prefix}…)"
        )
    return token, key


# Key groups are personal: an organization's keys answer to its wallet and member allowances.
ORG_KEY_NO_GROUP = "an organization's key cannot be in a group"


def _check_org_keys(owner: User, organization: Organization) -> None:
    """A key spending from an organization's wallet: only for a member whose keys may work."""
    from accounts.scope import member_keys_allowed

    membership = Membership.objects.filter(organization=organization, user=owner).first()
    if membership is None:
        raise ApplicationError(f"You are not a member of {organization}.", code="not_found")
    if not member_keys_allowed(
        role=membership.role,
        member_keys_enabled=organization.member_keys_enabled,
        can_create_keys=membership.can_create_keys,
    ):
        raise ApplicationError(
            f"{organization} does not let you create keys: ask an owner or admin.",
            code="organization_keys_not_allowed",
        )


def api_token_set_status(*, token: ApiToken, status: str) -> bool:
    """Enable, disable or revoke a key. Revoked is final. Returns whether anything changed."""
    if status not in ApiToken.Status.values:
        raise ApplicationError(f"unknown key status: {status!r}")
    fields = {"status": status}
    if status == ApiToken.Status.REVOKED:
        fields["revoked_at"] = timezone.now()
    with transaction.atomic():
        changed = (
            ApiToken.objects.filter(pk=token.pk)
            .exclude(status=ApiToken.Status.REVOKED)
            .exclude(status=status)
            .update(**fields)
        )
        if changed and status == ApiToken.Status.REVOKED:
            audit_event_record(
                user_id=token.owner_id,
                kind=AuditEvent.Kind.KEY_REVOKED,
                detail=f"{token.name} ({token.prefix}…)",
            )
    if changed:
        for attr, value in fields.items():
            setattr(token, attr, value)
    return bool(changed)


def api_token_set_group(*, token: ApiToken, group: TokenGroup | None) -> bool:
    """Move a key into a group (or out of any). Returns whether anything changed.

    The key keeps its own counters and history: its request logs keep the group they were made
    in, its open holds settle against the group they reserved from, and the old group keeps the
    usage the key already spent there.
    """
    if group is not None and group.owner_id != token.owner_id:
        raise ApplicationError("the group belongs to someone else")
    if group is not None and token.organization_id is not None:
        raise ApplicationError(ORG_KEY_NO_GROUP, extra={"param": "group"})
    rows = ApiToken.objects.filter(pk=token.pk)
    if group is None:
        changed = rows.filter(group_id__isnull=False).update(group=None)
    else:
        changed = rows.exclude(group_id=group.pk).update(group=group)
    if not changed:
        return False
    token.group = group
    return True


# --- editing, deleting and batches of keys; editing and deleting groups ---------------------------
#
# The relay caches each key's row (its limits and its group's) for RELAY_KEY_CACHE_SECONDS (1 s)
# per process and then reads it again (relay/keys.py), so an edit, a disable or a revoke saved here
# reaches every relay process within that second with no invalidation message.


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


# "Leave as it is" in partial updates, where None means "no limit".
UNSET: Any = _Unset()
# Ids one batch call may name (the API's batch endpoints and the console's selection).
BATCH_MAX_IDS = 1000
NAME_MAX_LENGTH = 100


@contextmanager
def _about(param: str) -> Iterator[None]:
    """Name the input field of a validation error raised without one."""
    try:
        yield
    except ApplicationError as exc:
        if "param" not in exc.extra:
            exc.extra["param"] = param
        raise


def _clean_name(name: str, *, what: str) -> str:
    name = name.strip()
    if not name:
        raise ApplicationError(f"a {what} needs a name", extra={"param": "name"})
    if len(name) > NAME_MAX_LENGTH:
        raise ApplicationError(
            f"a name has at most {NAME_MAX_LENGTH} characters", extra={"param": "name"}
        )
    return name


def _check_limits(values: dict[str, Any]) -> None:
    for field, value in values.items():
        if value is UNSET or value is None or field == "quota_reset":
            continue
        with _about(field):
            _check_non_negative(**{field: value})
    reset = values.get("quota_reset", UNSET)
    if reset is not UNSET and reset not in QuotaReset.values:
        raise ApplicationError(
            f"quota reset must be one of {', '.join(QuotaReset.values)}",
            extra={"param": "quota_reset"},
        )


def _apply(obj: LimitsMixin, values: dict[str, Any]) -> list[str]:
    """Set the given values on obj; returns the fields whose value changed."""
    changed = []
    for field, value in values.items():
        if value is UNSET:
            continue
        attr = "group_id" if field == "group" else field
        current = getattr(obj, attr)
        new = value.pk if field == "group" and value is not None else value
        if current != new:
            setattr(obj, field, value)
            changed.append(field)
    return changed


def api_token_update(
    *,
    token: ApiToken,
    name: Any = UNSET,
    group: Any = UNSET,
    allowed_models: Any = UNSET,
    allowed_ips: Any = UNSET,
    rpm: Any = UNSET,
    tpm: Any = UNSET,
    rpd: Any = UNSET,
    quota_tokens: Any = UNSET,
    quota_reset: Any = UNSET,
    max_cost_per_request_micros: Any = UNSET,
    credit_limit_micros: Any = UNSET,
    expires_at: Any = UNSET,
) -> list[str]:
    """Change a key's settings; arguments left UNSET keep their value, None means "no limit".

    Returns the names of the fields that changed. A revoked key is final and cannot be edited.
    The counters the relay moves (quota and credit used) are never written from here.
    """
    if token.status == ApiToken.Status.REVOKED:
        raise ApplicationError(
            "a revoked key cannot be edited", code="revoked", extra={"status": 409}
        )
    if name is not UNSET:
        name = _clean_name(name, what="key")
    if group is not UNSET and group is not None and group.owner_id != token.owner_id:
        raise ApplicationError("the group belongs to someone else", extra={"param": "group"})
    if group is not UNSET and group is not None and token.organization_id is not None:
        raise ApplicationError(ORG_KEY_NO_GROUP, extra={"param": "group"})
    if allowed_models is not UNSET:
        with _about("allowed_models"):
            allowed_models = _clean_models(allowed_models)
    if allowed_ips is not UNSET:
        with _about("allowed_ips"):
            allowed_ips = _clean_ips(allowed_ips)
    if (
        expires_at not in (UNSET, None)
        and expires_at != token.expires_at
        and expires_at <= timezone.now()
    ):
        raise ApplicationError("the expiry must be in the future", extra={"param": "expires_at"})
    values = {
        "name": name,
        "group": group,
        "allowed_models": allowed_models,
        "allowed_ips": allowed_ips,
        "rpm": rpm,
        "tpm": tpm,
        "rpd": rpd,
        "quota_tokens": quota_tokens,
        "quota_reset": quota_reset,
        "max_cost_per_request_micros": max_cost_per_request_micros,
        "credit_limit_micros": credit_limit_micros,
        "expires_at": expires_at,
    }
    _check_limits(
        {
            k: values[k]
            for k in (
                "rpm", "tpm", "rpd", "quota_tokens", "quota_reset",
                "max_cost_per_request_micros", "credit_limit_micros",
            )
        }
    )  # fmt: skip
    changed = _apply(token, values)
    if changed:
        # Only the changed settings are written, under the revoked-is-final rule: a key revoked
        # meanwhile (another tab, the batch API) stays revoked and unedited.
        with transaction.atomic():
            locked = (
                ApiToken.objects.select_for_update(of=("self",))
                .filter(pk=token.pk)
                .values_list("status", flat=True)
                .first()
            )
            if locked is None or locked == ApiToken.Status.REVOKED:
                raise ApplicationError(
                    "a revoked key cannot be edited", code="revoked", extra={"status": 409}
                )
            limits_save(obj=token, fields=changed)
    return changed


def api_token_delete(*, token: ApiToken) -> None:
    """Delete a key for good. Its request logs stay, with the key's name and no link to it."""
    with transaction.atomic():
        if token.status != ApiToken.Status.REVOKED:
            # Deleting a live key ends it as revoking does: the account's activity says so.
            audit_event_record(
                user_id=token.owner_id,
                kind=AuditEvent.Kind.KEY_REVOKED,
                detail=f"{token.name} ({token.prefix}…), deleted",
            )
        ApiToken.objects.filter(pk=token.pk).delete()


@dataclass(frozen=True)
class BatchResult:
    """What a batch did: the ids it changed, the owner's ids it left as they were (already in
    that state) and the ids that are not the owner's keys (missing or someone else's)."""

    changed: list[int]
    unchanged: list[int]
    not_found: list[int]


def _batch_ids(ids: Iterable[int]) -> list[int]:
    wanted = list(dict.fromkeys(int(i) for i in ids))
    if len(wanted) > BATCH_MAX_IDS:
        raise ApplicationError(f"at most {BATCH_MAX_IDS} ids per batch", extra={"param": "ids"})
    return wanted


def _owned_key_ids(owner: User, ids: list[int], scope: "Scope | None" = None) -> set[int]:
    """Those ids that are the owner's keys, or with a scope the scope's keys (an organization's
    owners and admins: every member's keys there)."""
    keys = ApiToken.objects.filter(is_playground=False, pk__in=ids)
    if scope is None:
        keys = keys.filter(owner=owner)
    else:
        keys = keys.filter(scope.rows(user_field="owner"))
    return set(keys.values_list("pk", flat=True))


def api_tokens_revoke(
    *, owner: User, ids: Iterable[int], scope: "Scope | None" = None
) -> BatchResult:
    """Revoke several of the owner's keys at once (with a scope: the scope's keys, see
    _owned_key_ids). Other ids change nothing."""
    wanted = _batch_ids(ids)
    owned = _owned_key_ids(owner, wanted, scope)
    now = timezone.now()
    with transaction.atomic():
        # Rows in pk order (Saleor's rule), so two batches over the same keys cannot deadlock.
        live = list(
            ApiToken.objects.filter(pk__in=owned)
            .exclude(status=ApiToken.Status.REVOKED)
            .order_by("pk")
            .select_for_update(of=("self",))
            .values_list("pk", "name", "prefix", "owner_id")
        )
        ApiToken.objects.filter(pk__in=[pk for pk, *_ in live]).update(
            status=ApiToken.Status.REVOKED, revoked_at=now
        )
        # In the account of each key's owner (an organization's admin may revoke a member's).
        AuditEvent.objects.bulk_create(
            AuditEvent(
                user_id=owner_id, kind=AuditEvent.Kind.KEY_REVOKED, detail=f"{name} ({prefix}…)"
            )
            for _, name, prefix, owner_id in live
        )
    changed = {pk for pk, *_ in live}
    return BatchResult(
        changed=[i for i in wanted if i in changed],
        unchanged=[i for i in wanted if i in owned and i not in changed],
        not_found=[i for i in wanted if i not in owned],
    )


def api_tokens_set_group(
    *, owner: User, ids: Iterable[int], group: TokenGroup | None
) -> BatchResult:
    """Move several of the owner's personal keys into a group (or out of any); see
    api_token_set_group. An organization's keys have no group: their ids are not found here."""
    from accounts.scope import Scope

    if group is not None and group.owner_id != owner.pk:
        raise ApplicationError("the group belongs to someone else", extra={"param": "group"})
    wanted = _batch_ids(ids)
    owned = _owned_key_ids(owner, wanted, Scope(user=owner))
    group_id = group.pk if group is not None else None
    with transaction.atomic():
        moving = list(
            ApiToken.objects.filter(pk__in=owned)
            .exclude(group_id=group_id)
            .order_by("pk")
            .select_for_update(of=("self",))
            .values_list("pk", flat=True)
        )
        ApiToken.objects.filter(pk__in=moving).update(group_id=group_id)
    changed = set(moving)
    return BatchResult(
        changed=[i for i in wanted if i in changed],
        unchanged=[i for i in wanted if i in owned and i not in changed],
        not_found=[i for i in wanted if i not in owned],
    )


def token_group_update(
    *,
    group: TokenGroup,
    name: Any = UNSET,
    description: Any = UNSET,
    quota_tokens: Any = UNSET,
    quota_reset: Any = UNSET,
    credit_limit_micros: Any = UNSET,
    rpm: Any = UNSET,
    tpm: Any = UNSET,
    rpd: Any = UNSET,
) -> list[str]:
    """Change a group's settings (UNSET keeps a value, None means no limit); returns the fields
    that changed. Its keys feel the change at the relay within the key cache's second."""
    if name is not UNSET:
        name = _clean_name(name, what="group")
        if (
            name != group.name
            and TokenGroup.objects.filter(owner_id=group.owner_id, name=name).exists()
        ):
            raise ApplicationError(
                f"a group named {name!r} already exists", extra={"param": "name"}
            )
    if description is not UNSET:
        description = description.strip()[:255]
    values = {
        "name": name,
        "description": description,
        "quota_tokens": quota_tokens,
        "quota_reset": quota_reset,
        "credit_limit_micros": credit_limit_micros,
        "rpm": rpm,
        "tpm": tpm,
        "rpd": rpd,
    }
    _check_limits({k: v for k, v in values.items() if k not in ("name", "description")})
    changed = _apply(group, values)
    if changed:
        limits_save(obj=group, fields=changed)
    return changed


def token_group_delete(*, group: TokenGroup) -> int:
    """Delete a group; its keys stay, in no group. Returns how many keys were in it."""
    with transaction.atomic():
        moved = ApiToken.objects.filter(group_id=group.pk).update(group=None)
        TokenGroup.objects.filter(pk=group.pk).delete()
    return moved


# --- token quota periods -------------------------------------------------------------------------


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        logger.warning("unknown time zone %r, quota periods fall back to UTC", name)
        return ZoneInfo("UTC")


def quota_next_reset(*, period: str, time_zone: str, after: datetime) -> datetime | None:
    """The first period boundary strictly after `after`, in UTC; None for manual resets.

    Boundaries are local midnights of the owner's time zone: every day (daily), Monday (weekly,
    ISO weeks) or the first of the month (monthly). A midnight that a DST change skips resolves
    to the first instant of that local day.
    """
    if period == QuotaReset.MANUAL:
        return None
    zone = _zone(time_zone)
    today = after.astimezone(zone).date()
    if period == QuotaReset.DAILY:
        day = today + timedelta(days=1)
    elif period == QuotaReset.WEEKLY:
        day = today + timedelta(days=7 - today.weekday())
    elif period == QuotaReset.MONTHLY:
        day = date(today.year + today.month // 12, today.month % 12 + 1, 1)
    else:
        raise ApplicationError(f"quota reset must be one of {', '.join(QuotaReset.values)}")
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def quota_schedule(*, obj: LimitsMixin, now: datetime | None = None) -> None:
    """Set when the quota next resets, after its period (or its owner's time zone) changed."""
    obj.quota_next_reset_at = quota_next_reset(
        period=obj.quota_reset, time_zone=obj.owner.time_zone, after=now or timezone.now()
    )
    type(obj).objects.filter(pk=obj.pk).update(quota_next_reset_at=obj.quota_next_reset_at)


def limits_save(*, obj: LimitsMixin, fields: Iterable[str]) -> None:
    """Save the edited settings of a key or group (admin, console) and nothing else: the
    counters the relay moves concurrently are never written from a stale copy."""
    fields = [f for f in fields if f not in LIMIT_COUNTERS]
    _check_non_negative(
        **{f: getattr(obj, f) for f in ("rpm", "tpm", "rpd", "quota_tokens") if f in fields}
    )
    with transaction.atomic():
        if fields:
            obj.save(update_fields=fields)
        if "quota_reset" in fields:
            quota_schedule(obj=obj)


# The relay moves these with conditional updates; settings edits never write them.
LIMIT_COUNTERS = frozenset(
    {
        "quota_used_tokens",
        "credit_used_micros",
        "quota_last_reset_at",
        "quota_next_reset_at",
        "quota_alerted_percent",
    }
)


def user_time_zone_changed(*, user: User) -> None:
    """Move the next scheduled resets of the user's keys and groups to the new local midnight."""
    _zone(user.time_zone)
    now = timezone.now()
    for model in (ApiToken, TokenGroup):
        for obj in model.objects.filter(owner=user).exclude(quota_reset=QuotaReset.MANUAL):
            obj.owner = user
            quota_schedule(obj=obj, now=now)


def staff_totp_device_get_or_create(
    *, user: User, name: str = "authenticator"
) -> tuple[object, bool]:
    """A confirmed TOTP device for a staff user, who needs one to open the admin."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    if not user.is_staff:
        raise ApplicationError(f"{user.email} is not a staff user")
    device = TOTPDevice.objects.filter(user=user, name=name, confirmed=True).first()
    if device is not None:
        return device, False
    return TOTPDevice.objects.create(user=user, name=name, confirmed=True), True


def user_set_random_password(*, user: User) -> str:
    password = secrets.token_urlsafe(12)
    user.set_password(password)
    user.save(update_fields=["password"])
    # The operator hands this password out (seed_demo): the address counts as verified, or
    # mandatory email verification would stop the printed login at a confirmation email.
    user_email_mark_verified(user=user)
    return password


def user_email_mark_verified(*, user: User) -> None:
    """Record the user's address as verified and primary in allauth's table."""
    from allauth.account.models import EmailAddress

    EmailAddress.objects.filter(user=user).exclude(email__iexact=user.email).update(primary=False)
    EmailAddress.objects.update_or_create(
        user=user, email=user.email, defaults={"verified": True, "primary": True}
    )


# --- profile -------------------------------------------------------------------------------------


def user_profile_update(
    *,
    user: User,
    name: str,
    time_zone: str,
    extended_log_archive: bool,
    notify_quota_alerts: bool,
    notify_low_balance: bool,
) -> list[str]:
    """Save the settings a user edits in Profile. Returns the names of the fields that changed."""
    if time_zone not in available_timezones():
        raise ApplicationError(f"unknown time zone: {time_zone!r}")
    values = {
        "name": name.strip(),
        "time_zone": time_zone,
        "extended_log_archive": extended_log_archive,
        "notify_quota_alerts": notify_quota_alerts,
        "notify_low_balance": notify_low_balance,
    }
    changed = [field for field, value in values.items() if getattr(user, field) != value]
    if not changed:
        return []
    for field in changed:
        setattr(user, field, values[field])
    with transaction.atomic():
        user.save(update_fields=changed)
        if "time_zone" in changed:
            # Scheduled quota resets follow the owner's local midnight.
            user_time_zone_changed(user=user)
    return changed


# --- audit ---------------------------------------------------------------------------------------

AUDIT_TEXT_LENGTH = 255


def _client_ip(request: HttpRequest) -> str | None:
    from allauth.account.adapter import get_adapter

    # allauth's reading of the address (ALLAUTH_TRUSTED_PROXY_COUNT), as its rate limits see it.
    try:
        ip = get_adapter(request).get_client_ip(request)
    except PermissionDenied:
        return None
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def audit_event_record(
    *,
    kind: str,
    user: User | None = None,
    user_id: int | None = None,
    request: HttpRequest | None = None,
    detail: str = "",
) -> AuditEvent:
    """Append one event to the user's audit list (Profile). `request` gives the IP and browser."""
    if kind not in AuditEvent.Kind.values:
        raise ApplicationError(f"unknown audit event kind: {kind!r}")
    ip, user_agent = None, ""
    if request is not None:
        ip = _client_ip(request)
        user_agent = request.META.get("HTTP_USER_AGENT", "")[:AUDIT_TEXT_LENGTH]
    return AuditEvent.objects.create(
        user_id=user.pk if user is not None else user_id,
        kind=kind,
        ip=ip,
        user_agent=user_agent,
        detail=detail[:AUDIT_TEXT_LENGTH],
    )


# --- playground keys -----------------------------------------------------------------------------

PLAYGROUND_KEY_NAME = "Playground"
# Live playground keys one user may hold (a few open playground tabs); issuing another revokes
# the oldest.
PLAYGROUND_KEYS_LIVE_MAX = 5
# How long an expired playground key is kept before the cleanup job deletes it.
PLAYGROUND_KEYS_KEPT_AFTER_EXPIRY = timedelta(days=1)
PLAYGROUND_KEYS_DELETE_BATCH = 500


def playground_key_issue(*, user: User) -> tuple[ApiToken, str]:
    """A short-lived relay key for the console's playground, which calls /v1 from the browser.

    Returns the key with its plaintext; only the digest is stored, the page keeps the plaintext
    in memory and asks for a new key when this one expires (PLAYGROUND_KEY_TTL_SECONDS). No
    group and no limits of its own: it spends from the user's wallet and is billed and logged
    like any key. No audit event: an open playground makes one an hour, which would bury the
    keys the user made.
    """
    now = timezone.now()
    key = api_key_generate()
    with transaction.atomic():
        # The user's row serializes two tabs asking at once, so the cap of live keys holds.
        list(User.objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True))
        live = (
            ApiToken.objects.filter(
                owner=user,
                is_playground=True,
                status=ApiToken.Status.ENABLED,
                expires_at__gt=now,
            )
            .order_by("-created_at", "-pk")
            .values_list("pk", flat=True)
        )
        oldest = list(live[PLAYGROUND_KEYS_LIVE_MAX - 1 :])
        if oldest:
            ApiToken.objects.filter(pk__in=oldest).update(
                status=ApiToken.Status.REVOKED, revoked_at=now
            )
        token = ApiToken.objects.create(
            owner=user,
            name=PLAYGROUND_KEY_NAME,
            prefix=key[:API_KEY_DISPLAY_LENGTH],
            digest=api_key_digest(key),
            is_playground=True,
            created_at=now,
            expires_at=now + timedelta(seconds=settings.PLAYGROUND_KEY_TTL_SECONDS),
        )
    return token, key


def playground_keys_delete_expired(*, now: datetime | None = None) -> int:
    """Delete the playground keys that expired over a day ago; returns how many went.

    Their request logs stay and keep the key's name (RequestLog.api_token is SET_NULL). Safe
    to run twice; deletes in batches so a backlog never becomes one huge transaction.
    """
    cutoff = (now or timezone.now()) - PLAYGROUND_KEYS_KEPT_AFTER_EXPIRY
    expired = ApiToken.objects.filter(is_playground=True, expires_at__lt=cutoff)
    deleted = 0
    while pks := list(expired.values_list("pk", flat=True)[:PLAYGROUND_KEYS_DELETE_BATCH]):
        _, counts = ApiToken.objects.filter(pk__in=pks).delete()
        deleted += counts.get(ApiToken._meta.label, 0)
    return deleted


# --- personal access tokens (the JSON API) --------------------------------------------------------

ACCESS_TOKEN_PREFIX = "tbp_"
ACCESS_TOKEN_DISPLAY_LENGTH = len(ACCESS_TOKEN_PREFIX) + 8
# last_used_at is written at most this often per token, so a busy script does not write per call.
ACCESS_TOKEN_TOUCH_SECONDS = 60


def access_token_create(
    *, user: User, name: str, expires_at: datetime | None = None
) -> tuple[PersonalAccessToken, str]:
    """Create a personal access token for /api/; returns it with the plaintext, shown once."""
    name = name.strip()
    if not name:
        raise ApplicationError("a token needs a name", extra={"param": "name"})
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("the expiry must be in the future", extra={"param": "expires_at"})
    secret = ACCESS_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = PersonalAccessToken.objects.create(
            user=user,
            name=name[:100],
            prefix=secret[:ACCESS_TOKEN_DISPLAY_LENGTH],
            digest=api_key_digest(secret),
            expires_at=expires_at,
        )
        audit_event_record(
            user=user,
            kind=AuditEvent.Kind.ACCESS_TOKEN_CREATED,
            detail=f"{token.name} ({token.prefix}…)",
        )
    return token, secret


def access_token_revoke(*, token: PersonalAccessToken) -> bool:
    """Revoke a personal access token for good. Returns whether anything changed."""
    now = timezone.now()
    with transaction.atomic():
        changed = PersonalAccessToken.objects.filter(pk=token.pk, revoked_at=None).update(
            revoked_at=now
        )
        if changed:
            token.revoked_at = now
            audit_event_record(
                user_id=token.user_id,
                kind=AuditEvent.Kind.ACCESS_TOKEN_REVOKED,
                detail=f"{token.name} ({token.prefix}…)",
            )
    return bool(changed)


def access_token_authenticate(*, secret: str) -> PersonalAccessToken | None:
    """The usable token with this plaintext (its user loaded), or None."""
    if not secret.startswith(ACCESS_TOKEN_PREFIX):
        return None
    token = (
        PersonalAccessToken.objects.select_related("user")
        .filter(digest=api_key_digest(secret))
        .first()
    )
    if token is None or not token.is_usable() or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > (
        ACCESS_TOKEN_TOUCH_SECONDS
    ):
        PersonalAccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


# --- organizations: members, roles, invitations (accounts/scope.py has the permissions) --------

INVITATION_TTL = timedelta(days=7)
SEND_INVITATION = "tasks.tasks.send_invitation_email"


def _org_slug(name: str) -> str:
    base = slugify(name)[:100] or "org"
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def _clean_zone(time_zone: str) -> str:
    if time_zone not in available_timezones():
        raise ApplicationError(f"unknown time zone: {time_zone!r}", extra={"param": "time_zone"})
    return time_zone


def allowance_period_start(*, time_zone: str, now: datetime | None = None) -> date:
    """The first day of the current month in the organization's time zone."""
    local = (now or timezone.now()).astimezone(_zone(time_zone))
    return local.date().replace(day=1)


def organization_create(*, user: User, name: str, time_zone: str = "") -> Organization:
    """A new organization with its own wallet; its creator is its first owner."""
    from billing.services import wallet_get_or_create

    name = _clean_name(name, what="organization")
    time_zone = _clean_zone(time_zone or user.time_zone)
    with transaction.atomic():
        org = Organization.objects.create(
            name=name, slug=_org_slug(name), created_by=user, time_zone=time_zone
        )
        Membership.objects.create(
            organization=org,
            user=user,
            role=Membership.Role.OWNER,
            allowance_period_start=allowance_period_start(time_zone=time_zone),
        )
        wallet_get_or_create(organization=org)
        audit_event_record(user=user, kind=AuditEvent.Kind.ORG_CREATED, detail=org.name)
    return org


def organization_update(
    *,
    scope: "Scope",
    name: str | None = None,
    time_zone: str | None = None,
    member_keys_enabled: bool | None = None,
) -> Organization:
    from accounts.scope import Perm

    scope.require(Perm.EDIT)
    org = scope.organization
    fields = []
    if name is not None:
        org.name = _clean_name(name, what="organization")
        fields.append("name")
    if time_zone is not None and time_zone != org.time_zone:
        # The current period keeps its start; the next one begins on the new zone's first.
        org.time_zone = _clean_zone(time_zone)
        fields.append("time_zone")
    if member_keys_enabled is not None:
        org.member_keys_enabled = member_keys_enabled
        fields.append("member_keys_enabled")
    if fields:
        org.save(update_fields=fields)
    return org


def invitation_token(invitation: Invitation) -> str:
    """The invitation's secret, derived from its id, creation time and SECRET_KEY: only its
    digest is stored, yet the email task and the organization's page can show the link again."""
    mac = salted_hmac(
        "tokenbyte.invitation", f"{invitation.pk}:{invitation.created_at.isoformat()}"
    )
    return "inv_" + mac.hexdigest()[:40]


def invitation_url(invitation: Invitation) -> str:
    return f"{settings.SITE_URL}/organization/invitations/{invitation_token(invitation)}/"


def invitation_state(invitation: Invitation, *, now: datetime | None = None) -> str:
    """pending, accepted, declined, revoked or expired."""
    if invitation.accepted_at is not None:
        return "accepted"
    if invitation.declined_at is not None:
        return "declined"
    if invitation.revoked_at is not None:
        return "revoked"
    if invitation.expires_at <= (now or timezone.now()):
        return "expired"
    return "pending"


def _check_grantable(scope: "Scope", role: str) -> None:
    from accounts.scope import Perm

    if role not in Membership.Role.values:
        raise ApplicationError(
            f"role must be one of {', '.join(Membership.Role.values)}", extra={"param": "role"}
        )
    # Only owners hand out the roles above member.
    if role != Membership.Role.MEMBER and not scope.can(Perm.SET_ROLE):
        raise ApplicationError(
            f"Only an owner can invite or make someone {role}.",
            code="permission_denied",
            extra={"param": "role"},
        )


def invitation_create(
    *, scope: "Scope", email: str = "", role: str = Membership.Role.MEMBER
) -> Invitation:
    """Invite one address by email, or (no email) make a shareable single-use link. Both expire
    after INVITATION_TTL. A new invitation to an address revokes its pending one."""
    from accounts.scope import Perm

    scope.require(Perm.INVITE)
    _check_grantable(scope, role)
    org = scope.organization
    email = User.objects.normalize_email(email.strip()).lower() if email else ""
    if email:
        if "@" not in email:
            raise ApplicationError(f"not an email address: {email!r}", extra={"param": "email"})
        if Membership.objects.filter(organization=org, user__email=email).exists():
            raise ApplicationError(
                f"{email} is already a member of {org}.", code="already_member",
                extra={"param": "email"},
            )  # fmt: skip
    now = timezone.now()
    with transaction.atomic():
        if email:
            Invitation.objects.filter(
                organization=org, email=email, accepted_at__isnull=True,
                declined_at__isnull=True, revoked_at__isnull=True,
            ).update(revoked_at=now)  # fmt: skip
        invitation = Invitation.objects.create(
            organization=org,
            email=email,
            role=role,
            # Unique and unguessable until the real digest replaces it below (the secret
            # derives from the row's id).
            token_digest=secrets.token_hex(32),
            invited_by=scope.user,
            created_at=now,
            expires_at=now + INVITATION_TTL,
        )
        invitation.token_digest = api_key_digest(invitation_token(invitation))
        invitation.save(update_fields=["token_digest"])
        if email:
            from tokenbyte.celery import task_queue

            transaction.on_commit(
                lambda pk=invitation.pk: task_queue(SEND_INVITATION, pk), robust=True
            )
    return invitation


def invitation_email_send(*, invitation_id: int) -> bool:
    """Email a pending invitation its link (the task queued by invitation_create)."""
    invitation = (
        Invitation.objects.select_related("organization", "invited_by")
        .filter(pk=invitation_id)
        .first()
    )
    if invitation is None or not invitation.email or invitation_state(invitation) != "pending":
        return False
    context = {
        "invitation": invitation,
        "url": invitation_url(invitation),
        "site_name": settings.SITE_NAME,
        "inviter": invitation.invited_by.email if invitation.invited_by else "An owner",
    }
    send_mail(
        subject=f"You are invited to join {invitation.organization} on {settings.SITE_NAME}",
        message=render_to_string("accounts/emails/invitation.txt", context),
        from_email=None,
        recipient_list=[invitation.email],
    )
    return True


def invitation_for_token(*, token: str) -> Invitation | None:
    if not token.startswith("inv_"):
        return None
    return (
        Invitation.objects.select_related("organization", "invited_by")
        .filter(token_digest=api_key_digest(token))
        .first()
    )


def _open_invitation(invitation: Invitation, user: User, now: datetime) -> Invitation:
    """The invitation locked, if it is still pending and meant for this user."""
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    state = invitation_state(locked, now=now)
    if state != "pending":
        raise ApplicationError(
            f"This invitation is {state}: ask for a new one.", code=f"invitation_{state}"
        )
    if locked.email and locked.email != user.email.lower():
        raise ApplicationError(
            f"This invitation is for {locked.email}; you are signed in as {user.email}.",
            code="invitation_other_email",
        )
    return locked


def invitation_accept(*, invitation: Invitation, user: User) -> Membership:
    """Join: single use (the row is locked, so two accepts of one link make one member)."""
    now = timezone.now()
    with transaction.atomic():
        locked = _open_invitation(invitation, user, now)
        org = locked.organization
        if Membership.objects.filter(organization=org, user=user).exists():
            raise ApplicationError(f"You are already a member of {org}.", code="already_member")
        membership = Membership.objects.create(
            organization=org,
            user=user,
            role=locked.role,
            allowance_period_start=allowance_period_start(time_zone=org.time_zone, now=now),
            created_at=now,
        )
        locked.accepted_at = now
        locked.accepted_by = user
        locked.save(update_fields=["accepted_at", "accepted_by"])
        audit_event_record(
            user=user, kind=AuditEvent.Kind.ORG_JOINED, detail=f"{org} ({locked.role})"
        )
    return membership


def invitation_decline(*, invitation: Invitation, user: User) -> None:
    now = timezone.now()
    with transaction.atomic():
        locked = _open_invitation(invitation, user, now)
        locked.declined_at = now
        locked.save(update_fields=["declined_at"])


def invitation_revoke(*, scope: "Scope", invitation: Invitation) -> bool:
    from accounts.scope import Perm

    scope.require(Perm.INVITE)
    if invitation.organization_id != scope.organization_id:
        raise ApplicationError("no such invitation", code="not_found")
    return bool(
        Invitation.objects.filter(
            pk=invitation.pk, accepted_at__isnull=True, declined_at__isnull=True,
            revoked_at__isnull=True,
        ).update(revoked_at=timezone.now())
    )  # fmt: skip


def _lock_members(org_id: int) -> list[Membership]:
    """Every membership of the organization, locked in id order: role changes and removals
    serialise, so two of them cannot both take away the last owner."""
    return list(
        Membership.objects.select_for_update().filter(organization_id=org_id).order_by("pk")
    )


def _check_not_last_owner(members: list[Membership], target: Membership) -> None:
    owners = [m for m in members if m.role == Membership.Role.OWNER]
    if target.role == Membership.Role.OWNER and len(owners) == 1:
        raise ApplicationError(
            "An organization needs an owner: make someone else owner first.",
            code="last_owner",
        )


def _target_in(members: list[Membership], target: Membership) -> Membership:
    for member in members:
        if member.pk == target.pk:
            return member
    raise ApplicationError("no such member", code="not_found")


def member_remove(*, scope: "Scope", membership: Membership) -> int:
    """Remove a member (or leave, for one's own membership). Their organization keys are
    revoked in the same transaction, and the relay refuses them within its key cache's second.
    Returns how many keys were revoked."""
    from accounts.scope import Perm

    leaving = membership.user_id == scope.user.pk
    with transaction.atomic():
        members = _lock_members(scope.organization_id)
        target = _target_in(members, membership)
        if not leaving:
            is_member = target.role == Membership.Role.MEMBER
            scope.require(Perm.REMOVE_MEMBER if is_member else Perm.REMOVE_ADMIN)
        _check_not_last_owner(members, target)
        revoked = (
            ApiToken.objects.filter(organization_id=target.organization_id, owner_id=target.user_id)
            .exclude(status=ApiToken.Status.REVOKED)
            .update(status=ApiToken.Status.REVOKED)
        )
        Membership.objects.filter(pk=target.pk).delete()
        org = scope.organization
        detail = f"left {org}" if leaving else f"removed from {org} by {scope.user.email}"
        audit_event_record(user_id=target.user_id, kind=AuditEvent.Kind.ORG_LEFT, detail=detail)
    return revoked


def member_role_set(*, scope: "Scope", membership: Membership, role: str) -> Membership:
    from accounts.scope import Perm

    scope.require(Perm.SET_ROLE)
    if role not in Membership.Role.values:
        raise ApplicationError(
            f"role must be one of {', '.join(Membership.Role.values)}", extra={"param": "role"}
        )
    with transaction.atomic():
        members = _lock_members(scope.organization_id)
        target = _target_in(members, membership)
        if target.role == role:
            return target
        if role != Membership.Role.OWNER:
            _check_not_last_owner(members, target)
        old = target.role
        target.role = role
        target.save(update_fields=["role"])
        audit_event_record(
            user_id=target.user_id, kind=AuditEvent.Kind.ORG_ROLE_CHANGED,
            detail=f"{target.organization}: {old} → {role} by {scope.user.email}",
        )  # fmt: skip
    return target


def member_update(
    *,
    scope: "Scope",
    membership: Membership,
    monthly_allowance_micros: int | None = UNSET,
    can_create_keys: bool | None = None,
) -> Membership:
    """Set a member's monthly allowance (None: no cap) or whether their keys may work."""
    from accounts.scope import Perm

    scope.require(Perm.SET_ALLOWANCE)
    if membership.organization_id != scope.organization_id:
        raise ApplicationError("no such member", code="not_found")
    fields = []
    if monthly_allowance_micros is not UNSET:
        _check_non_negative(monthly_allowance=monthly_allowance_micros)
        membership.monthly_allowance_micros = monthly_allowance_micros
        fields.append("monthly_allowance_micros")
    if can_create_keys is not None:
        membership.can_create_keys = can_create_keys
        fields.append("can_create_keys")
    if fields:
        membership.save(update_fields=fields)
    return membership
