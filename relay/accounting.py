"""The two database phases of a relayed call: reserve before upstream, settle after.

Both run on the relay's database threads (relay.db.run) and each is one transaction.
"""

import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import ApiToken
from billing.services import InsufficientCredit, hold_acquire, hold_settle
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


@dataclass(frozen=True)
class HoldRequest:
    request_id: str
    key: KeyInfo
    model: ModelInfo
    prompt_tokens: int  # our estimate, margin included
    max_tokens: int | None  # what the client asked for, per choice
    n: int
    default_max_tokens: int

    @property
    def needs_budget(self) -> bool:
        return self.max_tokens is None


def budget_from(key: KeyInfo, available: int | None, credit_left: int | None) -> int:
    """What this key may spend on one call, micro-USD: wallet, credit limit, per-call cap."""
    budget = available or 0
    if key.credit_limited and credit_left is not None:
        budget = min(budget, credit_left)
    if key.max_cost_per_request_micros is not None:
        budget = min(budget, key.max_cost_per_request_micros)
    return max(0, budget)


def _refuse(needed: int, budget_hint: str) -> RelayError:
    return RelayError(
        403,
        f"Insufficient credit: this request needs up to {format_usd(needed)} "
        f"and {budget_hint}. Top up your balance or lower max_tokens.",
        code="insufficient_quota",
        type="insufficient_quota",
    )


def plan_hold(req: HoldRequest, budget: int | None) -> tuple[int, int]:
    """(hold in micro-USD, max output tokens per choice) for a call, or a 403.

    With max_tokens given, the hold covers it exactly (within the per-request cap). Without, the
    relay picks the largest max_tokens that `budget` covers, up to default_max_tokens, and sends
    that upstream, so no call can cost more than its hold. `budget` None means not read yet: plan
    for the most the per-request cap allows, and let the conditional hold say if it is there.
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
        return amount, req.max_tokens
    if budget is None:
        budget = key.max_cost_per_request_micros
    chosen = req.default_max_tokens
    if budget is not None:
        chosen = min(
            chosen, metering.affordable_output_tokens(model, req.prompt_tokens, budget, req.n)
        )
    if chosen < 1:
        needed = metering.hold_for(model, req.prompt_tokens, req.n)
        raise _refuse(needed, f"{format_usd(budget or 0)} is available to this key")
    return metering.hold_for(model, req.prompt_tokens, chosen * req.n), chosen


def refused(amount: int, reason: str) -> RelayError:
    return _refuse(amount, reason)


WALLET_SHORT = "the balance cannot cover it"
CREDIT_LIMIT_REACHED = "the key's credit limit is reached"


def _budget(key: KeyInfo) -> int:
    with connection.cursor() as cursor:
        cursor.execute(BUDGET_SQL, [key.wallet_id, key.token_id])
        available, credit_left = cursor.fetchone()
    return budget_from(key, available, credit_left)


BUDGET_SQL = (
    "SELECT (SELECT balance_micros - held_micros FROM billing_wallet WHERE id = %s),"
    " (SELECT credit_limit_micros - credit_used_micros FROM accounts_apitoken WHERE id = %s)"
)


def hold_attempts(req: HoldRequest) -> int:
    """Without max_tokens: first an optimistic hold, then one with the budget read."""
    return 2 if req.needs_budget else 1


def reserve(req: HoldRequest) -> Reservation:
    """Hold the worst-case cost of the call with the ORM (the path for SQLite), or refuse it."""
    for attempt in range(hold_attempts(req)):
        amount, chosen = plan_hold(req, _budget(req.key) if attempt else None)
        try:
            hold_acquire(
                request_id=req.request_id,
                wallet_id=req.key.wallet_id,
                amount_micros=amount,
                api_token_id=req.key.token_id,
                token_credit_limited=req.key.credit_limited,
                ttl_seconds=settings.RELAY_HOLD_TTL_SECONDS,
            )
        except InsufficientCredit as exc:
            reason = CREDIT_LIMIT_REACHED if "credit limit" in exc.message else WALLET_SHORT
            continue
        return Reservation(hold_micros=amount, max_tokens=chosen if req.needs_budget else None)
    raise refused(amount, reason)


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
    quota_tokens_tracked: bool = False


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


def quota_tokens_of(outcome: Outcome) -> int:
    if not outcome.quota_tokens_tracked:
        return 0
    return outcome.usage.prompt_tokens + outcome.usage.completion_tokens


def settle(outcome: Outcome) -> int:
    """Release the hold, debit the cost and write the log row in one transaction (ORM path)."""
    key = outcome.key
    now = timezone.now()
    row = log_row(outcome, now)
    with transaction.atomic():
        charged = 0
        if outcome.hold_micros or outcome.cost_micros:
            charged = hold_settle(
                request_id=outcome.request_id,
                wallet_id=key.wallet_id,
                hold_micros=outcome.hold_micros,
                cost_micros=outcome.cost_micros,
                api_token_id=key.token_id,
                token_credit_limited=key.credit_limited,
                description=description_of(outcome),
            )
        token_updates = {}
        tokens = quota_tokens_of(outcome)
        if tokens:
            token_updates["quota_used_tokens"] = F("quota_used_tokens") + tokens
        if last_used_due(key.token_id):
            token_updates["last_used_at"] = now
        if token_updates:
            ApiToken.objects.filter(pk=key.token_id).update(**token_updates)
        request_log_create(**row, cost_micros=charged)
    return charged


def description_of(outcome: Outcome) -> str:
    return f"{outcome.model_id} via {outcome.key.name}"
