"""Database work of the relay runs on a small dedicated thread pool.

Django's ORM is synchronous. Each phase of a call (key lookup on a cache miss, hold, settlement)
is one function that runs on these threads, so the event loop never blocks and the number of
database connections per process stays bounded by the pool size.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from django.conf import settings
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
)

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=settings.RELAY_DB_THREADS, thread_name_prefix="relay-db"
        )
    return _executor


def _call(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run `fn` on this thread's connection; once more on a new one if the connection was dead
    (a database restart kills every open connection, each found out only when used). What runs
    here is a read, idempotent (billing's hold and settlement) or bookkeeping."""
    for attempt in range(2):
        try:
            return fn(*args, **kwargs)
        except (OperationalError, InterfaceError):
            # A broken connection must not poison this thread for later calls.
            connection.close()
            if attempt:
                raise
        except DatabaseError:
            connection.close_if_unusable_or_obsolete()
            raise
    raise AssertionError("unreachable")


async def run(fn: Callable[..., T], *args, **kwargs) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool(), partial(_call, fn, *args, **kwargs))


def shutdown() -> None:
    """Close the pool's connections (each thread owns its own)."""
    global _executor
    if _executor is None:
        return
    pool, _executor = _executor, None
    futures = [pool.submit(close_old_connections) for _ in range(settings.RELAY_DB_THREADS)]
    for future in futures:
        future.result()
    pool.shutdown(wait=True)
