"""PostgreSQL on the event loop: the relay's own small pool of async psycopg connections.

The relay's key reads and billing's holds and settlements (billing/sql_backend.py) run here
without a thread hop. A connection that the server dropped (a restart) is found out on its first
use and replaced: `run` retries a statement once on a fresh connection when an idle one turns
out dead, and a database that does not answer is a 503 the client may retry, never a 500.
"""

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from psycopg.pq import TransactionStatus

from tokenbyte.errors import ApplicationError

T = TypeVar("T")
# How long a call waits for a free connection before it fails (a database that stopped answering).
ACQUIRE_TIMEOUT_SECONDS = 30
REAP_INTERVAL_SECONDS = 0.5


class DatabaseUnavailable(ApplicationError):
    """No working database connection in time: a 503 the client may retry, not a 500."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"The relay's database is unavailable ({reason}); try again shortly.",
            code="database_unavailable",
        )


# Errors of the connection rather than of the statement: the server went away or restarted.
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


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
                raise DatabaseUnavailable("the relay's database pool is closed")
            if self.idle:
                return self.idle.pop()
            if self.size < self.max_size:
                self.size += 1
                try:
                    return await psycopg.AsyncConnection.connect(**self.kwargs)
                except BaseException as exc:
                    self._free_slot()
                    if isinstance(exc, CONNECTION_ERRORS):
                        raise DatabaseUnavailable("cannot connect") from exc
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
            self.release_broken(conn)
            return
        if not self._hand_over(conn):
            self.idle.append(conn)

    def drop_idle(self) -> None:
        """Close the idle connections: after one turned out dead, the others (from the same
        server run) are dead too, and each would cost a failed call to find out."""
        idle, self.idle = self.idle, []
        for conn in idle:
            self.release_broken(conn)

    def release_broken(self, conn: psycopg.AsyncConnection) -> None:
        closing = asyncio.ensure_future(conn.close())
        self.closing.add(closing)
        closing.add_done_callback(self.closing.discard)
        self._free_slot()

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
                    waiter.set_exception(DatabaseUnavailable("no connection was free in time"))

    async def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            await conn.close()
        self.size -= len(idle)
        while self.waiters:
            _, waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(DatabaseUnavailable("the relay's database pool is closed"))
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


async def run(work: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` on a pooled connection, once more on a fresh one if the connection fails.

    A server restart kills every pooled connection, and each is only found dead when used:
    the failed one and the idle ones are dropped and `work` runs again on a new connection.
    `work` must be safe to run twice (reads, and billing's statements, which are idempotent on
    the request id). A database that fails again is DatabaseUnavailable.
    """
    pool_ = pool()
    for attempt in range(2):
        conn = await pool_.acquire()
        try:
            return await work(conn)
        except CONNECTION_ERRORS as exc:
            pool_.drop_idle()
            if attempt:
                raise DatabaseUnavailable(type(exc).__name__) from exc
        finally:
            pool_.release(conn)
    raise AssertionError("unreachable")


async def fetchone(sql: str, params: list) -> tuple | None:
    """One statement on a pooled connection, its first row."""

    async def work(conn: psycopg.AsyncConnection) -> tuple | None:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchone()

    return await run(work)
