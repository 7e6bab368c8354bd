"""The relay's own connection pool (tokenbyte/pg.py) against the test PostgreSQL server."""

import asyncio

import psycopg
import pytest

from tokenbyte.pg import DatabaseUnavailable, Pool, _connect_kwargs


@pytest.fixture
def kwargs(django_db_setup):
    return _connect_kwargs()


async def backend_pid(conn: psycopg.AsyncConnection) -> int:
    cursor = await conn.execute("SELECT pg_backend_pid()")
    return (await cursor.fetchone())[0]


def test_a_released_connection_is_reused_rather_than_a_new_one_opened(kwargs):
    async def scenario():
        pool = Pool(kwargs, max_size=3)
        first = await pool.acquire()
        pid = await backend_pid(first)
        pool.release(first)
        again = await pool.acquire()
        assert await backend_pid(again) == pid
        assert pool.size == 1
        pool.release(again)
        await pool.close()

    asyncio.run(scenario())


def test_callers_beyond_the_limit_wait_their_turn_in_order(kwargs):
    async def scenario():
        pool = Pool(kwargs, max_size=1)
        held = await pool.acquire()
        order = []

        async def caller(name: str):
            conn = await pool.acquire()
            order.append(name)
            await asyncio.sleep(0.01)
            pool.release(conn)

        waiting = [asyncio.ensure_future(caller(n)) for n in ("a", "b", "c")]
        await asyncio.sleep(0.05)
        assert order == [] and len(pool.waiters) == 3
        pool.release(held)
        await asyncio.gather(*waiting)
        assert order == ["a", "b", "c"]
        assert (pool.size, len(pool.idle)) == (1, 1)
        await pool.close()

    asyncio.run(scenario())


def test_a_connection_the_server_ended_is_dropped_and_replaced(kwargs):
    async def scenario():
        pool = Pool(kwargs, max_size=2)
        victim = await pool.acquire()
        pid = await backend_pid(victim)
        pool.release(victim)
        async with await psycopg.AsyncConnection.connect(**kwargs) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", [pid])

        conn = await pool.acquire()
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")
        pool.release(conn)
        assert (pool.size, pool.idle) == (0, [])

        fresh = await pool.acquire()
        assert await backend_pid(fresh) != pid
        pool.release(fresh)
        await pool.close()

    asyncio.run(scenario())


def test_a_waiter_that_gives_up_leaks_nothing(kwargs):
    async def scenario():
        pool = Pool(kwargs, max_size=1)
        held = await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not pool.waiters

        pool.release(held)
        assert (pool.size, len(pool.idle)) == (1, 1)
        await pool.close()

    asyncio.run(scenario())


def test_a_full_pool_times_out_with_a_clear_error(kwargs, monkeypatch):
    monkeypatch.setattr("tokenbyte.pg.ACQUIRE_TIMEOUT_SECONDS", 0.05)

    async def scenario():
        pool = Pool(kwargs, max_size=1)
        held = await pool.acquire()
        with pytest.raises(DatabaseUnavailable) as excinfo:
            await pool.acquire()
        assert not pool.waiters
        # The relay answers it as a 503 the client may retry (tests/relay/test_relay_faults.py).
        assert excinfo.value.code == "database_unavailable"
        pool.release(held)
        await pool.close()

    asyncio.run(scenario())


def test_closing_closes_the_idle_connections_and_those_given_back_later(kwargs):
    async def scenario():
        pool = Pool(kwargs, max_size=2)
        idle, busy = await pool.acquire(), await pool.acquire()
        pool.release(idle)

        await pool.close()

        assert idle.closed
        with pytest.raises(DatabaseUnavailable):
            await pool.acquire()
        pool.release(busy)  # a call still running when the relay stopped
        await asyncio.sleep(0.05)
        assert busy.closed and pool.size == 0

    asyncio.run(scenario())


def test_closing_fails_the_callers_still_waiting(kwargs):
    async def scenario():
        pool = Pool(kwargs, max_size=1)
        busy = await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.01)

        await pool.close()

        with pytest.raises(DatabaseUnavailable):
            await waiter
        pool.release(busy)
        await asyncio.sleep(0.05)
        assert busy.closed

    asyncio.run(scenario())
