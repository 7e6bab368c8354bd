"""The two database phases of a relayed call: reserve before upstream, settle after.

Both run on the relay's database threads (relay.db.run) and each is one transaction.
"""

import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import ApiToken
from billing.services import (
    HoldParts,
    HoldRefusal,
    HoldRefused,
    Settlement,
    hold_acquire,
    hold_settle,
)
from relay import metering
from relay.http import RelayError
from relay.keys import KeyInfo
from relay.routing import ModelInfo
from tokenbyte.money import format_usd
from usage.services import request_log_create

# token id -> monotonic time of this process's last last_used_at write.
_last_used_written: dict[int, float] = {}
LAST_USED_INTERVAL_SECONDS = 60


@dataclass
class Reservation:
    hold_micros: int
    # The max output tokens to send upstream when the client did not set one (None: keep theirs).
    max_tokens: int | None
    # Tokens held against the key's and group's quotas: prompt estimate + max output × n.
    tokens: int = 0


@dataclass(frozen=True)
class HoldRequest:
    request_id: str
    key: KeyInfo
    model: ModelInfo
    prompt_tokens: int  # our estimate, margin included
    max_tokens: int | None  # what the client asked for, per choice
    n: int
    default_max_tokens: int
    has_output: bool = True

    @property
    def needs_budget(self) -> bool:
        return self.max_tokens is None

    def tokens_for(self, output_tokens: int) -> int:
        return self.prompt_tokens + output_tokens * self.n

    @property
    def smallest_call_tokens(self) -> int:
        return self.tokens_for(1 if self.has_output else 0)


@dataclass(frozen=True)
class Budget:
    """What is left for the key right now: None where it has no such limit."""

    wallet_micros: int
    key_credit_micros: int | None = None
    group_credit_micros: int | None = None
    key_tokens: int | None = None
    group_tokens: int | None = None

    def money(self, key: KeyInfo) -> tuple[int, str]:
        """What one call of this key may spend, micro-USD, and what sets that amount."""
        options = [(self.wallet_micros, WALLET_SHORT)]
        if self.key_credit_micros is not None:
            options.append((self.key_credit_micros, CREDIT_LIMIT_REACHED))
        if self.group_credit_micros is not None:
            options.append((self.group_credit_micros, GROUP_CREDIT_LIMIT_REACHED))
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


WALLET_SHORT = "the balance cannot cover it"
CREDIT_LIMIT_REACHED = "the key's credit limit is reached"
GROUP_CREDIT_LIMIT_REACHED = "the token group's credit limit is reached"
PER_REQUEST_CAP = "the key's per-request cap allows less"
MONEY_REFUSALS = {
    HoldRefusal.WALLET: WALLET_SHORT,
    HoldRefusal.KEY_CREDIT: CREDIT_LIMIT_REACHED,
    HoldRefusal.GROUP_CREDIT: GROUP_CREDIT_LIMIT_REACHED,
}

# What is left for a key: wallet, key credit, key quota, group credit, group quota (one trip).
BUDGET_SQL = (
    "SELECT (SELECT balance_micros - held_micros FROM billing_wallet WHERE id = %s),"
    " t.credit_limit_micros - t.credit_used_micros, t.quota_tokens - t.quota_used_tokens,"
    " (SELECT credit_limit_micros - credit_used_micros FROM accounts_tokengroup WHERE id = %s),"
    " (SELECT quota_tokens - quota_used_tokens FROM accounts_tokengroup WHERE id = %s)"
    " FROM accounts_apitoken t WHERE t.id = %s"
)


def budget_params(key: KeyInfo) -> list:
    return [key.wallet_id, key.group_id, key.group_id, key.token_id]


def budget_from(key: KeyInfo, row: tuple | None) -> Budget:
    wallet, key_credit, key_tokens, group_credit, group_tokens = row or (0, None, None, None, None)
    return Budget(
        wallet_micros=wallet or 0,
        key_credit_micros=key_credit if key.credit_limited else None,
        group_credit_micros=group_credit if key.group_credit_limited else None,
        key_tokens=key_tokens if key.quota_limited else None,
        group_tokens=group_tokens if key.group_quota_limited else None,
    )


class QuotaRefused(RelayError):
    """403 token_quota_exceeded; `exhausted` when not even the smallest call fits any more."""

    def __init__(
        self, message: str, *, scope: HoldRefusal, exhausted: bool, smallest_call_tokens: int
    ) -> None:
        super().__init__(403, message, code="token_quota_exceeded", type="insufficient_quota")
        self.scope = scope
        self.exhausted = exhausted
        self.smallest_call_tokens = smallest_call_tokens


def _refuse(needed: int, budget_hint: str) -> RelayError:
    return RelayError(
        403,
        f"Insufficient credit: this request needs up to {format_usd(needed)} "
        f"and {budget_hint}. Top up your balance or lower max_tokens.",
        code="insufficient_quota",
        type="insufficient_quota",
    )


def quota_refused(
    req: HoldRequest, refusal: HoldRefusal, needed: int, left: int | None
) -> QuotaRefused:
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
    return QuotaRefused(
        message,
        scope=refusal,
        exhausted=exhausted,
        smallest_call_tokens=req.smallest_call_tokens,
    )


def plan_hold(req: HoldRequest, budget: Budget | None) -> tuple[int, int, int]:
    """(hold in micro-USD, max output tokens per choice, tokens held) for a call, or a 403.

    With max_tokens given, the hold covers it exactly (within the per-request cap). Without, the
    relay picks the largest max_tokens that the budget covers (credit and token quotas), up to
    default_max_tokens, and sends that upstream, so no call can cost more than its hold or use
    more tokens than it reserved. `budget` None means not read yet: plan for the most the
    per-request cap allows, and let the conditional hold say if it is there.
    """
    model, key = req.model, req.key
    if key.wallet_id is None:
        raise _refuse(metering.hold_for(model, req.prompt_tokens, req.n), "there is no wallet")
    if req.max_tokens is not None:
        amount = metering.hold_for(model, req.prompt_tokens, req.max_tokens * req.n)
        cap = key.max_cost_per_request_micros
        if cap is not None and amount > cap:
            raise RelayError(
                403,
                f"This request could cost up to {format_usd(amount)}, over this key's "
                f"per-request cap of {format_usd(cap)}. Lower max_tokens.",
                code="per_request_cap_exceeded",
            )
        tokens = req.tokens_for(req.max_tokens)
        if budget is not None:
            for refusal in (HoldRefusal.KEY_QUOTA, HoldRefusal.GROUP_QUOTA):
                left = budget.tokens_of(refusal)
                if left is not None and tokens > left:
                    raise quota_refused(req, refusal, tokens, left)
            money, reason = budget.money(key)
            if amount > money:
                raise _refuse(amount, reason)
        return amount, req.max_tokens, tokens
    money, reason = (None, "") if budget is None else budget.money(key)
    if budget is None:
        money = key.max_cost_per_request_micros
    chosen = req.default_max_tokens
    if money is not None:
        chosen = min(
            chosen, metering.affordable_output_tokens(model, req.prompt_tokens, money, req.n)
        )
    tokens_left, scope = (None, HoldRefusal.KEY_QUOTA) if budget is None else budget.tokens()
    if tokens_left is not None:
        by_quota = (tokens_left - req.prompt_tokens) // req.n
        if by_quota < 1:
            raise quota_refused(req, scope, req.smallest_call_tokens, tokens_left)
        chosen = min(chosen, by_quota)
    if chosen < 1:
        needed = metering.hold_for(model, req.prompt_tokens, req.n)
        hint = f"{format_usd(money or 0)} is available to this key"
        if reason in (CREDIT_LIMIT_REACHED, GROUP_CREDIT_LIMIT_REACHED):
            hint = f"{reason}: {format_usd(money or 0)} is left"
        raise _refuse(needed, hint)
    amount = metering.hold_for(model, req.prompt_tokens, chosen * req.n)
    return amount, chosen, req.tokens_for(chosen)


def refused(
    req: HoldRequest, refusal: HoldRefusal, amount: int, tokens: int, budget: Budget | None
) -> RelayError:
    """The 403 of a hold that did not go through."""
    if refusal in (HoldRefusal.KEY_QUOTA, HoldRefusal.GROUP_QUOTA):
        left = budget.tokens_of(refusal) if budget is not None else None
        return quota_refused(req, refusal, tokens, left)
    return _refuse(amount, MONEY_REFUSALS[refusal])


def hold_parts(key: KeyInfo, tokens: int) -> HoldParts:
    return HoldParts(
        tokens=tokens,
        api_token_id=key.token_id,
        group_id=key.group_id,
        token_credit=key.credit_limited,
        token_quota=key.quota_limited,
        group_credit=key.group_credit_limited,
        group_quota=key.group_quota_limited,
    )


def _budget(key: KeyInfo) -> Budget:
    with connection.cursor() as cursor:
        cursor.execute(BUDGET_SQL, budget_params(key))
        return budget_from(key, cursor.fetchone())


def hold_attempts(req: HoldRequest) -> int:
    """Without max_tokens: first an optimistic hold, then one with the budget read."""
    return 2 if req.needs_budget else 1


def needs_budget_for_message(refusal: HoldRefusal) -> bool:
    """A quota refusal says how many tokens are left (and whether the quota is used up)."""
    return refusal in (HoldRefusal.KEY_QUOTA, HoldRefusal.GROUP_QUOTA)


def reserve(req: HoldRequest) -> Reservation:
    """Hold the worst-case cost and tokens of the call with the ORM (the path for SQLite)."""
    budget = None
    for attempt in range(hold_attempts(req)):
        if attempt:
            budget = _budget(req.key)
        amount, chosen, tokens = plan_hold(req, budget)
        try:
            hold_acquire(
                request_id=req.request_id,
                wallet_id=req.key.wallet_id,
                amount_micros=amount,
                parts=hold_parts(req.key, tokens),
                ttl_seconds=settings.RELAY_HOLD_TTL_SECONDS,
            )
        except HoldRefused as exc:
            refusal = exc.refusal
            continue
        return Reservation(
            hold_micros=amount, max_tokens=chosen if req.needs_budget else None, tokens=tokens
        )
    if budget is None and needs_budget_for_message(refusal):
        budget = _budget(req.key)
    raise refused(req, refusal, amount, tokens, budget)


@dataclass
class Outcome:
    """What happened to a call, for settlement and its log row."""

    request_id: str
    key: KeyInfo
    model_id: str
    call_type: str
    endpoint: str
    is_stream: bool
    client_ip: str | None
    request_params: dict
    hold_micros: int = 0
    status_code: int = 200
    usage: metering.Usage = field(default_factory=metering.Usage)
    cost_micros: int = 0
    upstream_model: str = ""
    channel_id: int | None = None
    channel_name: str = ""
    attempts: int = 0
    error_code: str = ""
    error_message: str = ""
    response_excerpt: str = ""
    started: float = field(default_factory=time.monotonic)
    ttft_ms: int | None = None
    # A hold was taken (and must be settled or released).
    held: bool = False

    @property
    def used_tokens(self) -> int:
        return self.usage.prompt_tokens + self.usage.completion_tokens


def last_used_due(token_id: int) -> bool:
    """At most one last_used_at write a minute per key and process."""
    now = time.monotonic()
    if now - _last_used_written.get(token_id, float("-inf")) >= LAST_USED_INTERVAL_SECONDS:
        _last_used_written[token_id] = now
        return True
    return False


def log_row(outcome: Outcome, now) -> dict:
    """The request log row's columns (by attname), cost excluded: the settlement decides it."""
    duration_ms = round((time.monotonic() - outcome.started) * 1000)
    key = outcome.key
    return {
        "request_id": outcome.request_id,
        "created_at": now - timedelta(milliseconds=duration_ms),
        "user_id": key.owner_id,
        "organization_id": key.organization_id,
        "api_token_id": key.token_id,
        "token_name": key.name,
        "group_id": key.group_id,
        "group_name": key.group_name,
        "model_id": outcome.model_id,
        "upstream_model": outcome.upstream_model,
        "call_type": outcome.call_type,
        "endpoint": outcome.endpoint,
        "is_stream": outcome.is_stream,
        "status_code": outcome.status_code,
        "duration_ms": duration_ms,
        "ttft_ms": outcome.ttft_ms,
        "prompt_tokens": outcome.usage.prompt_tokens,
        "completion_tokens": outcome.usage.completion_tokens,
        "cached_tokens": outcome.usage.cached_tokens,
        "channel_id": outcome.channel_id,
        "channel_name": outcome.channel_name,
        "attempts": outcome.attempts,
        "error_code": outcome.error_code,
        "error_message": outcome.error_message[:2000],
        "client_ip": outcome.client_ip,
        "request_params": outcome.request_params,
        "response_excerpt": outcome.response_excerpt[:500],
    }


def settle(outcome: Outcome) -> Settlement:
    """Close the hold, debit the cost, count the tokens and write the log row in one
    transaction (ORM path)."""
    key = outcome.key
    now = timezone.now()
    row = log_row(outcome, now)
    settlement = Settlement(charged_micros=0)
    with transaction.atomic():
        if outcome.held:
            settlement = hold_settle(
                request_id=outcome.request_id,
                wallet_id=key.wallet_id,
                hold_micros=outcome.hold_micros,
                cost_micros=outcome.cost_micros,
                used_tokens=outcome.used_tokens,
                description=description_of(outcome),
            )
        if last_used_due(key.token_id):
            ApiToken.objects.filter(pk=key.token_id).update(last_used_at=now)
        request_log_create(**row, cost_micros=settlement.charged_micros)
    return settlement


def description_of(outcome: Outcome) -> str:
    return f"{outcome.model_id} via {outcome.key.name}"
