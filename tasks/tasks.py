"""Celery tasks: take ids, are safe to run twice, call one service each."""

from celery import shared_task

from billing.services import holds_release_expired
from catalog.services import channels_probe_disabled


@shared_task(time_limit=120, soft_time_limit=100)
def release_expired_holds() -> int:
    return holds_release_expired()


@shared_task(time_limit=300, soft_time_limit=280)
def probe_disabled_channels() -> list[str]:
    return channels_probe_disabled()
