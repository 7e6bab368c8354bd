"""Billing's one entry point for a relayed call: hold before it goes upstream, settle after.

The backend is chosen once: on PostgreSQL the SQL functions of billing/sql/ on the async pool
(billing/sql_backend.py, no thread hop), otherwise the ORM (services.py) on database threads.
Both keep the same books (tests/billing/test_holds.py).

A settlement is never lost. It is idempotent on the request id, so it is retried on fresh
connections while the database is away (a restart takes a second or two); if the database stays
away past RELAY_SETTLE_RETRY_SECONDS, it goes to the durable outbox (billing/outbox.py), which
`upkeep` drains. A hold is released without its settlement only when its lease runs out: the
process serving the call died, or lost the database for longer than a lease. While the process
lives, `upkeep` extends the leases of its calls in flight and of its settlements in the outbox.
"""

import asyncio
import functools
import logging
import time

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from billing import outbox, services, sql_backend
from billing.holds import CallCharge, HoldRequest, Reservation, Settlement
from tokenbyte import db, pg
from tokenbyte.pg import DatabaseUnavailable

logger = logging.getLogger(__name__)

# request id -> monotonic time its hold was taken, for calls of this process in flight.
_in_flight: dict[str, float] = {}
UPKEEP_TICK_SECONDS = 1.0


async def _orm(fn, *args):
    try:
        return await db.run(fn, *args)
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseUnavailable(type(exc).__name__) from exc


async def hold_reserve(req: HoldRequest) -> Reservation:
    """Reserve the call's worst case, or raise HoldRefused (nothing reserved) or
    DatabaseUnavailable. A hold taken must be followed by call_settle with a CallCharge."""
    if pg.enabled():
        reservation = await sql_backend.hold_reserve(req)
    else:
        reservation = await _orm(services.hold_reserve_orm, req)
    _in_flight[req.request_id] = time.monotonic()
    return reservation


async def _settle_once(charge: CallCharge) -> Settlement:
    if pg.enabled():
        return await sql_backend.call_settle(charge)
    return await _orm(services.call_settle_orm, charge)


async def call_settle(charge: CallCharge) -> Settlement:
    """Settle a finished call: retried while the database is away, then put in the outbox.

    A settlement that waits in the outbox is returned as charged in full (what the outbox will
    charge once it is drained, unless the hold's lease ran out meanwhile)."""
    deadline = time.monotonic() + settings.RELAY_SETTLE_RETRY_SECONDS
    delay = 0.05
    try:
        while True:
            try:
                return await _settle_once(charge)
            except DatabaseUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    outbox.outbox_put(charge=charge)
                    logger.warning(
                        "settlement of %s queued in the outbox (database unavailable: %s)",
                        charge.request_id, exc.message,
                    )  # fmt: skip
                    return Settlement(charged_micros=charge.charge_micros, queued=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
    finally:
        _in_flight.pop(charge.request_id, None)


async def outbox_drain() -> int:
    """Settle what waits in the outbox; what still fails goes back for the next round."""
    settled = 0
    for path, charge in await asyncio.to_thread(outbox.outbox_claim):
        try:
            await _settle_once(charge)
        except DatabaseUnavailable:
            outbox.outbox_unclaim(path)
            continue
        except Exception:
            # Not the database being away: it would fail again every round. Set aside for an
            # operator; its hold is no longer kept, so the sweep releases it.
            logger.exception("could not settle %s from the outbox; set aside", charge.request_id)
            outbox.outbox_set_aside(path)
            continue
        outbox.outbox_done(path)
        settled += 1
        logger.info("settled %s from the outbox", charge.request_id)
    return settled


async def holds_heartbeat() -> None:
    """Extend the leases of this process's calls that have run for half a lease, and of its
    settlements in the outbox."""
    horizon = time.monotonic() - settings.RELAY_HOLD_LEASE_SECONDS / 2
    request_ids = [rid for rid, since in _in_flight.items() if since <= horizon]
    request_ids += outbox.outbox_request_ids()
    if not request_ids:
        return
    if pg.enabled():
        await sql_backend.holds_heartbeat(request_ids, timezone.now())
    else:
        await _orm(functools.partial(services.holds_heartbeat, request_ids=request_ids))


async def upkeep() -> None:
    """Runs for the life of a relay process: drains the outbox, keeps the leases."""
    loop = asyncio.get_running_loop()
    next_heartbeat = loop.time()
    while True:
        try:
            if outbox.outbox_request_ids():
                await outbox_drain()
            if loop.time() >= next_heartbeat:
                next_heartbeat = loop.time() + settings.RELAY_HOLD_HEARTBEAT_SECONDS
                await holds_heartbeat()
        except DatabaseUnavailable:
            pass  # the next round tries again
        except Exception:
            logger.exception("billing upkeep failed")
        await asyncio.sleep(UPKEEP_TICK_SECONDS)
