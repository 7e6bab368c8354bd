import logging
import uuid
from datetime import datetime, timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import ApiToken, Organization, User
from billing.models import Hold, LedgerEntry, Wallet
from tokenbyte.errors import ApplicationError

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


class InsufficientCredit(ApplicationError):
    def __init__(self, message: str, *, needed_micros: int) -> None:
        super().__init__(message, code="insufficient_quota", extra={"needed_micros": needed_micros})
        self.needed_micros = needed_micros


def hold_acquire(
    *,
    request_id: str,
    wallet_id: int,
    amount_micros: int,
    api_token_id: int | None = None,
    token_credit_limited: bool = False,
    ttl_seconds: int,
) -> Hold:
    """Reserve credit for one call with conditional updates: concurrent calls cannot overspend.

    The wallet row is only updated `WHERE balance - held >= amount` (and the key's credit counter
    only `WHERE used + amount <= limit`); a zero row count means the money is not there, and the
    whole reservation rolls back.
    """
    if amount_micros < 0:
        raise ApplicationError("a hold cannot be negative")
    now = timezone.now()
    with transaction.atomic():
        reserved = Wallet.objects.filter(
            pk=wallet_id, balance_micros__gte=F("held_micros") + amount_micros
        ).update(held_micros=F("held_micros") + amount_micros)
        if not reserved:
            raise InsufficientCredit("insufficient balance", needed_micros=amount_micros)
        if token_credit_limited:
            reserved = ApiToken.objects.filter(
                pk=api_token_id,
                credit_used_micros__lte=F("credit_limit_micros") - amount_micros,
            ).update(credit_used_micros=F("credit_used_micros") + amount_micros)
            if not reserved:
                # Raising rolls back the wallet reservation above.
                raise InsufficientCredit(
                    "the key's credit limit is reached", needed_micros=amount_micros
                )
        return Hold.objects.create(
            request_id=request_id,
            wallet_id=wallet_id,
            api_token_id=api_token_id,
            amount_micros=amount_micros,
            token_credit_micros=amount_micros if token_credit_limited else 0,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )


def hold_settle(
    *,
    request_id: str,
    wallet_id: int,
    hold_micros: int,
    cost_micros: int,
    api_token_id: int | None = None,
    token_credit_limited: bool = False,
    description: str = "",
) -> int:
    """Replace an open hold with the actual cost: one ledger entry keyed by the request id.

    Must run inside the caller's transaction (with the request log). Returns the micro-USD
    charged, which never exceeds the hold. Settling twice charges once.
    """
    now = timezone.now()
    charged = max(0, min(cost_micros, hold_micros))
    closed = Hold.objects.filter(request_id=request_id, status=Hold.Status.OPEN).update(
        status=Hold.Status.SETTLED if charged else Hold.Status.RELEASED, closed_at=now
    )
    if not closed:
        # The sweep released it (the call outlived its hold); charge what is still there.
        return _late_debit(request_id=request_id, wallet_id=wallet_id, cost_micros=charged)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE billing_wallet SET held_micros = held_micros - %s,"
            " balance_micros = balance_micros - %s WHERE id = %s RETURNING balance_micros",
            [hold_micros, charged, wallet_id],
        )
        (balance_after,) = cursor.fetchone()
    if token_credit_limited:
        ApiToken.objects.filter(pk=api_token_id).update(
            credit_used_micros=F("credit_used_micros") + (charged - hold_micros)
        )
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
    return charged


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
        "pk", "wallet_id", "api_token_id", "amount_micros", "token_credit_micros"
    )[:limit]
    for pk, wallet_id, api_token_id, amount, token_credit in expired:
        with transaction.atomic():
            # The conditional update decides who releases it: a sweep or a late settlement.
            if not Hold.objects.filter(pk=pk, status=Hold.Status.OPEN).update(
                status=Hold.Status.RELEASED, closed_at=now
            ):
                continue
            Wallet.objects.filter(pk=wallet_id).update(held_micros=F("held_micros") - amount)
            if token_credit:
                ApiToken.objects.filter(pk=api_token_id).update(
                    credit_used_micros=F("credit_used_micros") - token_credit
                )
            released += 1
    return released
