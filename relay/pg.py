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

from relay import keys
from relay.accounting import (
    BUDGET_SQL,
    CREDIT_LIMIT_REACHED,
    WALLET_SHORT,
    HoldRequest,
    Outcome,
    Reservation,
    budget_from,
    description_of,
    hold_attempts,
    last_used_due,
    log_row,
    plan_hold,
    quota_tokens_of,
    refused,
)
from usage.models import RequestLog

_pool: AsyncConnectionPool | None = None
_pool_lock = asyncio.Lock()

HOLD_SQL = "SELECT relay_hold(%s, %s, %s, %s, %s, %s, %s)"
HOLD_REFUSALS = {1: WALLET_SHORT, 2: CREDIT_LIMIT_REACHED}


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


async def reserve(req: HoldRequest) -> Reservation:
    key = req.key
    now = timezone.now()
    expires = now + timedelta(seconds=settings.RELAY_HOLD_TTL_SECONDS)
    async with (await pool()).connection() as conn:
        for attempt in range(hold_attempts(req)):
            budget = None
            if attempt:
                cursor = await conn.execute(BUDGET_SQL, [key.wallet_id, key.token_id])
                available, credit_left = await cursor.fetchone()
                budget = budget_from(key, available, credit_left)
            amount, chosen = plan_hold(req, budget)
            cursor = await conn.execute(
                HOLD_SQL,
                [req.request_id, key.wallet_id, key.token_id, amount, key.credit_limited, now,
                 expires],
            )  # fmt: skip
            (status,) = await cursor.fetchone()
            if status == 0:
                return Reservation(
                    hold_micros=amount, max_tokens=chosen if req.needs_budget else None
                )
        raise refused(amount, HOLD_REFUSALS[status])


def _settle_sql() -> str:
    columns = [
        f.column for f in RequestLog._meta.concrete_fields if f.column not in ("id", "cost_micros")
    ]
    quoted = ", ".join(f'"{c}"' for c in [*columns, "cost_micros"])
    values = ", ".join(["%s"] * len(columns))
    # Column names come from the model, never from input.
    settle_call = "SELECT relay_settle(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) AS charged"
    insert = f"INSERT INTO usage_requestlog ({quoted}) SELECT {values}, s.charged FROM s"  # noqa: S608
    return f"WITH s AS ({settle_call}) {insert} RETURNING cost_micros"


SETTLE_SQL: str | None = None
LOG_COLUMNS: list[str] = []


async def settle(outcome: Outcome) -> int:
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
        outcome.hold_micros,
        outcome.cost_micros,
        outcome.hold_micros if key.credit_limited else 0,
        quota_tokens_of(outcome),
        last_used_due(key.token_id),
        description_of(outcome),
        now,
        *(row[name] for name in LOG_COLUMNS),
    ]
    async with (await pool()).connection() as conn:
        cursor = await conn.execute(SETTLE_SQL, params)
        (charged,) = await cursor.fetchone()
    return charged
