"""Async jobs on the relay: POST /v1/tasks, GET /v1/tasks/{id}, GET /v1/tasks, and the worker's
run of a job (tasks.tasks.run_async_task calls `job_run`).

A job is the synchronous media call it names (relay/media.py), checked the same way at submit
and held for its worst case there (tasks/services.py writes the job and the hold together); the
worker sends the same upstream call, with failover, and settles it.

    POST /v1/tasks  {"type": "image.generation" | "audio.speech" | "audio.transcription",
                     "model": "…", "input": {…the synchronous endpoint's fields…}}
    -> 202 {"id": "task_…", "object": "task", "status": "queued", …}

An audio.transcription's `input.file` is the upload: {"data": "<base64>", "filename": "…",
"content_type": "…"}. An image.generation job makes one image (n is 1). `Idempotency-Key` makes
a retried submit answer the first job (200) instead of a new one.
"""

import asyncio
import base64
import binascii
import logging
from urllib.parse import parse_qs

from django.conf import settings
from django.utils import timezone

from billing.holds import HoldRefused
from relay import endpoints, keys, media, routing, upstream
from relay.http import RelayError, Request
from relay.multipart import Upload
from tasks.models import AsyncTask
from tasks.selectors import async_tasks_for_key_owner
from tasks.services import (
    TASK_TYPES,
    TYPE_OF_KIND,
    async_task_finish,
    async_task_log,
    async_task_media_url,
    async_task_requeue,
    async_task_start,
    async_task_submit,
)
from tokenbyte import db
from tokenbyte.errors import ApplicationError

logger = logging.getLogger(__name__)

LIST_LIMIT_DEFAULT = 20
# Failures of every channel worth another run later: rate limits, upstream errors, timeouts,
# no channel available. Anything else (a bad request, a model gone) fails the job at once.
RETRYABLE = frozenset({429, 500, 502, 503, 504})
LIST_LIMIT_MAX = 100


def task_object(task: AsyncTask) -> dict:
    """A job as /v1/tasks answers it."""
    result = None
    if task.status == AsyncTask.Status.SUCCEEDED:
        result = {
            "url": async_task_media_url(task=task),
            "content_type": task.media_content_type,
            "expires_at": _unix(task.media_expires_at),
        }
        if isinstance(task.result, dict) and "text" in task.result:
            result["text"] = task.result["text"]
    return {
        "id": task.public_id,
        "object": "task",
        "type": TYPE_OF_KIND[task.kind],
        "model": task.model_id,
        "status": task.status,
        "result": result,
        "error": {"message": task.error} if task.error else None,
        "cost_micros": task.cost_micros,
        "cost_usd": f"{task.cost_micros / 1_000_000:.6f}",
        "attempts": task.attempts,
        "created_at": _unix(task.created_at),
        "started_at": _unix(task.started_at),
        "finished_at": _unix(task.finished_at),
    }


def _unix(moment) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _bad(message: str, param: str, code: str = "invalid_value") -> RelayError:
    return RelayError(400, message, param=param, code=code)


def job_request(task_type: str, job_input: dict) -> media.MediaRequest:
    """The synchronous call a job stands for, checked (RelayError 400 with `param`)."""
    kind = media.KINDS[TASK_TYPES[task_type].call]
    body = {k: v for k, v in job_input.items() if k != "file"}
    files: list[Upload] = []
    if kind is media.AUDIO_TRANSCRIPTIONS:
        upload = job_input.get("file")
        if not isinstance(upload, dict) or not isinstance(upload.get("data"), str):
            raise _bad("'input.file' must be {\"data\": \"<base64>\", \"filename\": …}.",
                       "input.file")  # fmt: skip
        try:
            data = base64.b64decode(upload["data"], validate=True)
        except (binascii.Error, ValueError):
            raise _bad("'input.file.data' is not base64.", "input.file.data") from None
        files.append(
            Upload(
                field="file",
                filename=str(upload.get("filename") or "audio"),
                content_type=str(upload.get("content_type") or "application/octet-stream"),
                data=data,
            )
        )
    if kind is media.IMAGES_GENERATIONS:
        if body.get("n", 1) != 1:
            raise _bad("An image.generation job makes one image; submit one job per image.",
                       "input.n")  # fmt: skip
        # The job stores the image itself and serves it by its own signed URL.
        body["response_format"] = "b64_json"
    return media.media_request(kind, body, files)


async def submit(request: Request) -> None:
    key = await endpoints.authenticate(request)
    await request.read_body(settings.RELAY_MAX_UPLOAD_BYTES)
    body = request.json()
    task_type = body.get("type")
    if task_type not in TASK_TYPES:
        raise _bad(f"'type' must be one of {', '.join(sorted(TASK_TYPES))}.", "type")
    job_input = body.get("input")
    if not isinstance(job_input, dict):
        raise _bad("'input' must be an object.", "input", "invalid_type")
    snapshot = await endpoints.catalog(request)
    model = _resolve(body.get("model"), key, snapshot)
    call = job_request(task_type, job_input)
    media.check_model(call.kind, model)
    media.routes_for(call.kind, snapshot.routes.get(model.model_id, []))
    held = media.quote(call, model)
    idempotency_key = request.headers.get("idempotency-key", "")[:255]
    try:
        task, created = await db.run(
            async_task_submit, key=key, task_type=task_type, model_id=model.model_id,
            job_input=job_input, idempotency_key=idempotency_key, hold_micros=held.cost_micros,
        )  # fmt: skip
    except HoldRefused as refused:
        raise endpoints.refusal_error(refused) from refused
    except ApplicationError as exc:
        raise RelayError(409, exc.message, code=exc.code, param="Idempotency-Key") from exc
    await request.respond_json(202 if created else 200, task_object(task))


def _resolve(model_id: object, key: keys.KeyInfo, snapshot: routing.Snapshot):
    if not isinstance(model_id, str) or not model_id:
        raise _bad("You must provide a model parameter.", "model", "missing_required_parameter")
    if key.allowed_models and model_id not in key.allowed_models:
        raise RelayError(403, f"This API key is not allowed to use the model '{model_id}'.",
                         code="model_not_allowed", param="model")  # fmt: skip
    model = snapshot.models.get(model_id)
    if model is None:
        raise RelayError(404, f"The model '{model_id}' does not exist or you do not have access "
                         "to it.", code="model_not_found", param="model")  # fmt: skip
    return model


async def retrieve(request: Request, public_id: str) -> None:
    key = await endpoints.authenticate(request)
    task = await db.run(_owned_task, key.owner_id, key.organization_id, public_id)
    if task is None:
        raise RelayError(404, f"No task found with id '{public_id}'.", code="task_not_found")
    await request.respond_json(200, task_object(task))


async def listing(request: Request) -> None:
    key = await endpoints.authenticate(request)
    query = {k: v[-1] for k, v in parse_qs(request.scope.get("query_string", b"").decode()).items()}
    try:
        limit = min(max(int(query.get("limit", LIST_LIMIT_DEFAULT)), 1), LIST_LIMIT_MAX)
    except ValueError:
        raise _bad("'limit' must be an integer.", "limit") from None
    tasks = await db.run(
        _owned_tasks, key.owner_id, key.organization_id, query.get("after", ""), limit + 1
    )
    await request.respond_json(
        200,
        {
            "object": "list",
            "data": [task_object(task) for task in tasks[:limit]],
            "has_more": len(tasks) > limit,
        },
    )


def _owned_task(owner_id: int, organization_id: int | None, public_id: str) -> AsyncTask | None:
    tasks = async_tasks_for_key_owner(owner_id=owner_id, organization_id=organization_id)
    return tasks.filter(public_id=public_id).first()


def _owned_tasks(
    owner_id: int, organization_id: int | None, after: str, limit: int
) -> list[AsyncTask]:
    """The key owner's jobs, newest first, after the job named `after` (a keyset page)."""
    tasks = async_tasks_for_key_owner(owner_id=owner_id, organization_id=organization_id)
    if after:
        anchor = tasks.filter(public_id=after).values_list("created_at", "id").first()
        if anchor is None:
            raise _bad(f"No task found with id '{after}'.", "after")
        tasks = tasks.filter(created_at__lte=anchor[0]).exclude(
            created_at=anchor[0], id__gte=anchor[1]
        )
    return list(tasks[:limit])


# --- the worker ----------------------------------------------------------------------------------


def job_run(task_id: int) -> str:
    """Run one job (a Celery task's body): claim it, call upstream, store and settle. Safe to run
    twice: a finished job is skipped, and the settlement is idempotent on its request id."""
    task = async_task_start(task_id=task_id)
    if task is None:
        return "skipped"
    snapshot = routing.refresh()
    task_type = TYPE_OF_KIND[task.kind]
    try:
        model = snapshot.models.get(task.model_id)
        if model is None:
            raise RelayError(404, f"The model '{task.model_id}' is no longer offered.")
        call = job_request(task_type, task.input)
        routes = media.routes_for(call.kind, snapshot.routes.get(model.model_id, []))
        result = asyncio.run(_call_upstream(call, model, routes))
    except RelayError as error:
        if error.status in RETRYABLE and task.attempts < settings.TASK_MAX_ATTEMPTS:
            # Every channel failed for now (a provider's outage, its rate limit): the job goes
            # back in the queue, its hold kept, and runs again after a pause.
            async_task_requeue(task=task, error=error.message)
            return "retry"
        log = async_task_log(
            task,
            status_code=error.status,
            now=timezone.now(),
            error_code=error.code or "",
            error_message=error.message[:2000],
        )
        async_task_finish(task=task, log=log, cost_micros=0, error=error.message)
        return "failed"
    content, text = result.content, None
    if call.kind is media.IMAGES_GENERATIONS:
        content = base64.b64decode(result.data["data"][0]["b64_json"])
        content_type = "image/png"
    else:
        content_type = result.content_type
        if result.data is not None and isinstance(result.data.get("text"), str):
            text = result.data["text"]
    route = result.route
    log = async_task_log(
        task, status_code=200, now=timezone.now(),
        channel_id=route.channel_id if route else None,
        channel_name=route.name if route else "",
        upstream_model=route.upstream_model(model.model_id) if route else "",
        request_params={**call.loggable_params(), "task": task.public_id, "type": task_type},
    )  # fmt: skip
    async_task_finish(
        task=task, log=log, cost_micros=result.cost_micros, content=content,
        content_type=content_type, data={"text": text} if text is not None else None,
    )  # fmt: skip
    return "succeeded"


async def _call_upstream(call: media.MediaRequest, model, routes) -> media.MediaResult:
    try:
        return await media.run(call, model, routes)
    finally:
        # This event loop ends with the job: close its upstream connections.
        await upstream.close_loop_clients()
