import uuid

from django.db import IntegrityError, transaction
from django.db.models import F

from accounts.models import Organization, User
from billing.models import LedgerEntry, Wallet
from tokenbyte.errors import ApplicationError


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
