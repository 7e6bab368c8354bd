"""Failover: try a call's channels in order until one answers, and keep the channels' health.

Retryable failures (connect errors, timeouts, 429, 5xx, a stream that fails before its first
content) move the call to the next channel after a short jittered backoff; each is recorded
off the call's path, and a channel that keeps failing cools down, then is disabled.
"""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from django.conf import settings

from catalog.services import channel_record_failure, channel_record_success
from relay import routing
from relay.http import RelayError
from relay.upstream import UpstreamFailure
from tokenbyte import db

logger = logging.getLogger(__name__)

T = TypeVar("T")
Spawn = Callable[[Awaitable], None]


def final_error(failure: UpstreamFailure | None) -> RelayError:
    if failure is None:
        return RelayError(503, "No channel is available right now.", code="no_channel_available")
    headers = {"retry-after": failure.retry_after or "1"} if failure.status == 429 else None
    return RelayError(failure.status, failure.message, code=failure.code, headers=headers)


async def backoff(attempt: int) -> None:
    base = settings.RELAY_RETRY_BACKOFF_MS / 1000
    await asyncio.sleep(base * (2**attempt) * random.uniform(0.5, 1.5))


async def failover(
    routes: list[routing.Route],
    attempt: Callable[[routing.Route], Awaitable[T]],
    *,
    on_attempt: Callable[[int, routing.Route], None],
    spawn: Spawn,
) -> tuple[routing.Route, T]:
    """The first answer of `attempt` over `routes`, or the RelayError of the last failure."""
    last: UpstreamFailure | None = None
    for number, route in enumerate(routes):
        if number:
            await backoff(number - 1)
        on_attempt(number + 1, route)
        try:
            result = await attempt(route)
        except UpstreamFailure as failure:
            last = failure
            if failure.retryable:
                spawn(_record_failure(route, failure))
                continue
            raise final_error(failure) from failure
        if route.had_failures:
            spawn(db.run(channel_record_success, channel_id=route.channel_id))
        return route, result
    raise final_error(last)


async def _record_failure(route: routing.Route, failure: UpstreamFailure) -> None:
    try:
        state = await db.run(
            channel_record_failure,
            channel_id=route.channel_id,
            error=f"HTTP {failure.status} {failure.code}: {failure.message}",
        )
    except Exception:
        logger.exception("could not record a failure of channel %s", route.name)
        return
    if state in ("cooling", "auto_disabled"):
        routing.cool_down_locally(route.channel_id, settings.RELAY_CHANNEL_COOLDOWN_SECONDS)
        routing.invalidate_soon()
