"""Periodic jobs inside the relay process, for deployments without Celery beat (the embedded
default). With Redis, Celery beat runs the same tasks (tasks.tasks) and this stays off.
"""

import asyncio
import logging

from accounts.services import quotas_reset_due
from billing.services import holds_release_expired
from catalog.services import channels_probe_disabled
from relay import db

logger = logging.getLogger(__name__)

JOBS = (
    (60.0, holds_release_expired),
    (60.0, channels_probe_disabled),
    # Scheduled quota resets, within a minute of their boundary (idempotent: see the service).
    (60.0, quotas_reset_due),
)


async def run_periodic_jobs(tick: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    due = {job: loop.time() for _, job in JOBS}
    while True:
        for interval, job in JOBS:
            if loop.time() >= due[job]:
                due[job] = loop.time() + interval
                try:
                    await db.run(job)
                except Exception:
                    logger.exception("periodic job %s failed", job.__name__)
        await asyncio.sleep(tick)
