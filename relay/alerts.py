"""Quota and low-balance alerts, decided off the relay's hot path.

The settlement already returns the counters it moved (same statement, no extra round trip), so
the relay sees in memory whether a threshold may just have been reached. Only then does it run
the alert service (billing.services) on a database thread, after the response went out: the
service recounts usage without the holds of calls in flight, writes the Alert rows (one per
threshold and period, a unique key) and queues the emails after its commit. A periodic job would
have cost a scan of every key with a quota each minute and delayed alerts by up to a minute;
this costs nothing for calls that cross nothing.

One check per key, group or wallet runs at a time in a process; triggers that arrive meanwhile
coalesce into one more run, so none is lost and a busy key cannot queue a check per call.
"""

import asyncio
import logging
import time
from collections.abc import Callable

from billing.holds import HoldRefusal, QuotaState, Settlement
from billing.services import quota_alerts_raise, wallet_low_balance_alert_raise
from relay.keys import KeyInfo
from tokenbyte import db

logger = logging.getLogger(__name__)

# A refusal for a used-up quota checks its 100% alert at most this often per key and process.
EXHAUSTED_CHECK_INTERVAL_SECONDS = 60

# target -> whether another run was asked for while one is running.
_running: dict[tuple[str, int], bool] = {}
_exhausted_checked: dict[tuple[str, int], float] = {}
_tasks: set[asyncio.Task] = set()


def may_alert(thresholds: tuple[int, ...], state: QuotaState | None) -> bool:
    """Whether usage (holds in flight included, so possibly early) reached a threshold not yet
    alerted this period. The service decides on settled usage."""
    if state is None or state.quota_tokens is None or not thresholds:
        return False
    return any(
        t > state.alerted_percent and state.used_tokens * 100 >= t * state.quota_tokens
        for t in thresholds
    )


def after_settlement(key: KeyInfo, settlement: Settlement) -> None:
    if may_alert(key.alert_thresholds, settlement.key_quota):
        _check(("key", key.key_id), quota_alerts_raise, key_id=key.key_id)
    if key.group_id is not None and may_alert(key.group_alert_thresholds, settlement.group_quota):
        _check(("group", key.group_id), quota_alerts_raise, group_id=key.group_id)
    if settlement.low_balance and key.wallet_id is not None:
        _check(("wallet", key.wallet_id), wallet_low_balance_alert_raise, wallet_id=key.wallet_id)


def quota_exhausted(key: KeyInfo, scope: HoldRefusal, smallest_call_tokens: int) -> None:
    """A call was refused because what is left of a quota cannot cover its smallest form.

    Calls in flight may be what holds the rest: the service alerts only if settled usage
    leaves less than that.
    """
    # Targets of their own: a coalesced rerun of a settlement check would not pass `exhausted`.
    if scope == HoldRefusal.KEY_QUOTA:
        target, thresholds = ("key-exhausted", key.key_id), key.alert_thresholds
        kwargs = {"key_id": key.key_id}
    elif key.group_id is not None:
        target, thresholds = ("group-exhausted", key.group_id), key.group_alert_thresholds
        kwargs = {"group_id": key.group_id}
    else:
        return
    if not thresholds:
        return
    now = time.monotonic()
    if now - _exhausted_checked.get(target, float("-inf")) < EXHAUSTED_CHECK_INTERVAL_SECONDS:
        return
    if len(_exhausted_checked) >= 50_000:
        _exhausted_checked.clear()
    _exhausted_checked[target] = now
    _check(target, quota_alerts_raise, refused_call_tokens=smallest_call_tokens, **kwargs)


def _check(target: tuple[str, int], service: Callable, **kwargs) -> None:
    if target in _running:
        _running[target] = True
        return
    _running[target] = False
    task = asyncio.ensure_future(_run(target, service, kwargs))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _run(target: tuple[str, int], service: Callable, kwargs: dict) -> None:
    try:
        while True:
            try:
                await db.run(service, **kwargs)
            except Exception:
                logger.exception("alert check of %s %s failed", *target)
            if not _running.get(target):
                return
            _running[target] = False
    finally:
        _running.pop(target, None)


async def drain() -> None:
    """Wait for the checks in flight (at shutdown)."""
    if _tasks:
        await asyncio.gather(*_tasks, return_exceptions=True)
