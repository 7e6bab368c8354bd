import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import ApiToken, LimitsMixin, Organization, TokenGroup, User
from accounts.services import quota_held_tokens
from billing.models import Alert, Hold, LedgerEntry, Wallet
from tokenbyte.errors import ApplicationError
from tokenbyte.money import format_usd

logger = logging.getLogger(__name__)


def wallet_get_or_create(
    *, user: User | None = None, organization: Organization | None = None
) -> Wallet:
    if (user is None) == (organization is None):
        raise ApplicationError("a wallet belongs to exactly one user or one organization")
    owner = {"user": user} if user is not None else {"organization": organization}
    try:
        with transaction.atomic():
            wallet, _ = Wallet.objects.get_or_create(**owner)
    except IntegrityError:
        # Two first calls raced to create it; the other one won.
        wallet = Wallet.objects.get(**owner)
    return wallet


def ledger_post(
    *,
    wallet: Wallet,
    kind: str,
    amount_micros: int,
    idempotency_key: str,
    reference: str = "",
    description: str = "",
    created_by: User | None = None,
) -> tuple[LedgerEntry, bool]:
    """Append a ledger entry and move the wallet's balance with it, in one transaction.

    Returns (entry, created). Posting the same idempotency key again returns the first entry and
    changes nothing, so a replayed webhook or a retried task cannot credit or charge twice.
    A debit may not take the balance below what calls in flight hold.
    """
    if kind not in LedgerEntry.Kind.values:
        raise ApplicationError(f"unknown ledger entry kind: {kind!r}")
    if amount_micros == 0:
        raise ApplicationError("a ledger entry must move money")
    with transaction.atomic():
        # The row lock orders concurrent posts to one wallet; a replay waits here, then finds
        # the entry the first post committed.
        locked = Wallet.objects.select_for_update().filter(pk=wallet.pk)
        if not locked.exists():
            raise ApplicationError("wallet not found", code="not_found")
        existing = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            if existing.wallet_id != wallet.pk or existing.amount_micros != amount_micros:
                raise ApplicationError(
                    f"idempotency key {idempotency_key!r} was used for another entry",
                    code="conflict",
                )
            return existing, False
        updated = locked.filter(balance_micros__gte=F("held_micros") - amount_micros).update(
            balance_micros=F("balance_micros") + amount_micros
        )
        if not updated:
            raise ApplicationError("insufficient balance for this debit", code="insufficient_quota")
        if amount_micros > 0:
            # Back at or above the low-balance threshold: the next drop below alerts again.
            locked.filter(
                low_balance_alerted_at__isnull=False,
                balance_micros__gte=F("low_balance_threshold_micros"),
            ).update(low_balance_alerted_at=None)
        balance_after = Wallet.objects.values_list("balance_micros", flat=True).get(pk=wallet.pk)
        entry = LedgerEntry.objects.create(
            wallet=wallet,
            kind=kind,
            amount_micros=amount_micros,
            balance_after_micros=balance_after,
            idempotency_key=idempotency_key,
            reference=reference,
            description=description[:255],
            created_by=created_by,
        )
    wallet.balance_micros = balance_after
    return entry, True


def credit_grant(
    *,
    wallet: Wallet,
    amount_micros: int,
    reason: str,
    created_by: User | None = None,
    idempotency_key: str | None = None,
) -> LedgerEntry:
    """Give credit (promotion, compensation, demo). Positive amounts only."""
    if amount_micros <= 0:
        raise ApplicationError("a grant must be a positive amount")
    reason = reason.strip()
    if not reason:
        raise ApplicationError("a grant needs a reason")
    entry, _ = ledger_post(
        wallet=wallet,
        kind=LedgerEntry.Kind.GRANT,
        amount_micros=amount_micros,
        idempotency_key=idempotency_key or f"grant:{uuid.uuid4().hex}",
        description=reason,
        created_by=created_by,
    )
    return entry


class HoldRefusal(IntEnum):
    """Why a hold was refused. relay_hold (relay/migrations) returns the same numbers."""

    WALLET = 1
    KEY_CREDIT = 2
    KEY_QUOTA = 3
    GROUP_QUOTA = 4
    GROUP_CREDIT = 5


class HoldRefused(ApplicationError):
    def __init__(self, refusal: HoldRefusal, *, needed_micros: int, needed_tokens: int) -> None:
        token_refusal = refusal in (HoldRefusal.KEY_QUOTA, HoldRefusal.GROUP_QUOTA)
        super().__init__(
            f"hold refused: {refusal.name.lower()}",
            code="token_quota_exceeded" if token_refusal else "insufficient_quota",
            extra={"needed_micros": needed_micros, "needed_tokens": needed_tokens},
        )
        self.refusal = refusal
        self.needed_micros = needed_micros
        self.needed_tokens = needed_tokens


@dataclass(frozen=True)
class HoldParts:
    """What a hold reserves besides the wallet credit: the flags say which counters it moves."""

    tokens: int = 0
    api_token_id: int | None = None
    group_id: int | None = None
    token_credit: bool = False
    token_quota: bool = False
    group_credit: bool = False
    group_quota: bool = False


# A limit removed since the relay cached the key (NULL) no longer refuses. Table names are ours.
_FITS = (
    "(credit_limit_micros IS NULL OR credit_used_micros + %s <= credit_limit_micros),"
    " (quota_tokens IS NULL OR quota_used_tokens + %s <= quota_tokens)"
)


def _reserve_row(
    table: str, pk: int, *, credit: int | None, tokens: int | None
) -> tuple[bool, bool]:
    """Conditionally add to a key's or group's counters: (credit fits, tokens fit)."""
    amounts = [credit or 0, tokens or 0]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET credit_used_micros = credit_used_micros + %s,"  # noqa: S608
            " quota_used_tokens = quota_used_tokens + %s"
            " WHERE id = %s"
            " AND (credit_limit_micros IS NULL OR credit_used_micros + %s <= credit_limit_micros)"
            " AND (quota_tokens IS NULL OR quota_used_tokens + %s <= quota_tokens)",
            [*amounts, pk, *amounts],
        )
        if cursor.rowcount:
            return True, True
        cursor.execute(f"SELECT {_FITS} FROM {table} WHERE id = %s", [*amounts, pk])  # noqa: S608
        row = cursor.fetchone() or (False, False)
    return credit is None or bool(row[0]), tokens is None or bool(row[1])


def hold_acquire(
    *,
    request_id: str,
    wallet_id: int,
    amount_micros: int,
    api_token_id: int | None = None,
    token_credit_limited: bool = False,
    parts: HoldParts | None = None,
    ttl_seconds: int,
) -> Hold:
    """Reserve credit and tokens for one call with conditional updates: concurrent calls cannot
    overspend a wallet, a key's or a group's credit limit, or a key's or a group's token quota.

    Each counter is only moved `WHERE used + amount <= limit` (the wallet `WHERE balance - held
    >= amount`); a zero row count refuses the call and rolls the whole reservation back. Rows are
    taken in the order every path uses (key, group, wallet), so two holds cannot deadlock. The
    same rules run as one SQL function on the relay's PostgreSQL fast path (relay_hold).
    """
    if amount_micros < 0:
        raise ApplicationError("a hold cannot be negative")
    if parts is None:
        parts = HoldParts(api_token_id=api_token_id, token_credit=token_credit_limited)
    tokens = parts.tokens
    now = timezone.now()

    def refuse(refusal: HoldRefusal) -> HoldRefused:
        return HoldRefused(refusal, needed_micros=amount_micros, needed_tokens=tokens)

    with transaction.atomic():
        # Raising inside the block rolls back whatever was reserved before.
        if parts.token_credit or parts.token_quota:
            credit_ok, tokens_ok = _reserve_row(
                "accounts_apitoken",
                parts.api_token_id,
                credit=amount_micros if parts.token_credit else None,
                tokens=tokens if parts.token_quota else None,
            )
            if not tokens_ok:
                raise refuse(HoldRefusal.KEY_QUOTA)
            if not credit_ok:
                raise refuse(HoldRefusal.KEY_CREDIT)
        if parts.group_credit or parts.group_quota:
            credit_ok, tokens_ok = _reserve_row(
                "accounts_tokengroup",
                parts.group_id,
                credit=amount_micros if parts.group_credit else None,
                tokens=tokens if parts.group_quota else None,
            )
            if not tokens_ok:
                raise refuse(HoldRefusal.GROUP_QUOTA)
            if not credit_ok:
                raise refuse(HoldRefusal.GROUP_CREDIT)
        reserved = Wallet.objects.filter(
            pk=wallet_id, balance_micros__gte=F("held_micros") + amount_micros
        ).update(held_micros=F("held_micros") + amount_micros)
        if not reserved:
            raise refuse(HoldRefusal.WALLET)
        return Hold.objects.create(
            request_id=request_id,
            wallet_id=wallet_id,
            api_token_id=parts.api_token_id,
            group_id=parts.group_id if (parts.group_credit or parts.group_quota) else None,
            amount_micros=amount_micros,
            token_credit_micros=amount_micros if parts.token_credit else 0,
            group_credit_micros=amount_micros if parts.group_credit else 0,
            tokens=tokens,
            token_quota_tokens=tokens if parts.token_quota else 0,
            group_quota_tokens=tokens if parts.group_quota else 0,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )


@dataclass(frozen=True)
class QuotaState:
    """A key's or group's quota right after a settlement moved it, holds in flight included."""

    used_tokens: int
    quota_tokens: int | None
    alerted_percent: int


@dataclass(frozen=True)
class Settlement:
    charged_micros: int
    # The wallet went below its low-balance threshold and has not alerted since it did.
    low_balance: bool = False
    key_quota: QuotaState | None = None
    group_quota: QuotaState | None = None


HOLD_PARTS_SQL = (
    "token_credit_micros, group_credit_micros, tokens, token_quota_tokens, group_quota_tokens,"
    " api_token_id, group_id"
)
QUOTA_RETURNING = "quota_used_tokens, quota_tokens, quota_alerted_percent"


def _move_counters(
    table: str, pk: int | None, *, credit_delta: int | None, tokens_delta: int | None
) -> QuotaState | None:
    """Move a key's or group's counters (None: leave that one alone); the quota after it."""
    if pk is None or (credit_delta is None and tokens_delta is None):
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET credit_used_micros = credit_used_micros + %s,"  # noqa: S608
            " quota_used_tokens = quota_used_tokens + %s"
            f" WHERE id = %s RETURNING {QUOTA_RETURNING}",
            [credit_delta or 0, tokens_delta or 0, pk],
        )
        row = cursor.fetchone()
    if row is None or tokens_delta is None:
        return None
    return QuotaState(*row)


def _delta(actual: int, held: int) -> int | None:
    """What a counter moves by when a part of `held` (0 = not reserved there) becomes `actual`."""
    return actual - held if held else None


def hold_settle(
    *,
    request_id: str,
    wallet_id: int,
    hold_micros: int,
    cost_micros: int,
    used_tokens: int = 0,
    description: str = "",
) -> Settlement:
    """Replace an open hold with the actual cost and tokens: one ledger entry keyed by the
    request id; the key's and group's counters get back what the hold took beyond the actual use.

    Must run inside the caller's transaction (with the request log). Charges at most the hold
    and counts at most the tokens it reserved. Settling twice charges once.
    """
    now = timezone.now()
    charged = max(0, min(cost_micros, hold_micros))
    status = Hold.Status.SETTLED if charged else Hold.Status.RELEASED
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE billing_hold SET status = %s, closed_at = %s"  # noqa: S608
            f" WHERE request_id = %s AND status = %s RETURNING {HOLD_PARTS_SQL}",
            [status, now, request_id, Hold.Status.OPEN],
        )
        parts = cursor.fetchone()
    if parts is None:
        # The sweep released it (the call outlived its hold); charge what is still there.
        return _late_settle(
            request_id=request_id, wallet_id=wallet_id, cost_micros=charged, used_tokens=used_tokens
        )
    token_credit, group_credit, held_tokens, token_quota, group_quota, token_id, group_id = parts
    counted = max(0, min(used_tokens, held_tokens))
    key_quota = _move_counters(
        "accounts_apitoken", token_id,
        credit_delta=_delta(charged, token_credit), tokens_delta=_delta(counted, token_quota),
    )  # fmt: skip
    group_state = _move_counters(
        "accounts_tokengroup", group_id,
        credit_delta=_delta(charged, group_credit), tokens_delta=_delta(counted, group_quota),
    )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE billing_wallet SET held_micros = held_micros - %s,"
            " balance_micros = balance_micros - %s WHERE id = %s"
            " RETURNING balance_micros, low_balance_threshold_micros, low_balance_alerted_at",
            [hold_micros, charged, wallet_id],
        )
        balance_after, threshold, alerted_at = cursor.fetchone()
    if charged:
        LedgerEntry.objects.create(
            wallet_id=wallet_id,
            kind=LedgerEntry.Kind.USAGE,
            amount_micros=-charged,
            balance_after_micros=balance_after,
            idempotency_key=f"usage:{request_id}",
            reference=request_id,
            description=description[:255],
            created_at=now,
        )
    return Settlement(
        charged_micros=charged,
        low_balance=bool(
            charged and threshold is not None and balance_after < threshold and alerted_at is None
        ),
        key_quota=key_quota,
        group_quota=group_state,
    )


def _late_settle(
    *, request_id: str, wallet_id: int, cost_micros: int, used_tokens: int
) -> Settlement:
    """Settle a call whose hold the sweep already released: its reservations are gone, so the
    usage itself is counted on the key and group, and the wallet is charged what it still has."""
    hold = Hold.objects.filter(request_id=request_id).first()
    if hold is None:
        return Settlement(charged_micros=_late_debit(
            request_id=request_id, wallet_id=wallet_id, cost_micros=cost_micros
        ))  # fmt: skip
    counted = max(0, min(used_tokens, hold.tokens))
    rows = (
        ("accounts_apitoken", hold.api_token_id, hold.token_credit_micros, hold.token_quota_tokens),
        ("accounts_tokengroup", hold.group_id, hold.group_credit_micros, hold.group_quota_tokens),
    )
    # Key, group, then the wallet (in ledger_post): the order of every path.
    for table, pk, credit_held, tokens_held in rows:
        _move_counters(
            table, pk, credit_delta=cost_micros if credit_held else None,
            tokens_delta=counted if tokens_held else None,
        )  # fmt: skip
    charged = _late_debit(request_id=request_id, wallet_id=wallet_id, cost_micros=cost_micros)
    if charged != cost_micros:
        for table, pk, credit_held, _ in rows:
            if credit_held:
                _move_counters(table, pk, credit_delta=charged - cost_micros, tokens_delta=None)
    return Settlement(charged_micros=charged)


def _late_debit(*, request_id: str, wallet_id: int, cost_micros: int) -> int:
    if not cost_micros:
        return 0
    try:
        entry, _ = ledger_post(
            wallet=Wallet(pk=wallet_id),
            kind=LedgerEntry.Kind.USAGE,
            amount_micros=-cost_micros,
            idempotency_key=f"usage:{request_id}",
            reference=request_id,
            description="usage settled after its hold expired",
        )
    except ApplicationError:
        logger.warning("request %s could not be charged after its hold expired", request_id)
        return 0
    return -entry.amount_micros


def holds_release_expired(*, now: datetime | None = None, limit: int = 500) -> int:
    """Release holds left open by a process that died mid-call. Safe to run concurrently."""
    now = now or timezone.now()
    released = 0
    expired = Hold.objects.filter(status=Hold.Status.OPEN, expires_at__lt=now).values_list(
        "pk", "request_id"
    )[:limit]
    for pk, request_id in expired:
        with transaction.atomic(), connection.cursor() as cursor:
            # The conditional update decides who releases it: a sweep or a late settlement.
            cursor.execute(
                f"UPDATE billing_hold SET status = %s, closed_at = %s"  # noqa: S608
                f" WHERE id = %s AND status = %s RETURNING {HOLD_PARTS_SQL}, wallet_id,"
                " amount_micros",
                [Hold.Status.RELEASED, now, pk, Hold.Status.OPEN],
            )
            row = cursor.fetchone()
            if row is None:
                continue
            token_credit, group_credit, _, token_quota, group_quota, token_id, group_id = row[:7]
            wallet_id, amount = row[7:]
            # Same row order as holds and settlements: key, group, wallet.
            _move_counters(
                "accounts_apitoken", token_id,
                credit_delta=_delta(0, token_credit), tokens_delta=_delta(0, token_quota),
            )  # fmt: skip
            _move_counters(
                "accounts_tokengroup", group_id,
                credit_delta=_delta(0, group_credit), tokens_delta=_delta(0, group_quota),
            )  # fmt: skip
            Wallet.objects.filter(pk=wallet_id).update(held_micros=F("held_micros") - amount)
            released += 1
            logger.info("released the expired hold of %s", request_id)
    return released


# --- alerts -------------------------------------------------------------------------------------


def _thresholds(obj: LimitsMixin) -> list[int]:
    values = obj.alert_thresholds if isinstance(obj.alert_thresholds, list) else []
    return sorted({v for v in values if isinstance(v, int) and 0 < v <= 100})


def quota_period_key(obj: LimitsMixin) -> str:
    """Identifies the current quota period: it starts at the last reset (or the creation)."""
    return (obj.quota_last_reset_at or obj.created_at).isoformat()


def quota_alerts_raise(
    *,
    api_token_id: int | None = None,
    group_id: int | None = None,
    refused_call_tokens: int | None = None,
    now: datetime | None = None,
) -> list[Alert]:
    """Alert the owner of each threshold the key's (or group's) quota use reached this period.

    Usage counts settled calls only: what calls in flight hold is taken out, since a call with
    no max_tokens may hold the whole rest of the quota and use a fraction of it.
    `refused_call_tokens`: the relay refused a call whose smallest form needs that many tokens;
    if settled usage leaves less than that, the quota is used up and counts as 100% (a quota is
    rarely filled to the last token, since calls reserve their worst case).

    Each threshold alerts once per period: quota_alerted_percent moves up under the row lock
    and the alert's unique dedupe key backs it up. Emails go out after the commit.
    """
    if (api_token_id is None) == (group_id is None):
        raise ApplicationError("alert on one key or one group")
    model, pk = (ApiToken, api_token_id) if api_token_id is not None else (TokenGroup, group_id)
    now = now or timezone.now()
    created: list[Alert] = []
    with transaction.atomic():
        obj = (
            model.objects.select_for_update(of=("self",))
            .select_related("owner")
            .filter(pk=pk)
            .first()
        )
        if obj is None or obj.quota_tokens is None:
            return []
        settled = obj.quota_used_tokens - quota_held_tokens(obj)
        percent = 100 if obj.quota_tokens == 0 else settled * 100 // obj.quota_tokens
        if refused_call_tokens is not None and obj.quota_tokens - settled < refused_call_tokens:
            percent = max(percent, 100)
        reached = [t for t in _thresholds(obj) if obj.quota_alerted_percent < t <= percent]
        if not reached:
            return []
        is_key = model is ApiToken
        kind = Alert.Kind.TOKEN_QUOTA if is_key else Alert.Kind.GROUP_QUOTA
        what = f"API key '{obj.name}'" if is_key else f"token group '{obj.name}'"
        period = quota_period_key(obj)
        for threshold in reached:
            if threshold >= 100:
                message = f"Your {what} has used its whole token quota of {obj.quota_tokens:,}."
            else:
                message = (
                    f"Your {what} has used {threshold}% of its token quota of "
                    f"{obj.quota_tokens:,} tokens."
                )
            try:
                with transaction.atomic():
                    alert = Alert.objects.create(
                        kind=kind,
                        user=obj.owner,
                        api_token=obj if is_key else None,
                        group=None if is_key else obj,
                        threshold_percent=threshold,
                        dedupe_key=f"{kind}:{obj.pk}:{threshold}:{period}",
                        message=message[:255],
                        created_at=now,
                    )
            except IntegrityError:
                continue  # already alerted for this threshold and period
            created.append(alert)
        model.objects.filter(pk=pk).update(quota_alerted_percent=reached[-1])
        _queue_alert_emails(created)
    return created


def wallet_low_balance_alert_raise(*, wallet_id: int, now: datetime | None = None) -> Alert | None:
    """Alert the owner once when the balance drops below the wallet's threshold.

    The conditional update arms and disarms it: it fires only while low_balance_alerted_at is
    empty, and a credit that brings the balance back to the threshold empties it (ledger_post).
    """
    now = now or timezone.now()
    with transaction.atomic():
        fired = Wallet.objects.filter(
            pk=wallet_id,
            low_balance_alerted_at__isnull=True,
            balance_micros__lt=F("low_balance_threshold_micros"),
        ).update(low_balance_alerted_at=now)
        if not fired:
            return None
        wallet = Wallet.objects.select_related("user", "organization__created_by").get(pk=wallet_id)
        owner = wallet.user or wallet.organization.created_by
        alert = Alert.objects.create(
            kind=Alert.Kind.LOW_BALANCE,
            user=owner,
            wallet=wallet,
            dedupe_key=f"{Alert.Kind.LOW_BALANCE}:{wallet.pk}:{now.isoformat()}",
            message=(
                f"Your balance is {format_usd(wallet.balance_micros)}, below your alert "
                f"threshold of {format_usd(wallet.low_balance_threshold_micros)}."
            ),
            created_at=now,
        )
        _queue_alert_emails([alert])
    return alert


def _queue_alert_emails(alerts: list[Alert]) -> None:
    # The tasks module imports the services; importing it here keeps the cycle out of load time.
    from tasks.tasks import send_alert_email

    for alert in alerts:
        # After the commit: the worker must find the row, and a rolled-back alert sends nothing.
        # Robust: a broker that is down is logged and leaves the alert unsent (emailed_at empty)
        # rather than failing the caller after its alerts are committed.
        transaction.on_commit(lambda pk=alert.pk: send_alert_email.delay(pk), robust=True)


def alert_email_send(*, alert_id: int) -> bool:
    """Email one alert to its owner, once. Returns whether an email went out.

    Running it again after a success sends nothing; if sending fails, emailed_at stays empty and
    the task's retry sends it.
    """
    alert = Alert.objects.select_related("user").filter(pk=alert_id).first()
    if alert is None or alert.emailed_at is not None:
        return False
    body = (
        f"{alert.message}\n\n"
        f"See your usage and settings at {settings.SITE_URL}/\n\n"
        "You receive this email because alerts are on for your account."
    )
    send_mail(
        subject=f"TokenByte alert: {alert.message}"[:200],
        message=body,
        from_email=None,
        recipient_list=[alert.user.email],
    )
    Alert.objects.filter(pk=alert.pk, emailed_at__isnull=True).update(emailed_at=timezone.now())
    return True
