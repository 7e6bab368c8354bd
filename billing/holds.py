"""What a call holds before it goes upstream, and what it hands over to be settled.

The planner decides the hold (the worst case the call may cost and the tokens it may use, never
more than the key's per-request cap and what its budgets allow); the backends (services.py for
the ORM, sql_backend.py for PostgreSQL) take it with conditional updates, and
billing.settlement is the one entry point choosing between them. Every refusal is a HoldRefused.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Protocol

from accounts.models import ApiToken, Membership, TokenGroup
from billing.models import Wallet
from tokenbyte.errors import ApplicationError
from tokenbyte.money import TOKENS_PER_PRICE_UNIT, ceil_div, format_usd


class HoldRefusal(IntEnum):
    """Why a hold was refused. The SQL function billing_hold returns the first five numbers."""

    WALLET = 1
    KEY_CREDIT = 2
    KEY_QUOTA = 3
    GROUP_QUOTA = 4
    GROUP_CREDIT = 5
    PER_REQUEST_CAP = 6
    NO_WALLET = 7
    MEMBER_ALLOWANCE = 8  # billing_hold returns it too (after the first five)

    @property
    def is_quota(self) -> bool:
        return self in (HoldRefusal.KEY_QUOTA, HoldRefusal.GROUP_QUOTA)


REFUSAL_CODES = {
    HoldRefusal.KEY_QUOTA: "token_quota_exceeded",
    HoldRefusal.GROUP_QUOTA: "token_quota_exceeded",
    HoldRefusal.PER_REQUEST_CAP: "per_request_cap_exceeded",
    HoldRefusal.MEMBER_ALLOWANCE: "member_allowance_exceeded",
}


class HoldRefused(ApplicationError):
    """The one refusal of a hold (a 403 on the relay): nothing was reserved.

    `exhausted`: a token quota that cannot take even the smallest call any more (the relay then
    checks its 100 % alert); `smallest_call_tokens` is that smallest call.
    """

    def __init__(
        self,
        reason: HoldRefusal,
        message: str = "",
        *,
        exhausted: bool = False,
        smallest_call_tokens: int = 0,
    ) -> None:
        super().__init__(
            message or f"hold refused: {reason.name.lower()}",
            code=REFUSAL_CODES.get(reason, "insufficient_quota"),
        )
        self.reason = reason
        self.exhausted = exhausted
        self.smallest_call_tokens = smallest_call_tokens


class HoldKey(Protocol):
    """What the planner reads of an API key (the relay's cached KeyInfo has it)."""

    key_id: int
    wallet_id: int | None
    group_id: int | None
    group_name: str
    max_cost_per_request_micros: int | None
    quota_tokens: int | None
    group_quota_tokens: int | None
    # An organization key: its owner's membership, whose monthly allowance (None: no cap) every
    # call of the member's keys counts against.
    membership_id: int | None
    allowance_micros: int | None

    @property
    def credit_limited(self) -> bool: ...

    @property
    def quota_limited(self) -> bool: ...

    @property
    def group_credit_limited(self) -> bool: ...

    @property
    def group_quota_limited(self) -> bool: ...


class Prices(Protocol):
    input_price: int  # micro-USD per 1M tokens
    output_price: int  # micro-USD per 1M tokens


class CachePrices(Prices, Protocol):
    cache_write_price: int  # micro-USD per 1M prompt tokens written to the provider's cache


@dataclass(frozen=True, slots=True)
class CacheWritingPrices:
    """The hold's prices for a call that may write the provider's prompt cache: any prompt
    token may be a cache write, so the prompt is held at the dearer of the two prices."""

    input_price: int
    output_price: int


def prices_with_cache_writes(prices: CachePrices) -> Prices:
    if prices.cache_write_price <= prices.input_price:
        return prices
    return CacheWritingPrices(prices.cache_write_price, prices.output_price)


def hold_micros_for(prices: Prices, prompt_tokens: int, output_tokens: int) -> int:
    """Worst-case cost, micro-USD, of a call with this prompt and this many output tokens."""
    return ceil_div(
        prompt_tokens * prices.input_price + output_tokens * prices.output_price,
        TOKENS_PER_PRICE_UNIT,
    )


def hold_micros_for_units(unit_price_micros: int, units: int, units_per_price: int = 1) -> int:
    """Cost, micro-USD, of `units` of a unit-priced call (images, seconds, characters, requests).

    `unit_price_micros` is the price of `units_per_price` units: 1 for a price per image or
    request, 1_000 when seconds are counted in milliseconds, 1_000_000 for a price per 1M
    characters. Rounded up, as every cost is.
    """
    return ceil_div(units * unit_price_micros, units_per_price)


def affordable_output_tokens(prices: Prices, prompt_tokens: int, budget_micros: int, n: int) -> int:
    """The most output tokens (per choice) that `budget_micros` covers after the prompt."""
    left = budget_micros * TOKENS_PER_PRICE_UNIT - prompt_tokens * prices.input_price
    if left < 0:
        return 0
    if prices.output_price == 0:
        return 1 << 30
    return left // (prices.output_price * n)


@dataclass(frozen=True, slots=True)
class HoldRequest:
    request_id: str
    key: HoldKey
    prices: Prices
    model_id: str
    call_type: str
    prompt_tokens: int  # our estimate, margin included
    max_tokens: int | None  # what the client asked for, per choice
    n: int
    default_max_tokens: int
    has_output: bool = True
    # Unit-priced calls (media): the worst case, already priced (hold_micros_for_units); the
    # token fields are then what the call counts against token quotas (0 for most media).
    fixed_micros: int | None = None

    @property
    def needs_budget(self) -> bool:
        return self.max_tokens is None

    def tokens_for(self, output_tokens: int) -> int:
        return self.prompt_tokens + output_tokens * self.n

    @property
    def smallest_call_tokens(self) -> int:
        return self.tokens_for(1 if self.has_output else 0)


@dataclass(frozen=True, slots=True)
class Reservation:
    hold_micros: int
    # The max output tokens to send upstream when the client did not set one (None: keep theirs).
    max_tokens: int | None
    # Tokens held against the key's and group's quotas: prompt estimate + max output × n.
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class HoldParts:
    """What a hold reserves besides the wallet credit: the flags say which counters it moves."""

    tokens: int = 0
    key_id: int | None = None
    group_id: int | None = None
    key_credit: bool = False
    key_quota: bool = False
    group_credit: bool = False
    group_quota: bool = False
    # The member whose monthly allowance counts the call (the whole amount), or None.
    membership_id: int | None = None


def hold_parts_of(key: HoldKey, tokens: int = 0, *, quotas: bool = True) -> HoldParts:
    """The counters a call of this key moves besides the wallet (token quotas only when
    `quotas`: a call that uses no tokens leaves them alone)."""
    return HoldParts(
        tokens=tokens,
        key_id=key.key_id,
        group_id=key.group_id,
        key_credit=key.credit_limited,
        key_quota=quotas and key.quota_limited,
        group_credit=key.group_credit_limited,
        group_quota=quotas and key.group_quota_limited,
        membership_id=key.membership_id,
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """One attempt at a hold: the amount, the max output tokens it covers, and the counters."""

    amount_micros: int
    max_tokens: int
    parts: HoldParts

    @property
    def tokens(self) -> int:
        return self.parts.tokens


WALLET_SHORT = "the balance cannot cover it"
CREDIT_LIMIT_REACHED = "the key's credit limit is reached"
GROUP_CREDIT_LIMIT_REACHED = "the token group's credit limit is reached"
ALLOWANCE_REACHED = "your monthly allowance in this organization is reached"
PER_REQUEST_CAP = "the key's per-request cap allows less"
MONEY_REASONS = {
    HoldRefusal.WALLET: WALLET_SHORT,
    HoldRefusal.KEY_CREDIT: CREDIT_LIMIT_REACHED,
    HoldRefusal.GROUP_CREDIT: GROUP_CREDIT_LIMIT_REACHED,
    HoldRefusal.MEMBER_ALLOWANCE: ALLOWANCE_REACHED,
}


@dataclass(frozen=True, slots=True)
class Budget:
    """What is left for the key right now: None where it has no such limit."""

    wallet_micros: int
    key_credit_micros: int | None = None
    group_credit_micros: int | None = None
    key_tokens: int | None = None
    group_tokens: int | None = None
    allowance_micros: int | None = None

    def money(self, key: HoldKey) -> tuple[int, str]:
        """What one call of this key may spend, micro-USD, and what sets that amount."""
        options = [(self.wallet_micros, WALLET_SHORT)]
        if self.key_credit_micros is not None:
            options.append((self.key_credit_micros, CREDIT_LIMIT_REACHED))
        if self.group_credit_micros is not None:
            options.append((self.group_credit_micros, GROUP_CREDIT_LIMIT_REACHED))
        if self.allowance_micros is not None:
            options.append((self.allowance_micros, ALLOWANCE_REACHED))
        if key.max_cost_per_request_micros is not None:
            options.append((key.max_cost_per_request_micros, PER_REQUEST_CAP))
        amount, reason = min(options, key=lambda option: option[0])
        return max(0, amount), reason

    def tokens(self) -> tuple[int | None, HoldRefusal]:
        """The tokens left of the tighter quota (None: no quota) and whose it is."""
        if self.key_tokens is not None and (
            self.group_tokens is None or self.key_tokens <= self.group_tokens
        ):
            return self.key_tokens, HoldRefusal.KEY_QUOTA
        return self.group_tokens, HoldRefusal.GROUP_QUOTA

    def tokens_of(self, refusal: HoldRefusal) -> int | None:
        return self.key_tokens if refusal == HoldRefusal.KEY_QUOTA else self.group_tokens


def _budget_sql() -> str:
    wallet, key, group = Wallet._meta.db_table, ApiToken._meta.db_table, TokenGroup._meta.db_table
    member = Membership._meta.db_table
    return (
        f"SELECT (SELECT balance_micros - held_micros FROM {wallet} WHERE id = %s),"  # noqa: S608
        " k.credit_limit_micros - k.credit_used_micros, k.quota_tokens - k.quota_used_tokens,"
        f" (SELECT credit_limit_micros - credit_used_micros FROM {group} WHERE id = %s),"
        f" (SELECT quota_tokens - quota_used_tokens FROM {group} WHERE id = %s),"
        f" (SELECT monthly_allowance_micros - allowance_used_micros FROM {member} WHERE id = %s)"
        f" FROM {key} k WHERE k.id = %s"
    )


# What is left for a key: wallet, key credit, key quota, group credit, group quota, member
# allowance (one trip).
BUDGET_SQL = _budget_sql()


def budget_params(key: HoldKey) -> list:
    return [key.wallet_id, key.group_id, key.group_id, key.membership_id, key.key_id]


def budget_from(key: HoldKey, row: tuple | None) -> Budget:
    wallet, key_credit, key_tokens, group_credit, group_tokens, allowance = row or (
        0, None, None, None, None, None
    )  # fmt: skip
    return Budget(
        wallet_micros=wallet or 0,
        key_credit_micros=key_credit if key.credit_limited else None,
        group_credit_micros=group_credit if key.group_credit_limited else None,
        key_tokens=key_tokens if key.quota_limited else None,
        group_tokens=group_tokens if key.group_quota_limited else None,
        allowance_micros=allowance if key.allowance_micros is not None else None,
    )


def _money_refused(
    needed: int, hint: str, reason: HoldRefusal, *, fixed: bool = False
) -> HoldRefused:
    if hint.startswith(ALLOWANCE_REACHED):
        # The member cannot top up the organization's wallet: the allowance is the limit.
        return HoldRefused(
            HoldRefusal.MEMBER_ALLOWANCE,
            f"Monthly allowance exceeded: this request needs up to {format_usd(needed)} and "
            f"{hint}. An owner or admin of the organization can raise it; it restarts on the "
            "first of the month.",
        )
    # A call priced per unit (images, audio) has no max_tokens to lower.
    advice = "Top up your balance." if fixed else "Top up your balance or lower max_tokens."
    return HoldRefused(
        reason,
        f"Insufficient credit: this request needs up to {format_usd(needed)} and {hint}. {advice}",
    )


def quota_refused(
    req: HoldRequest, refusal: HoldRefusal, needed: int, left: int | None
) -> HoldRefused:
    key = req.key
    if refusal == HoldRefusal.KEY_QUOTA:
        quota = f"{key.quota_tokens:,}" if key.quota_tokens is not None else "its"
        whose = f"this API key's token quota of {quota} tokens"
    else:
        quota = f"{key.group_quota_tokens:,}" if key.group_quota_tokens is not None else "its"
        whose = f"the token quota of group '{key.group_name}' ({quota} tokens)"
    exhausted = left is not None and left < req.smallest_call_tokens
    if exhausted:
        message = (
            f"Token quota exceeded: {whose} is used up ({max(0, left):,} left). "
            "Calls resume when it resets or is raised."
        )
    elif left is not None:
        message = (
            f"Token quota exceeded: this request needs up to {needed:,} tokens (prompt and "
            f"max_tokens) and {left:,} are left of {whose}. Lower max_tokens."
        )
    else:
        message = (
            f"Token quota exceeded: this request needs up to {needed:,} tokens (prompt and "
            f"max_tokens), more than is left of {whose}. Lower max_tokens."
        )
    return HoldRefused(
        refusal, message, exhausted=exhausted, smallest_call_tokens=req.smallest_call_tokens
    )


def _plan(req: HoldRequest, amount: int, max_tokens: int, tokens: int) -> Plan:
    return Plan(amount_micros=amount, max_tokens=max_tokens, parts=hold_parts_of(req.key, tokens))


def hold_plan(req: HoldRequest, budget: Budget | None) -> Plan:
    """What to hold for a call, or a HoldRefused.

    With max_tokens given, the hold covers it exactly (within the per-request cap). Without, the
    planner picks the largest max_tokens that the budget covers (credit and token quotas), up to
    default_max_tokens, and the relay sends that upstream, so no call can cost more than its
    hold or use more tokens than it reserved. `budget` None means not read yet: plan for the
    most the per-request cap allows, and let the conditional hold say if it is there.
    """
    prices, key = req.prices, req.key
    if key.wallet_id is None:
        needed = req.fixed_micros
        if needed is None:
            needed = hold_micros_for(prices, req.prompt_tokens, req.n)
        raise _money_refused(
            needed, "there is no wallet", HoldRefusal.NO_WALLET, fixed=req.fixed_micros is not None
        )
    if req.max_tokens is not None:
        amount = req.fixed_micros
        if amount is None:
            amount = hold_micros_for(prices, req.prompt_tokens, req.max_tokens * req.n)
        cap = key.max_cost_per_request_micros
        if cap is not None and amount > cap:
            raise HoldRefused(
                HoldRefusal.PER_REQUEST_CAP,
                f"This request could cost up to {format_usd(amount)}, over this key's "
                f"per-request cap of {format_usd(cap)}."
                + ("" if req.fixed_micros is not None else " Lower max_tokens."),
            )
        tokens = req.tokens_for(req.max_tokens)
        if budget is not None:
            for refusal in (HoldRefusal.KEY_QUOTA, HoldRefusal.GROUP_QUOTA):
                left = budget.tokens_of(refusal)
                if left is not None and tokens > left:
                    raise quota_refused(req, refusal, tokens, left)
            money, reason = budget.money(key)
            if amount > money:
                raise _money_refused(
                    amount, reason, HoldRefusal.WALLET, fixed=req.fixed_micros is not None
                )
        return _plan(req, amount, req.max_tokens, tokens)
    money, reason = (None, "") if budget is None else budget.money(key)
    if budget is None:
        money = key.max_cost_per_request_micros
    chosen = req.default_max_tokens
    if money is not None:
        chosen = min(chosen, affordable_output_tokens(prices, req.prompt_tokens, money, req.n))
    tokens_left, scope = (None, HoldRefusal.KEY_QUOTA) if budget is None else budget.tokens()
    if tokens_left is not None:
        by_quota = (tokens_left - req.prompt_tokens) // req.n
        if by_quota < 1:
            raise quota_refused(req, scope, req.smallest_call_tokens, tokens_left)
        chosen = min(chosen, by_quota)
    if chosen < 1:
        needed = hold_micros_for(prices, req.prompt_tokens, req.n)
        hint = f"{format_usd(money or 0)} is available to this key"
        if reason in (CREDIT_LIMIT_REACHED, GROUP_CREDIT_LIMIT_REACHED, ALLOWANCE_REACHED):
            hint = f"{reason}: {format_usd(money or 0)} is left"
        raise _money_refused(needed, hint, HoldRefusal.WALLET)
    amount = hold_micros_for(prices, req.prompt_tokens, chosen * req.n)
    return _plan(req, amount, chosen, req.tokens_for(chosen))


def hold_attempts(req: HoldRequest) -> int:
    """Without max_tokens: first an optimistic hold, then one with the budget read."""
    return 2 if req.needs_budget else 1


def hold_refused(
    req: HoldRequest, refusal: HoldRefusal, plan: Plan, budget: Budget | None
) -> HoldRefused:
    """The refusal of a hold that the backend did not take (a quota's says what is left)."""
    if refusal.is_quota:
        left = budget.tokens_of(refusal) if budget is not None else None
        return quota_refused(req, refusal, plan.tokens, left)
    return _money_refused(
        plan.amount_micros, MONEY_REASONS[refusal], refusal, fixed=req.fixed_micros is not None
    )


def reservation_of(req: HoldRequest, plan: Plan) -> Reservation:
    return Reservation(
        hold_micros=plan.amount_micros,
        max_tokens=plan.max_tokens if req.needs_budget else None,
        tokens=plan.tokens,
    )


@dataclass(frozen=True)
class CallCharge:
    """A finished call, handed to billing to settle: the hold becomes the cost, the log row is
    written, all in one transaction. Idempotent on request_id (retries, the outbox)."""

    request_id: str
    wallet_id: int | None
    key_id: int
    held: bool
    hold_micros: int
    cost_micros: int
    used_tokens: int
    touch_last_used: bool
    description: str
    now: datetime
    # The request log row's columns by attname, cost excluded: the settlement decides it.
    log: dict

    @property
    def charge_micros(self) -> int:
        """What the settlement charges: the cost, never more than the hold."""
        return max(0, min(self.cost_micros, self.hold_micros))


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
    # This request was settled before (a retry whose first try had committed): nothing moved.
    replayed: bool = False
    # The database was away: the settlement waits in the outbox (billing/outbox.py).
    queued: bool = False
