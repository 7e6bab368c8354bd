"""Async image and audio jobs: submitted with POST /v1/tasks, run by a Celery worker.

A job's life: the relay checks the submit like the synchronous call it stands for and holds its
worst case at once (the hold's lease lasts until the job's deadline); the job row is written in
the same transaction, and the Celery task `tasks.tasks.run_async_task` is queued after the commit.
The worker runs the same upstream call as the synchronous endpoint, stores the media through
Django's storage API, and settles the hold with the actual cost (one ledger entry, one request
log); a job that fails settles at zero, which releases the hold. Runs are idempotent on the job:
a redelivered message (the worker died) finds the job finished, or runs it again under the same
request id, so billing settles it once. A job still unfinished at its deadline is failed, and
the hold sweep releases its hold.

Media is served by signed, expiring URLs (`/tasks/media/<token>/`); an hourly job deletes the
stored files once they expire.
"""

import logging
import mimetypes
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile
from django.db import IntegrityError, connections, transaction
from django.urls import reverse
from django.utils import timezone

from billing.holds import CallCharge, HoldKey, hold_parts_of
from billing.models import Hold
from billing.services import call_settle_orm, hold_acquire
from tasks.models import AsyncTask
from tokenbyte.errors import ApplicationError

logger = logging.getLogger(__name__)

MEDIA_SALT = "tasks.media"
RUN_ASYNC_TASK = "tasks.tasks.run_async_task"


@dataclass(frozen=True)
class TaskType:
    kind: str  # AsyncTask.Kind
    call: str  # the synchronous call it stands for (relay/media.py KINDS)


# The `type` of POST /v1/tasks.
TASK_TYPES = {
    "image.generation": TaskType(AsyncTask.Kind.IMAGE_GENERATION, "images.generations"),
    "audio.speech": TaskType(AsyncTask.Kind.AUDIO_SPEECH, "audio.speech"),
    "audio.transcription": TaskType(AsyncTask.Kind.AUDIO_TRANSCRIPTION, "audio.transcriptions"),
}
TYPE_OF_KIND = {task_type.kind: name for name, task_type in TASK_TYPES.items()}


class KeyOwner(HoldKey, Protocol):
    """What a submit reads of the key (the relay's KeyInfo)."""

    owner_id: int


def async_task_submit(
    *,
    key: KeyOwner,
    task_type: str,
    model_id: str,
    job_input: dict,
    idempotency_key: str,
    hold_micros: int,
    now: datetime | None = None,
) -> tuple[AsyncTask, bool]:
    """Write a queued job and hold its worst case, in one transaction; the run is queued after
    the commit. Returns (task, created): a submit repeating a key's Idempotency-Key gets the
    first task back (and holds nothing), or a conflict when the job differs.

    Raises HoldRefused when the credit is not there, like the synchronous call.
    """
    now = now or timezone.now()
    kind = TASK_TYPES[task_type].kind
    if idempotency_key:
        existing = _idempotent_task(key.key_id, idempotency_key, kind, model_id, job_input)
        if existing is not None:
            return existing, False
    request_id = f"req_{secrets.token_hex(12)}"
    # A job counts no tokens (its media are priced per unit).
    parts = hold_parts_of(key, quotas=False)
    try:
        with transaction.atomic():
            # The hold's lease is the job's deadline: a job that never finishes is released
            # by the hold sweep, like a call whose process died.
            hold = hold_acquire(
                request_id=request_id,
                wallet_id=key.wallet_id,
                amount_micros=hold_micros,
                parts=parts,
                lease_seconds=settings.TASK_DEADLINE_SECONDS,
                model_id=model_id,
                call_type=TASK_TYPES[task_type].call,
            )
            task = AsyncTask.objects.create(
                public_id=f"task_{secrets.token_urlsafe(16)}",
                user_id=key.owner_id,
                api_token_id=key.key_id,
                kind=kind,
                model_id=model_id,
                input=job_input,
                request_id=request_id,
                idempotency_key=idempotency_key,
                created_at=now,
                deadline_at=hold.expires_at,
            )
            transaction.on_commit(lambda: _queue_run(task.pk))
    except IntegrityError:
        # The same Idempotency-Key submitted twice at once: the other one won.
        existing = _idempotent_task(key.key_id, idempotency_key, kind, model_id, job_input)
        if existing is None:
            raise
        return existing, False
    return task, True


def _idempotent_task(
    key_id: int, idempotency_key: str, kind: str, model_id: str, job_input: dict
) -> AsyncTask | None:
    task = AsyncTask.objects.filter(api_token_id=key_id, idempotency_key=idempotency_key).first()
    if task is None:
        return None
    if (task.kind, task.model_id, task.input) != (kind, model_id, job_input):
        raise ApplicationError(
            "This Idempotency-Key was used for another job.", code="idempotency_key_reused"
        )
    return task


def _queue_run(task_id: int) -> None:
    from tokenbyte.celery import app, task_queue

    if app.conf.task_always_eager:
        # No broker (the embedded default): run it in a thread of this process, so the submit
        # answers at once, as with a worker.
        threading.Thread(
            target=_run_here, args=(task_id,), name=f"async-task-{task_id}", daemon=True
        ).start()
        return
    task_queue(RUN_ASYNC_TASK, task_id)


def _run_here(task_id: int) -> None:
    from tokenbyte.celery import task_queue

    try:
        task_queue(RUN_ASYNC_TASK, task_id)
    finally:
        # This thread's database connections end with it.
        connections.close_all()


def async_task_start(*, task_id: int, now: datetime | None = None) -> AsyncTask | None:
    """Claim a job for a run: None when there is nothing to run (it finished, or it is past its
    deadline, which the deadline sweep handles). A job that used up its attempts (its workers
    kept dying) is failed here, its hold released."""
    now = now or timezone.now()
    with transaction.atomic():
        task = AsyncTask.objects.select_for_update().filter(pk=task_id).first()
        if task is None or task.status in (AsyncTask.Status.SUCCEEDED, AsyncTask.Status.FAILED):
            return None
        if task.deadline_at is not None and task.deadline_at <= now:
            return None
        if task.attempts >= settings.TASK_MAX_ATTEMPTS:
            exhausted = task
        else:
            task.status = AsyncTask.Status.RUNNING
            task.attempts += 1
            task.started_at = task.started_at or now
            task.save(update_fields=["status", "attempts", "started_at"])
            return task
    error = f"The job stopped {exhausted.attempts} times before finishing; nothing was charged."
    async_task_finish(task=exhausted, log=async_task_log(exhausted, status_code=500, now=now),
                      cost_micros=0, error=error)  # fmt: skip
    return None


def async_task_requeue(*, task: AsyncTask, error: str) -> AsyncTask:
    """A run that failed for now: the job is queued again (its hold kept) with why, for the
    retry the Celery task schedules."""
    task.status = AsyncTask.Status.QUEUED
    task.error = f"Attempt {task.attempts} failed, retrying: {error}"[:2000]
    task.save(update_fields=["status", "error"])
    return task


def async_task_retry_delay(*, attempts: int) -> float:
    """Seconds before the next run after `attempts` runs: doubling from TASK_RETRY_SECONDS."""
    return settings.TASK_RETRY_SECONDS * 2 ** max(attempts - 1, 0)


def async_task_log(task: AsyncTask, *, status_code: int, now: datetime, **fields: Any) -> dict:
    """The request log row of a job (by attname; the settlement decides the cost)."""
    key = task.api_token
    started = task.started_at or task.created_at
    row = {
        "request_id": task.request_id,
        "created_at": task.created_at,
        "user_id": task.user_id,
        "organization_id": key.organization_id if key else None,
        "api_token_id": task.api_token_id,
        "token_name": key.name if key else "",
        "group_id": key.group_id if key else None,
        "group_name": key.group.name if key and key.group_id else "",
        "model_id": task.model_id,
        "upstream_model": "",
        "call_type": TASK_TYPES[TYPE_OF_KIND[task.kind]].call,
        "endpoint": "tasks",
        "is_stream": False,
        "status_code": status_code,
        "duration_ms": max(0, round((now - started).total_seconds() * 1000)),
        "ttft_ms": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "channel_id": None,
        "channel_name": "",
        "attempts": task.attempts,
        "error_code": "",
        "error_message": "",
        "client_ip": None,
        "request_params": {"task": task.public_id, "type": TYPE_OF_KIND[task.kind]},
        "response_excerpt": "",
    }
    row.update(fields)
    return row


def async_task_finish(
    *,
    task: AsyncTask,
    log: dict,
    cost_micros: int,
    error: str = "",
    content: bytes | None = None,
    content_type: str = "",
    data: dict | None = None,
    now: datetime | None = None,
) -> AsyncTask:
    """Settle a job: succeeded with its media and cost, or failed at zero (the hold released).
    The settlement is idempotent on the job's request id, so a second finish charges nothing."""
    now = now or timezone.now()
    hold = Hold.objects.filter(request_id=task.request_id).values("amount_micros", "wallet_id")
    hold = hold.first() or {"amount_micros": 0, "wallet_id": None}
    if content is not None:
        extension = mimetypes.guess_extension(content_type) or ".bin"
        task.media.save(f"{task.public_id}{extension}", ContentFile(content), save=False)
        task.media_content_type = content_type
        task.media_expires_at = now + timedelta(seconds=settings.TASK_MEDIA_TTL_SECONDS)
    charge = CallCharge(
        request_id=task.request_id,
        wallet_id=hold["wallet_id"],
        key_id=task.api_token_id,
        held=hold["wallet_id"] is not None,
        hold_micros=hold["amount_micros"],
        cost_micros=cost_micros if not error else 0,
        used_tokens=0,
        touch_last_used=False,
        description=f"Async job {task.public_id}",
        now=now,
        log=log,
    )
    settlement = call_settle_orm(charge)
    task.status = AsyncTask.Status.FAILED if error else AsyncTask.Status.SUCCEEDED
    task.error = error  # a success clears the note of an earlier failed attempt
    upload = task.input.get("file") if isinstance(task.input, dict) else None
    if isinstance(upload, dict) and isinstance(upload.get("data"), str):
        # The job is done with its upload: keep what it was, not its (base64) bytes.
        meta = {k: v for k, v in upload.items() if k != "data"}
        task.input = {**task.input, "file": {**meta, "base64_characters": len(upload["data"])}}
    task.cost_micros = settlement.charged_micros
    task.result = data
    task.finished_at = now
    task.save()
    return task


def async_task_media_url(*, task: AsyncTask) -> str | None:
    """The job's media as an absolute, signed URL, valid until the media expires."""
    if not task.media or task.media_expires_at is None or task.media_expires_at <= timezone.now():
        return None
    token = signing.dumps({"task": task.public_id}, salt=MEDIA_SALT, compress=True)
    return settings.SITE_URL + reverse("task_media", args=[token])


def async_task_for_media_token(*, token: str, now: datetime | None = None) -> AsyncTask | None:
    """The job a media URL names, if the signature holds and the media has not expired."""
    try:
        payload = signing.loads(token, salt=MEDIA_SALT)
    except signing.BadSignature:
        return None
    task = AsyncTask.objects.filter(public_id=payload.get("task", "")).first()
    now = now or timezone.now()
    if task is None or not task.media or task.media_expires_at is None:
        return None
    if task.media_expires_at <= now:
        return None
    return task


def async_tasks_fail_overdue(*, now: datetime | None = None, limit: int = 500) -> int:
    """Fail jobs still queued or running past their deadline (a lost message, a worker that kept
    dying). Their holds' leases end at the same deadline, so the hold sweep releases them."""
    now = now or timezone.now()
    overdue = AsyncTask.objects.filter(
        status__in=(AsyncTask.Status.QUEUED, AsyncTask.Status.RUNNING), deadline_at__lt=now
    ).values_list("pk", flat=True)[:limit]
    failed = 0
    for pk in overdue:
        failed += AsyncTask.objects.filter(
            pk=pk, status__in=(AsyncTask.Status.QUEUED, AsyncTask.Status.RUNNING)
        ).update(
            status=AsyncTask.Status.FAILED,
            error="The job did not finish before its deadline; nothing was charged.",
            finished_at=now,
        )
    if failed:
        logger.warning("failed %s async jobs past their deadline", failed)
    return failed


def async_task_media_expire(*, now: datetime | None = None, limit: int = 500) -> int:
    """Delete stored media past its expiry (the job row stays, with its cost and status)."""
    now = now or timezone.now()
    expired = list(AsyncTask.objects.filter(media_expires_at__lt=now).exclude(media="")[:limit])
    for task in expired:
        with transaction.atomic():
            storage, name = task.media.storage, task.media.name
            AsyncTask.objects.filter(pk=task.pk).update(media="")
            # The file goes once the row no longer points at it.
            transaction.on_commit(lambda storage=storage, name=name: storage.delete(name))
    return len(expired)


def async_task_deadline(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.TASK_DEADLINE_SECONDS)
