"""The PostgreSQL fast path of a relayed call: hold and settlement on the event loop.

An async psycopg pool (no thread hop) and the plpgsql functions of relay/migrations/0001 make the
hold one round trip (two when the relay must first read the budget) and the settlement, request
log included, one more. relay/accounting.py has the same rules in the ORM for SQLite.
"""

import asyncio
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from billing.services import HoldRefusal, QuotaState, Settlement
from relay import keys
from relay.accounting import (
    BUDGET_SQL,
    Budget,
    HoldRequest,
    Outcome,
    Reservation,
    budget_from,
    budget_params,
    description_of,
    hold_attempts,
    last_used_due,
    log_row,
    needs_budget_for_message,
    plan_hold,
    refused,
)
from usage.models import RequestLog

_pool: AsyncConnectionPool | None = None
_pool_lock = asyncio.Lock()

HOLD_SQL = "SELECT relay_hold(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"


def enabled() -> bool:
    return settings.RELAY_SQL_FAST_PATH and settings.DATABASES["default"]["ENGINE"].endswith(
        "postgresql"
    )


def _connect_kwargs() -> dict:
    db = settings.DATABASES["default"]
    kwargs = {
        "dbname": db["NAME"],
        "user": db["USER"] or None,
        "password": db["PASSWORD"] or None,
        "host": db["HOST"] or None,
        "port": db["PORT"] or None,
        "autocommit": True,
        "application_name": "tokenbyte-relay",
        **db.get("OPTIONS", {}),
    }
    return {k: v for k, v in kwargs.items() if v is not None}


async def pool() -> AsyncConnectionPool:
    global _pool
    if _pool is None:
        async with _pool_lock:
            if _pool is None:
                created = AsyncConnectionPool(
                    kwargs=_connect_kwargs(),
                    min_size=1,
                    max_size=settings.RELAY_DB_POOL_SIZE,
                    open=False,
                    name="relay",
                )
                await created.open(wait=True, timeout=30)
                _pool = created
    return _pool


async def close() -> None:
    global _pool
    if _pool is not None:
        await _pool.close()
        _pool = None


async def load_key(digest: str) -> keys.KeyInfo | None:
    """Read a key in one statement on the event loop, and cache it."""
    async with (await pool()).connection() as conn:
        cursor = await conn.execute(keys.KEY_SQL, [digest])
        info = keys.from_row(await cursor.fetchone())
    keys.store(digest, info)
    return info


async def _budget(conn, key: keys.KeyInfo) -> Budget:
    cursor = await conn.execute(BUDGET_SQL, budget_params(key))
    return budget_from(key, await cursor.fetchone())


async def reserve(req: HoldRequest) -> Reservation:
    key = req.key
    now = timezone.now()
    expires = now + timedelta(seconds=settings.RELAY_HOLD_TTL_SECONDS)
    async with (await pool()).connection() as conn:
        budget = None
        for attempt in range(hold_attempts(req)):
            if attempt:
                budget = await _budget(conn, key)
            amount, chosen, tokens = plan_hold(req, budget)
            cursor = await conn.execute(
                HOLD_SQL,
                [req.request_id, key.wallet_id, key.token_id, key.group_id, amount, tokens,
                 key.credit_limited, key.quota_limited, key.group_credit_limited,
                 key.group_quota_limited, now, expires],
            )  # fmt: skip
            (status,) = await cursor.fetchone()
            if status == 0:
                return Reservation(
                    hold_micros=amount,
                    max_tokens=chosen if req.needs_budget else None,
                    tokens=tokens,
                )
        refusal = HoldRefusal(status)
        if budget is None and needs_budget_for_message(refusal):
            budget = await _budget(conn, key)
        raise refused(req, refusal, amount, tokens, budget)


def _settle_sql() -> str:
    columns = [
        f.column for f in RequestLog._meta.concrete_fields if f.column not in ("id", "cost_micros")
    ]
    quoted = ", ".join(f'"{c}"' for c in [*columns, "cost_micros"])
    values = ", ".join(["%s"] * len(columns))
    # Column names come from the model, never from input.
    settle_call = "SELECT * FROM relay_settle(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    insert = f"INSERT INTO usage_requestlog ({quoted}) SELECT {values}, s.charged FROM s"  # noqa: S608
    # A data-modifying WITH runs whether or not the outer query reads it; `s` runs once.
    return f"WITH s AS ({settle_call}), log AS ({insert}) SELECT * FROM s"  # noqa: S608


SETTLE_SQL: str | None = None
LOG_COLUMNS: list[str] = []


async def settle(outcome: Outcome) -> Settlement:
    """One statement: the settlement function and the log row, atomic together."""
    global SETTLE_SQL, LOG_COLUMNS
    if SETTLE_SQL is None:
        LOG_COLUMNS = [
            f.attname
            for f in RequestLog._meta.concrete_fields
            if f.column not in ("id", "cost_micros")
        ]
        SETTLE_SQL = _settle_sql()
    key = outcome.key
    now = timezone.now()
    row = log_row(outcome, now)
    row["request_params"] = Jsonb(row["request_params"])
    params = [
        outcome.request_id,
        key.wallet_id,
        key.token_id,
        outcome.held,
        outcome.hold_micros,
        outcome.cost_micros,
        outcome.used_tokens,
        last_used_due(key.token_id),
        description_of(outcome),
        now,
        *(row[name] for name in LOG_COLUMNS),
    ]
    async with (await pool()).connection() as conn:
        cursor = await conn.execute(SETTLE_SQL, params)
        (charged, low_balance, key_used, key_quota, key_alerted, group_used, group_quota,
         group_alerted) = await cursor.fetchone()  # fmt: skip
    return Settlement(
        charged_micros=charged,
        low_balance=low_balance,
        key_quota=QuotaState(key_used, key_quota, key_alerted) if key_used is not None else None,
        group_quota=(
            QuotaState(group_used, group_quota, group_alerted) if group_used is not None else None
        ),
    )
