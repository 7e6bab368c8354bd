"""The PostgreSQL fast path of a relayed call: hold and settlement on the event loop.

An async psycopg pool (no thread hop) and the plpgsql functions of relay/migrations/0001 make the
hold one round trip (two when the relay must first read the budget) and the settlement, request
log included, one more. relay/accounting.py has the same rules in the ORM for SQLite.
"""

import asyncio
import functools
from collections import deque
from datetime import timedelta

import orjson
import psycopg
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils import timezone
from psycopg.pq import TransactionStatus

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

HOLD_SQL = "SELECT relay_hold(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
# How long a call waits for a free connection before it fails (a database that stopped answering).
ACQUIRE_TIMEOUT_SECONDS = 30


class PoolTimeout(Exception):
    pass


class Pool:
    """The relay's connections: a list of idle ones and a queue of callers waiting for one.

    psycopg_pool's getconn/putconn (locks, conditions, a timer per wait, statistics) cost a
    quarter of the relay's time in the database driver; the hot path needs none of it. A
    connection whose session is not idle after use (it broke, or the server ended it) is
    closed and its place freed.
    """

    def __init__(self, kwargs: dict, max_size: int) -> None:
        self.kwargs = kwargs
        self.max_size = max_size
        self.size = 0  # connections open or opening
        self.idle: list[psycopg.AsyncConnection] = []
        self.waiters: deque[asyncio.Future] = deque()
        self.closed = False
        self.closing: set[asyncio.Task] = set()

    async def acquire(self) -> psycopg.AsyncConnection:
        while True:
            if self.closed:
                raise PoolTimeout("the relay's database pool is closed")
            if self.idle:
                return self.idle.pop()
            if self.size < self.max_size:
                self.size += 1
                try:
                    return await psycopg.AsyncConnection.connect(**self.kwargs)
                except BaseException:
                    self._free_slot()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                conn = await asyncio.wait_for(waiter, ACQUIRE_TIMEOUT_SECONDS)
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self.release(waiter.result())  # handed over just as we gave up
                elif waiter in self.waiters:
                    self.waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout("no database connection was free in time") from None
                raise
            if conn is not None:
                return conn
            # None: a place was freed; loop round and open a connection in it.

    def release(self, conn: psycopg.AsyncConnection) -> None:
        if self.closed or conn.closed or conn.pgconn.transaction_status != TransactionStatus.IDLE:
            closing = asyncio.ensure_future(conn.close())
            self.closing.add(closing)
            closing.add_done_callback(self.closing.discard)
            self._free_slot()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def _free_slot(self) -> None:
        self.size -= 1
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            await conn.close()
        self.size -= len(idle)
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolTimeout("the relay's database pool is closed"))


_pool: Pool | None = None


@functools.cache
def enabled() -> bool:
    """Asked three times per call; settings do not change under a running relay."""
    return settings.RELAY_SQL_FAST_PATH and settings.DATABASES["default"]["ENGINE"].endswith(
        "postgresql"
    )


@receiver(setting_changed)
def _settings_changed(**_kwargs) -> None:
    enabled.cache_clear()


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


def pool() -> Pool:
    global _pool
    if _pool is None:
        _pool = Pool(_connect_kwargs(), settings.RELAY_DB_POOL_SIZE)
    return _pool


async def close() -> None:
    global _pool
    if _pool is not None:
        await _pool.close()
        _pool = None


async def fetchone(sql: str, params: list) -> tuple | None:
    """One statement on a pooled connection, its first row."""
    pool_ = pool()
    conn = await pool_.acquire()
    try:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchone()
    finally:
        pool_.release(conn)


async def load_key(digest: str) -> keys.KeyInfo | None:
    """Read a key in one statement on the event loop, and cache it."""
    info = keys.from_row(await fetchone(keys.KEY_SQL, [digest]))
    keys.store(digest, info)
    return info


async def _budget(conn, key: keys.KeyInfo) -> Budget:
    cursor = await conn.execute(BUDGET_SQL, budget_params(key))
    return budget_from(key, await cursor.fetchone())


async def reserve(req: HoldRequest) -> Reservation:
    key = req.key
    now = timezone.now()
    expires = now + timedelta(seconds=settings.RELAY_HOLD_TTL_SECONDS)
    pool_ = pool()
    conn = await pool_.acquire()
    try:
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
    finally:
        pool_.release(conn)


def _settle_sql(columns: list[str]) -> str:
    quoted = ", ".join(f'"{c}"' for c in columns)
    from_record = ", ".join(f'r."{c}"' for c in columns)
    settle_call = "SELECT * FROM relay_settle(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    # The log row travels as one JSON object, typed by the table itself: one parameter to
    # adapt instead of thirty. Column names come from the model, never from input.
    insert = (
        f"INSERT INTO usage_requestlog ({quoted}, cost_micros) SELECT {from_record}, s.charged"  # noqa: S608
        " FROM s, jsonb_populate_record(NULL::usage_requestlog, %s::jsonb) r"
    )
    # A data-modifying WITH runs whether or not the outer query reads it; `s` runs once.
    return f"WITH s AS ({settle_call}), log AS ({insert}) SELECT * FROM s"  # noqa: S608


SETTLE_SQL: str | None = None
LOG_FIELDS: list[tuple[str, str]] = []  # (attname, column) of each log column but id and cost


async def settle(outcome: Outcome) -> Settlement:
    """One statement: the settlement function and the log row, atomic together."""
    global SETTLE_SQL, LOG_FIELDS
    if SETTLE_SQL is None:
        LOG_FIELDS = [
            (f.attname, f.column)
            for f in RequestLog._meta.concrete_fields
            if f.column not in ("id", "cost_micros")
        ]
        SETTLE_SQL = _settle_sql([column for _, column in LOG_FIELDS])
    key = outcome.key
    now = timezone.now()
    row = log_row(outcome, now)
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
        orjson.dumps({column: row[attname] for attname, column in LOG_FIELDS}).decode(),
    ]
    (charged, low_balance, key_used, key_quota, key_alerted, group_used, group_quota,
     group_alerted) = await fetchone(SETTLE_SQL, params)  # fmt: skip
    return Settlement(
        charged_micros=charged,
        low_balance=low_balance,
        key_quota=QuotaState(key_used, key_quota, key_alerted) if key_used is not None else None,
        group_quota=(
            QuotaState(group_used, group_quota, group_alerted) if group_used is not None else None
        ),
    )
