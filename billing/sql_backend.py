"""Billing's PostgreSQL backend: the hold and the settlement as the SQL functions of
billing/sql/ on the relay's async pool. One round trip each (two for a hold that must first read
the budget). services.py has the same rules in the ORM; billing.settlement picks one of them.
"""

from datetime import datetime, timedelta

import orjson
import psycopg
from django.conf import settings
from django.utils import timezone

from billing.holds import (
    BUDGET_SQL,
    Budget,
    CallCharge,
    HoldRefusal,
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
from billing.models import Hold
from tokenbyte import pg
from usage.models import RequestLog

HOLD_SQL = "SELECT billing_hold(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
SETTLE_SQL = "SELECT * FROM billing_settle(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
HEARTBEAT_SQL = (
    f"UPDATE {Hold._meta.db_table} SET expires_at = LEAST(created_at + %s, %s)"  # noqa: S608
    " WHERE request_id = ANY(%s) AND status = 'open'"
)
# (attname, column) of each log column but the id and the cost, which billing_log fills in.
LOG_FIELDS = [
    (f.attname, f.column)
    for f in RequestLog._meta.concrete_fields
    if f.column not in ("id", "cost_micros")
]


async def _budget(conn: psycopg.AsyncConnection, req: HoldRequest) -> Budget:
    cursor = await conn.execute(BUDGET_SQL, budget_params(req.key))
    return budget_from(req.key, await cursor.fetchone())


async def hold_reserve(req: HoldRequest) -> Reservation:
    key = req.key
    now = timezone.now()
    expires = now + timedelta(seconds=settings.RELAY_HOLD_LEASE_SECONDS)

    async def work(conn: psycopg.AsyncConnection) -> Reservation:
        budget = None
        for attempt in range(hold_attempts(req)):
            if attempt:
                budget = await _budget(conn, req)
            plan = hold_plan(req, budget)
            parts = plan.parts
            cursor = await conn.execute(
                HOLD_SQL,
                [req.request_id, key.wallet_id, key.key_id, key.group_id, plan.amount_micros,
                 parts.tokens, parts.key_credit, parts.key_quota, parts.group_credit,
                 parts.group_quota, req.model_id, req.call_type, now, expires,
                 parts.membership_id],
            )  # fmt: skip
            (status,) = await cursor.fetchone()
            if status == 0:
                return reservation_of(req, plan)
        refusal = HoldRefusal(status)
        if budget is None and refusal.is_quota:
            budget = await _budget(conn, req)
        raise hold_refused(req, refusal, plan, budget)

    return await pg.run(work)


def _log_json(charge: CallCharge) -> str:
    log = charge.log
    return orjson.dumps({column: log[attname] for attname, column in LOG_FIELDS}).decode()


async def call_settle(charge: CallCharge) -> Settlement:
    """One statement: the settlement and the log row, atomic together, idempotent."""
    params = [
        charge.request_id,
        charge.wallet_id,
        charge.key_id,
        charge.held,
        charge.hold_micros,
        charge.cost_micros,
        charge.used_tokens,
        charge.touch_last_used,
        charge.description,
        charge.now,
        _log_json(charge),
    ]
    (charged, low_balance, key_used, key_quota, key_alerted, group_used, group_quota,
     group_alerted, replayed) = await pg.fetchone(SETTLE_SQL, params)  # fmt: skip
    return Settlement(
        charged_micros=charged,
        low_balance=low_balance,
        key_quota=QuotaState(key_used, key_quota, key_alerted) if key_used is not None else None,
        group_quota=(
            QuotaState(group_used, group_quota, group_alerted) if group_used is not None else None
        ),
        replayed=replayed,
    )


async def holds_heartbeat(request_ids: list[str], now: datetime) -> None:
    lease = now + timedelta(seconds=settings.RELAY_HOLD_LEASE_SECONDS)
    ttl = timedelta(seconds=settings.RELAY_HOLD_TTL_SECONDS)

    async def work(conn: psycopg.AsyncConnection) -> None:
        await conn.execute(HEARTBEAT_SQL, [ttl, lease, request_ids])

    await pg.run(work)
