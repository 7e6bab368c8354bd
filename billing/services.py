import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, Sum
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.locks import limits_lock
from accounts.models import (
    ApiToken,
    LimitsMixin,
    Membership,
    Organization,
    QuotaReset,
    TokenGroup,
    User,
)
from accounts.scope import PERMISSIONS, Perm
from accounts.services import allowance_period_start, quota_next_reset
from billing.holds import (
    BUDGET_SQL,
    Budget,
    CallCharge,
    HoldKey,
    HoldParts,
    HoldRefusal,
    HoldRefused,
    HoldRequest,
    QuotaState,
    Reservation,
    Settlement,
    budget_from,
    budget_params,
    hold_attempts,
    hold_plan,
    hold_refused,
    reservation_of,
)
from billing.locks import wallets_lock
from billing.models import Alert, Hold, LedgerEntry, Wallet
from tokenbyte.errors import ApplicationError
from tokenbyte.money import format_usd, usd_to_micros
from usage.models import RequestLog
from usage.services import request_log_create, usage_rollup_add

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
        locked = wallets_lock([wallet.pk])
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


def wallet_adjust(
    *,
    wallet: Wallet,
    amount_micros: int,
    reason: str,
    staff: User,
    idempotency_key: str | None = None,
) -> LedgerEntry:
    """Staff correct a balance, up or down, with a reason; the entry names them."""
    reason = reason.strip()
    if not reason:
        raise ApplicationError("An adjustment needs a reason.", code="invalid")
    entry, _ = ledger_post(
        wallet=wallet,
        kind=LedgerEntry.Kind.ADJUSTMENT,
        amount_micros=amount_micros,
        idempotency_key=idempotency_key or f"adjust:{uuid.uuid4().hex}",
        description=reason,
        created_by=staff,
    )
    return entry


def wallet_low_balance_threshold_set(*, wallet: Wallet, threshold_micros: int | None) -> Wallet:
    """Set (or, with None, turn off) the balance below which the owner is alerted. A new
    threshold re-arms the alert, so a balance already under it alerts on the next debit."""
    if threshold_micros is not None and threshold_micros < 0:
        raise ApplicationError(
            "The threshold cannot be negative.", code="invalid", extra={"param": "threshold"}
        )
    wallet.low_balance_threshold_micros = threshold_micros
    wallet.low_balance_alerted_at = None
    wallet.save(update_fields=["low_balance_threshold_micros", "low_balance_alerted_at"])
    return wallet


def signup_credit_grant(*, user: User) -> LedgerEntry | None:
    """The credit a new account starts with (SIGNUP_CREDIT_USD), granted once per user whatever
    the sign-up path: the ledger's idempotency key is the user's."""
    amount = usd_to_micros(settings.SIGNUP_CREDIT_USD)
    if amount <= 0:
        return None
    entry, _ = ledger_post(
        wallet=wallet_get_or_create(user=user),
        kind=LedgerEntry.Kind.GRANT,
        amount_micros=amount,
        idempotency_key=f"signup:{user.pk}",
        description="Welcome credit",
    )
    return entry


# --- holds and settlement: the ORM backend (SQLite; billing/sql/ has the PostgreSQL twin) ---


def _reserve_row(
    model: type[LimitsMixin], pk: int, *, credit: int | None, tokens: int | None
) -> tuple[bool, bool]:
    """Conditionally add to a key's or group's counters: (credit fits, tokens fit).

    A limit removed since the relay cached the key (NULL) no longer refuses.
    """
    credit_amount, token_amount = credit or 0, tokens or 0
    credit_fits = Q(credit_limit_micros__isnull=True) | Q(
        credit_limit_micros__gte=F("credit_used_micros") + credit_amount
    )
    tokens_fit = Q(quota_tokens__isnull=True) | Q(
        quota_tokens__gte=F("quota_used_tokens") + token_amount
    )
    rows = model.objects.filter(pk=pk)
    if rows.filter(credit_fits, tokens_fit).update(
        credit_used_micros=F("credit_used_micros") + credit_amount,
        quota_used_tokens=F("quota_used_tokens") + token_amount,
    ):
        return True, True
    return (
        credit is None or rows.filter(credit_fits).exists(),
        tokens is None or rows.filter(tokens_fit).exists(),
    )


def _reserve_allowance(membership_id: int, amount: int) -> int | None:
    """Count a hold against a member's monthly allowance, if it fits; the membership the hold
    names. The relay's cached key may name a membership removed a moment ago: then nothing is
    counted (None), and the key is refused once the cache turns. The update locks the row
    until the commit."""
    rows = Membership.objects.filter(pk=membership_id)
    fits = Q(monthly_allowance_micros__isnull=True) | Q(
        monthly_allowance_micros__gte=F("allowance_used_micros") + amount
    )
    if rows.filter(fits).update(allowance_used_micros=F("allowance_used_micros") + amount):
        return membership_id
    if rows.exists():
        raise HoldRefused(HoldRefusal.MEMBER_ALLOWANCE)
    return None


def _move_allowance(membership_id: int | None, delta: int) -> None:
    if membership_id is not None and delta:
        Membership.objects.filter(pk=membership_id).update(
            allowance_used_micros=Greatest(F("allowance_used_micros") + delta, 0)
        )


def hold_acquire(
    *,
    request_id: str,
    wallet_id: int,
    amount_micros: int,
    parts: HoldParts,
    lease_seconds: int,
    model_id: str = "",
    call_type: str = "",
) -> Hold:
    """Reserve credit and tokens for one call with conditional updates: concurrent calls cannot
    overspend a wallet, a key's or a group's credit limit, a key's or a group's token quota, or
    an organization member's monthly allowance.

    Each counter is only moved `WHERE used + amount <= limit` (the wallet `WHERE balance - held
    >= amount`); a zero row count raises HoldRefused and rolls the whole reservation back. Rows
    are taken in the order of every path (hold, key, group, membership, wallet), so two holds cannot
    deadlock. Holding a request id twice (a retry) returns the first hold and moves nothing.
    """
    if amount_micros < 0:
        raise ApplicationError("a hold cannot be negative")
    existing = Hold.objects.filter(request_id=request_id).first()
    if existing is not None:
        return existing
    now = timezone.now()
    with transaction.atomic():
        # Raising inside the block rolls back whatever was reserved before.
        if parts.key_credit or parts.key_quota:
            credit_ok, tokens_ok = _reserve_row(
                ApiToken,
                parts.key_id,
                credit=amount_micros if parts.key_credit else None,
                tokens=parts.tokens if parts.key_quota else None,
            )
            if not tokens_ok:
                raise HoldRefused(HoldRefusal.KEY_QUOTA)
            if not credit_ok:
                raise HoldRefused(HoldRefusal.KEY_CREDIT)
        in_group = parts.group_credit or parts.group_quota
        if in_group:
            credit_ok, tokens_ok = _reserve_row(
                TokenGroup,
                parts.group_id,
                credit=amount_micros if parts.group_credit else None,
                tokens=parts.tokens if parts.group_quota else None,
            )
            if not tokens_ok:
                raise HoldRefused(HoldRefusal.GROUP_QUOTA)
            if not credit_ok:
                raise HoldRefused(HoldRefusal.GROUP_CREDIT)
        membership_id = None
        if parts.membership_id is not None:
            membership_id = _reserve_allowance(parts.membership_id, amount_micros)
        reserved = Wallet.objects.filter(
            pk=wallet_id, balance_micros__gte=F("held_micros") + amount_micros
        ).update(held_micros=F("held_micros") + amount_micros)
        if not reserved:
            raise HoldRefused(HoldRefusal.WALLET)
        return Hold.objects.create(
            request_id=request_id,
            wallet_id=wallet_id,
            key_id=parts.key_id,
            group_id=parts.group_id if in_group else None,
            membership_id=membership_id,
            model_id=model_id[:100],
            call_type=call_type[:24],
            amount_micros=amount_micros,
            key_credit_micros=amount_micros if parts.key_credit else 0,
            group_credit_micros=amount_micros if parts.group_credit else 0,
            tokens=parts.tokens,
            key_quota_tokens=parts.tokens if parts.key_quota else 0,
            group_quota_tokens=parts.tokens if parts.group_quota else 0,
            created_at=now,
            expires_at=now + timedelta(seconds=lease_seconds),
        )


def _budget(key: HoldKey) -> Budget:
    with connection.cursor() as cursor:
        cursor.execute(BUDGET_SQL, budget_params(key))
        return budget_from(key, cursor.fetchone())


def hold_reserve_orm(req: HoldRequest) -> Reservation:
    """Plan and take the hold of a call (billing.settlement calls it on a database thread)."""
    budget = None
    for attempt in range(hold_attempts(req)):
        if attempt:
            budget = _budget(req.key)
        plan = hold_plan(req, budget)
        try:
            hold_acquire(
                request_id=req.request_id,
                wallet_id=req.key.wallet_id,
                amount_micros=plan.amount_micros,
                parts=plan.parts,
                lease_seconds=settings.RELAY_HOLD_LEASE_SECONDS,
                model_id=req.model_id,
                call_type=req.call_type,
            )
        except HoldRefused as exc:
            refusal = exc.reason
            continue
        return reservation_of(req, plan)
    if budget is None and refusal.is_quota:
        budget = _budget(req.key)
    raise hold_refused(req, refusal, plan, budget)


def _move_counters(
    model: type[LimitsMixin], pk: int | None, *, credit_delta: int | None, tokens_delta: int | None
) -> QuotaState | None:
    """Move a key's or group's counters (None: leave that one alone); the quota after it."""
    if pk is None or (credit_delta is None and tokens_delta is None):
        return None
    rows = model.objects.filter(pk=pk)
    rows.update(
        credit_used_micros=F("credit_used_micros") + (credit_delta or 0),
        quota_used_tokens=F("quota_used_tokens") + (tokens_delta or 0),
    )
    if tokens_delta is None:
        return None
    row = rows.values_list("quota_used_tokens", "quota_tokens", "quota_alerted_percent").first()
    return QuotaState(*row) if row is not None else None


def _delta(actual: int, held: int) -> int | None:
    """What a counter moves by when a part of `held` (0 = not reserved there) becomes `actual`."""
    return actual - held if held else None


def _log_write(charge: CallCharge) -> bool | RequestLog:
    """The call's log row, first: False when the request has one already (a replay). The one
    row it replaces is the row the sweep wrote for a call whose process looked dead; then the
    row as it was is returned."""
    fields = {**charge.log, "cost_micros": charge.charge_micros}
    try:
        with transaction.atomic():
            request_log_create(**fields)
        return True
    except IntegrityError:
        lost_row = (
            RequestLog.objects.select_for_update()
            .filter(request_id=charge.request_id, error_code=PROCESS_LOST)
            .first()
        )
        if lost_row is None:
            return False
        RequestLog.objects.filter(pk=lost_row.pk).update(**fields)
        # Its count leaves the rollups at the end, with the wallet's lock held (see there).
        return lost_row


def call_settle_orm(charge: CallCharge) -> Settlement:
    """Close the hold, debit the cost, count the tokens and write the log row in one
    transaction: the ORM twin of billing_settle. Idempotent on the request id."""
    with transaction.atomic():
        written = _log_write(charge)
        if not written:
            cost = RequestLog.objects.values_list("cost_micros", flat=True).get(
                request_id=charge.request_id
            )
            return Settlement(charged_micros=cost, replayed=True)
        settlement = hold_settle(charge) if charge.held else Settlement(charged_micros=0)
        if charge.touch_last_used:
            ApiToken.objects.filter(pk=charge.key_id).update(last_used_at=charge.now)
        # Rollups last: their rows are locked after the wallet's, in every path, so two
        # settlements cannot wait on each other.
        if isinstance(written, RequestLog):
            usage_rollup_add(log=written, cost_micros=written.cost_micros, sign=-1)
        usage_rollup_add(log=charge.log, cost_micros=settlement.charged_micros)
    return settlement


def hold_settle(charge: CallCharge) -> Settlement:
    """Replace an open hold with the actual cost and tokens: one ledger entry keyed by the
    request id; the key's and group's counters get back what the hold took beyond the actual use.

    Runs inside call_settle_orm's transaction (with the log row). Charges at most the hold and
    counts at most the tokens it reserved.
    """
    charged = charge.charge_micros
    status = Hold.Status.SETTLED if charged else Hold.Status.RELEASED
    hold = Hold.objects.filter(request_id=charge.request_id).first()
    opened = Hold.objects.filter(request_id=charge.request_id, status=Hold.Status.OPEN).update(
        status=status, closed_at=charge.now
    )
    if not opened:
        # The sweep released it (the call outlived its lease); charge what is still there.
        return _late_settle(charge, hold)
    counted = max(0, min(charge.used_tokens, hold.tokens))
    key_quota = _move_counters(
        ApiToken, hold.key_id,
        credit_delta=_delta(charged, hold.key_credit_micros),
        tokens_delta=_delta(counted, hold.key_quota_tokens),
    )  # fmt: skip
    group_quota = _move_counters(
        TokenGroup, hold.group_id,
        credit_delta=_delta(charged, hold.group_credit_micros),
        tokens_delta=_delta(counted, hold.group_quota_tokens),
    )  # fmt: skip
    _move_allowance(hold.membership_id, charged - charge.hold_micros)
    wallet = Wallet.objects.filter(pk=charge.wallet_id)
    wallet.update(
        held_micros=F("held_micros") - charge.hold_micros,
        balance_micros=F("balance_micros") - charged,
    )
    balance_after, threshold, alerted_at = wallet.values_list(
        "balance_micros", "low_balance_threshold_micros", "low_balance_alerted_at"
    ).get()
    if charged:
        _usage_entry(charge, charged, balance_after)
    return Settlement(
        charged_micros=charged,
        low_balance=bool(
            charged and threshold is not None and balance_after < threshold and alerted_at is None
        ),
        key_quota=key_quota,
        group_quota=group_quota,
    )


def _usage_entry(charge: CallCharge, charged: int, balance_after: int) -> None:
    LedgerEntry.objects.create(
        wallet_id=charge.wallet_id,
        kind=LedgerEntry.Kind.USAGE,
        amount_micros=-charged,
        balance_after_micros=balance_after,
        idempotency_key=f"usage:{charge.request_id}",
        reference=charge.request_id,
        description=charge.description[:255],
        created_at=charge.now,
    )


def _late_settle(charge: CallCharge, hold: Hold | None) -> Settlement:
    """Settle a call whose hold the sweep already released: its reservations are gone, so the
    usage itself is counted on the key and group, and the wallet is charged what calls in flight
    do not hold (all of the cost or nothing)."""
    cost = charge.charge_micros
    tokens = hold.tokens if hold is not None else 0
    counted = max(0, min(charge.used_tokens, tokens))
    rows = []
    if hold is not None:
        rows = [
            (ApiToken, hold.key_id, hold.key_credit_micros, hold.key_quota_tokens),
            (TokenGroup, hold.group_id, hold.group_credit_micros, hold.group_quota_tokens),
        ]
    # Key, group, then the wallet: the order of every path.
    for model, pk, credit_held, tokens_held in rows:
        _move_counters(
            model, pk, credit_delta=cost if credit_held else None,
            tokens_delta=counted if tokens_held else None,
        )  # fmt: skip
    if not cost:
        return Settlement(charged_micros=0)
    member_id = hold.membership_id if hold is not None else None
    _move_allowance(member_id, cost)
    wallet = Wallet.objects.filter(pk=charge.wallet_id)
    if not wallet.filter(balance_micros__gte=F("held_micros") + cost).update(
        balance_micros=F("balance_micros") - cost
    ):
        for model, pk, credit_held, _ in rows:
            if credit_held:
                _move_counters(model, pk, credit_delta=-cost, tokens_delta=None)
        _move_allowance(member_id, -cost)
        RequestLog.objects.filter(request_id=charge.request_id).update(cost_micros=0)
        logger.warning("request %s could not be charged after its hold expired", charge.request_id)
        return Settlement(charged_micros=0)
    _usage_entry(charge, cost, wallet.values_list("balance_micros", flat=True).get())
    return Settlement(charged_micros=cost)


# The log row's error code for a call whose relay process stopped before settling it.
PROCESS_LOST = "relay_process_lost"


def holds_heartbeat(*, request_ids: list[str], now: datetime | None = None) -> int:
    """Extend the leases of calls this process still serves (never past the hold's TTL)."""
    if not request_ids:
        return 0
    now = now or timezone.now()
    lease = now + timedelta(seconds=settings.RELAY_HOLD_LEASE_SECONDS)
    ttl = timedelta(seconds=settings.RELAY_HOLD_TTL_SECONDS)
    extended = 0
    for hold in Hold.objects.filter(request_id__in=request_ids, status=Hold.Status.OPEN).only(
        "pk", "created_at"
    ):
        extended += Hold.objects.filter(pk=hold.pk, status=Hold.Status.OPEN).update(
            expires_at=min(lease, hold.created_at + ttl)
        )
    return extended


def holds_release_expired(*, now: datetime | None = None, limit: int = 500) -> int:
    """Release holds whose lease ran out: the process serving the call died (or lost the
    database for longer than a lease). Each gets a log row saying so, unless the call has one;
    a settlement that still arrives replaces it. Safe to run concurrently."""
    now = now or timezone.now()
    released = 0
    expired = Hold.objects.filter(status=Hold.Status.OPEN, expires_at__lt=now).values_list(
        "pk", flat=True
    )[:limit]
    for pk in expired:
        with transaction.atomic():
            # The conditional update decides who releases it: a sweep or a late settlement.
            if not Hold.objects.filter(pk=pk, status=Hold.Status.OPEN).update(
                status=Hold.Status.RELEASED, closed_at=now
            ):
                continue
            hold = Hold.objects.select_related("key", "wallet").get(pk=pk)
            # Same row order as holds and settlements: key, group, membership, wallet.
            _move_counters(
                ApiToken, hold.key_id,
                credit_delta=_delta(0, hold.key_credit_micros),
                tokens_delta=_delta(0, hold.key_quota_tokens),
            )  # fmt: skip
            _move_counters(
                TokenGroup, hold.group_id,
                credit_delta=_delta(0, hold.group_credit_micros),
                tokens_delta=_delta(0, hold.group_quota_tokens),
            )  # fmt: skip
            _move_allowance(hold.membership_id, -hold.amount_micros)
            Wallet.objects.filter(pk=hold.wallet_id).update(
                held_micros=F("held_micros") - hold.amount_micros
            )
            _process_lost_log(hold, now)
            released += 1
            logger.info("released the expired hold of %s", hold.request_id)
    return released


def _process_lost_log(hold: Hold, now: datetime) -> None:
    owner_id = hold.key.owner_id if hold.key is not None else hold.wallet.user_id
    if owner_id is None or RequestLog.objects.filter(request_id=hold.request_id).exists():
        return
    log = RequestLog.objects.create(
        request_id=hold.request_id,
        created_at=hold.created_at,
        user_id=owner_id,
        organization_id=hold.wallet.organization_id,
        api_token_id=hold.key_id,
        token_name=hold.key.name if hold.key is not None else "",
        group_id=hold.group_id,
        model_id=hold.model_id,
        call_type=hold.call_type,
        status_code=500,
        duration_ms=round((now - hold.created_at).total_seconds() * 1000),
        attempts=0,
        error_code=PROCESS_LOST,
        error_message=(
            "The relay process serving this call stopped before it could settle it; "
            "the hold was released and nothing was charged."
        ),
    )
    usage_rollup_add(log=log, cost_micros=0)


# --- quota resets: the used counters that holds and settlements move ---------------------------


def quota_held_tokens(obj: LimitsMixin) -> int:
    """Tokens that calls in flight hold against this key's or group's quota."""
    if isinstance(obj, ApiToken):
        holds = Hold.objects.filter(status=Hold.Status.OPEN, key_id=obj.pk)
        field = "key_quota_tokens"
    else:
        holds = Hold.objects.filter(status=Hold.Status.OPEN, group_id=obj.pk)
        field = "group_quota_tokens"
    return holds.aggregate(total=Sum(field))["total"] or 0


def _quota_reset_locked(
    model: type[LimitsMixin],
    pk: int,
    *,
    period_start: datetime,
    reschedule: bool = False,
    next_reset_at: datetime | None = None,
    expected_next_reset_at: datetime | None = None,
) -> bool:
    """Reset one quota under its row lock. The usage restarts at what calls in flight still hold,
    so their settlements (which swap their reservation for the actual tokens) stay exact."""
    filters = {}
    if expected_next_reset_at is not None:
        # A beat fired twice (or two workers): the second finds the schedule moved on.
        filters["quota_next_reset_at"] = expected_next_reset_at
    obj = limits_lock(model, [pk], **filters).first()
    if obj is None:
        return False
    obj.quota_used_tokens = quota_held_tokens(obj)
    obj.quota_last_reset_at = period_start
    obj.quota_alerted_percent = 0
    fields = ["quota_used_tokens", "quota_last_reset_at", "quota_alerted_percent"]
    if reschedule:
        obj.quota_next_reset_at = next_reset_at
        fields.append("quota_next_reset_at")
    obj.save(update_fields=fields)
    return True


def quota_reset(*, obj: LimitsMixin, now: datetime | None = None) -> None:
    """Reset a key's or group's token quota by hand; its reset schedule stays as it is."""
    now = now or timezone.now()
    with transaction.atomic():
        _quota_reset_locked(type(obj), obj.pk, period_start=now)
    obj.refresh_from_db(
        fields=["quota_used_tokens", "quota_last_reset_at", "quota_alerted_percent"]
    )


def quota_reset_for_owner(*, owner: User, now: datetime | None = None) -> tuple[int, int]:
    """Reset the quotas of all of a user's keys and groups that have one: (keys, groups)."""
    now = now or timezone.now()
    counts = []
    with transaction.atomic():
        for model in (ApiToken, TokenGroup):
            # pk order: two resets of one owner lock rows in the same order.
            pks = model.objects.filter(owner=owner, quota_tokens__isnull=False).order_by("pk")
            counts.append(
                sum(
                    _quota_reset_locked(model, pk, period_start=now)
                    for pk in pks.values_list("pk", flat=True)
                )
            )
    return counts[0], counts[1]


def quotas_reset_due(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Reset every scheduled quota whose period ended; returns how many were reset.

    Run every minute by Celery beat (tasks.tasks.reset_due_quotas) or the relay's in-process
    scheduler. Each reset is a conditional update on the boundary it was due at, so running it
    twice, or on two workers at once, resets each quota once.
    """
    now = now or timezone.now()
    reset = 0
    for model in (ApiToken, TokenGroup):
        due = (
            model.objects.filter(quota_next_reset_at__lte=now)
            .exclude(quota_reset=QuotaReset.MANUAL)
            .order_by("quota_next_reset_at")
            .values_list("pk", "quota_next_reset_at", "quota_reset", "owner__time_zone")[:limit]
        )
        for pk, boundary, period, time_zone in due:
            following = quota_next_reset(
                period=period, time_zone=time_zone, after=max(now, boundary)
            )
            with transaction.atomic():
                reset += _quota_reset_locked(
                    model,
                    pk,
                    period_start=boundary,
                    reschedule=True,
                    next_reset_at=following,
                    expected_next_reset_at=boundary,
                )
    return reset


def allowances_reset_due(*, now: datetime | None = None) -> int:
    """Start the new month of members' allowances, on the first in each organization's time
    zone; returns how many memberships were reset.

    Run every minute (tasks.tasks.reset_due_allowances). Like a quota reset, the count restarts
    at what the member's calls in flight still hold, so their settlements stay exact; the
    membership's row is locked, and a membership already in this period is skipped, so two runs
    at once reset it once.
    """
    now = now or timezone.now()
    reset = 0
    # One query per time zone in use, not per organization.
    zones = Organization.objects.values_list("time_zone", flat=True).distinct()
    for time_zone in zones.order_by():
        start = allowance_period_start(time_zone=time_zone, now=now)
        due = Q(allowance_period_start__lt=start) | Q(allowance_period_start__isnull=True)
        pks = Membership.objects.filter(due, organization__time_zone=time_zone)
        for pk in pks.order_by("pk").values_list("pk", flat=True):
            with transaction.atomic():
                member = Membership.objects.select_for_update().filter(due, pk=pk).first()
                if member is None:
                    continue
                held = Hold.objects.filter(status=Hold.Status.OPEN, membership_id=pk).aggregate(
                    total=Sum("amount_micros")
                )["total"]
                member.allowance_used_micros = held or 0
                member.allowance_period_start = start
                member.save(update_fields=["allowance_used_micros", "allowance_period_start"])
                reset += 1
    return reset


# --- alerts -------------------------------------------------------------------------------------


def _thresholds(obj: LimitsMixin) -> list[int]:
    values = obj.alert_thresholds if isinstance(obj.alert_thresholds, list) else []
    return sorted({v for v in values if isinstance(v, int) and 0 < v <= 100})


def quota_period_key(obj: LimitsMixin) -> str:
    """Identifies the current quota period: it starts at the last reset (or the creation)."""
    return (obj.quota_last_reset_at or obj.created_at).isoformat()


def quota_alerts_raise(
    *,
    key_id: int | None = None,
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
    if (key_id is None) == (group_id is None):
        raise ApplicationError("alert on one key or one group")
    model, pk = (ApiToken, key_id) if key_id is not None else (TokenGroup, group_id)
    now = now or timezone.now()
    created: list[Alert] = []
    with transaction.atomic():
        obj = limits_lock(model, [pk]).first()
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
        wallet = Wallet.objects.select_related("user", "organization").get(pk=wallet_id)
        balance = format_usd(wallet.balance_micros)
        threshold = format_usd(wallet.low_balance_threshold_micros)
        if wallet.organization is None:
            recipients = [wallet.user]
            message = f"Your balance is {balance}, below your alert threshold of {threshold}."
        else:
            # Everyone who can top it up: the organization's owners and admins.
            recipients = [
                m.user
                for m in wallet.organization.memberships.select_related("user")
                .filter(role__in=PERMISSIONS[Perm.TOP_UP])
                .order_by("pk")
            ]
            message = (
                f"The balance of {wallet.organization} is {balance}, below its alert "
                f"threshold of {threshold}."
            )
        alerts = [
            Alert.objects.create(
                kind=Alert.Kind.LOW_BALANCE,
                user=user,
                wallet=wallet,
                dedupe_key=f"{Alert.Kind.LOW_BALANCE}:{wallet.pk}:{user.pk}:{now.isoformat()}",
                message=message,
                created_at=now,
            )
            for user in recipients
        ]
        _queue_alert_emails(alerts)
    return alerts[0] if alerts else None


def alert_mark_read(*, alert: Alert, now: datetime | None = None) -> bool:
    """Mark one alert read (the owner saw it). Returns whether it changed; marking it again
    keeps the first read time."""
    now = now or timezone.now()
    changed = Alert.objects.filter(pk=alert.pk, read_at__isnull=True).update(read_at=now)
    if changed:
        alert.read_at = now
    else:
        alert.refresh_from_db(fields=["read_at"])
    return bool(changed)


SEND_ALERT_EMAIL = "tasks.tasks.send_alert_email"


def _queue_alert_emails(alerts: list[Alert]) -> None:
    # Queued by name: tasks import their services, never the other way round. The Celery app
    # is loaded only here (a relay process has no use for it until an alert fires).
    from tokenbyte.celery import task_queue

    for alert in alerts:
        # After the commit: the worker must find the row, and a rolled-back alert sends nothing.
        # Robust: a broker that is down is logged and leaves the alert unsent (emailed_at empty)
        # rather than failing the caller after its alerts are committed.
        transaction.on_commit(lambda pk=alert.pk: task_queue(SEND_ALERT_EMAIL, pk), robust=True)


# The User field that switches each kind of alert email on and off (Profile).
ALERT_EMAIL_SWITCHES = {
    Alert.Kind.TOKEN_QUOTA: "notify_quota_alerts",
    Alert.Kind.GROUP_QUOTA: "notify_quota_alerts",
    Alert.Kind.LOW_BALANCE: "notify_low_balance",
}


def alert_email_send(*, alert_id: int) -> bool:
    """Email one alert to its owner, once. Returns whether an email went out.

    Running it again after a success sends nothing; if sending fails, emailed_at stays empty and
    the task's retry sends it.
    """
    alert = Alert.objects.select_related("user").filter(pk=alert_id).first()
    if alert is None or alert.emailed_at is not None:
        return False
    if not getattr(alert.user, ALERT_EMAIL_SWITCHES[alert.kind]):
        # The owner turned these emails off in Profile: the alert stays listed in the console,
        # unsent (emailed_at empty is the truth), and returning without an error means the task
        # is not retried.
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
