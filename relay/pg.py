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
from relay.http import RelayError
from usage.models import RequestLog

HOLD_SQL = "SELECT relay_hold(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
# How long a call waits for a free connection before it fails (a database that stopped answering).
ACQUIRE_TIMEOUT_SECONDS = 30
REAP_INTERVAL_SECONDS = 0.5


class PoolTimeout(RelayError):
    """No database connection in time: the client gets a 503 it may retry, not a 500."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            503, f"The relay's database is busy ({reason}); try again shortly.",
            code="database_unavailable", headers={"retry-after": "1"},
        )  # fmt: skip


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
        self.waiters: deque[tuple[float, asyncio.Future]] = deque()  # (deadline, future)
        self.reaper: asyncio.Task | None = None
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
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            # One reaper task times out the waiters, rather than a timer for each wait.
            self.waiters.append((loop.time() + ACQUIRE_TIMEOUT_SECONDS, waiter))
            if self.reaper is None or self.reaper.done():
                self.reaper = asyncio.ensure_future(self._reap())
            try:
                conn = await waiter
            except asyncio.CancelledError:
                handed_over = (
                    waiter.done() and not waiter.cancelled() and waiter.exception() is None
                )
                if handed_over and waiter.result() is not None:
                    self.release(waiter.result())  # handed over just as we gave up
                self.waiters = deque(w for w in self.waiters if w[1] is not waiter)
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
        if not self._hand_over(conn):
            self.idle.append(conn)

    def _free_slot(self) -> None:
        self.size -= 1
        self._hand_over(None)

    def _hand_over(self, conn: psycopg.AsyncConnection | None) -> bool:
        while self.waiters:
            _, waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiters:
            await asyncio.sleep(min(REAP_INTERVAL_SECONDS, ACQUIRE_TIMEOUT_SECONDS / 2))
            now = loop.time()
            # Deadlines grow along the queue: the expired ones are at its head.
            while self.waiters and (self.waiters[0][0] <= now or self.waiters[0][1].done()):
                _, waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(PoolTimeout("no database connection was free in time"))

    async def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            await conn.close()
        self.size -= len(idle)
        while self.waiters:
            _, waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolTimeout("the relay's database pool is closed"))
        if self.reaper is not None:
            self.reaper.cancel()


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


# relay_settle writes the log row too (relay_log, in relay/migrations/0003), from one JSON object
# typed by the table: one parameter to adapt instead of thirty.
SETTLE_SQL = "SELECT * FROM relay_settle(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
# (attname, column) of each log column but the id and the cost, which relay_log fills in.
LOG_FIELDS = [
    (f.attname, f.column)
    for f in RequestLog._meta.concrete_fields
    if f.column not in ("id", "cost_micros")
]


async def settle(outcome: Outcome) -> Settlement:
    """One statement: the settlement and the log row, atomic together."""
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
