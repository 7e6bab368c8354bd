"""Periodic jobs inside the relay process, for deployments without Celery beat (the embedded
default). With Redis, Celery beat runs the same jobs (tasks/schedule.py lists them once) and
this stays off.
"""

import asyncio
import importlib
import logging

from tasks.schedule import PERIODIC_JOBS
from tokenbyte import db

logger = logging.getLogger(__name__)


def _service(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


async def run_periodic_jobs(tick: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    jobs = [(job.seconds, _service(job.service)) for job in PERIODIC_JOBS]
    due = {service: loop.time() for _, service in jobs}
    while True:
        for interval, service in jobs:
            if loop.time() >= due[service]:
                due[service] = loop.time() + interval
                try:
                    await db.run(service)
                except Exception:
                    logger.exception("periodic job %s failed", service.__name__)
        await asyncio.sleep(tick)
