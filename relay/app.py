"""The relay's ASGI application, mounted at /v1 by tokenbyte.asgi."""

import asyncio
import contextlib
import ctypes
import gc
import logging

from django.conf import settings

from relay import alerts, db, metering, pg, ratelimit, upstream, views
from relay.http import ClientDisconnected, Receive, RelayError, Request, Scope, Send

logger = logging.getLogger(__name__)

# Allocations (net of frees) before a young-generation collection; CPython's default is 700.
GC_YOUNG_THRESHOLD = 10_000

POST_ROUTES = {
    "/v1/chat/completions": views.CHAT,
    "/v1/completions": views.COMPLETIONS,
    "/v1/embeddings": views.EMBEDDINGS,
}
# OpenAI endpoints this relay knows but does not serve yet: 501, not 404.
NOT_IMPLEMENTED = {
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/images/variations",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/moderations",
    "/v1/responses",
    "/v1/tasks",
}


async def dispatch(request: Request) -> None:
    path = request.path.rstrip("/") or "/"
    method = request.method
    endpoint = POST_ROUTES.get(path)
    if endpoint is not None:
        if method != "POST":
            raise RelayError(405, f"Use POST for {path}.", code="method_not_allowed")
        await views.generation(request, endpoint)
        return
    if path == "/v1/models":
        if method != "GET":
            raise RelayError(405, f"Use GET for {path}.", code="method_not_allowed")
        await views.models_list(request)
        return
    if path.startswith("/v1/models/") and method == "GET":
        await views.model_detail(request, path.removeprefix("/v1/models/"))
        return
    if path in NOT_IMPLEMENTED or path.startswith("/v1/tasks/"):
        raise RelayError(501, f"{path} is not implemented by this relay.", code="not_implemented")
    raise RelayError(404, f"Invalid URL ({method} {path}).", code="unknown_url")


class RelayApp:
    def __init__(self) -> None:
        self._scheduler: asyncio.Task | None = None
        self._started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if not self._started:
            # Servers without the lifespan protocol (daphne) start us on the first request.
            await self.startup()
        request = Request(scope, receive, send)
        try:
            await dispatch(request)
        except RelayError as error:
            await request.respond_error(error)
        except ClientDisconnected:
            pass
        except Exception:
            logger.exception("relay bug while serving %s %s", request.method, request.path)
            await request.respond_error(
                RelayError(500, "The relay failed to handle this request.", code="internal_error")
            )

    async def startup(self) -> None:
        if self._started:
            return
        self._started = True
        # Load the tokenizer now rather than on the first call.
        await asyncio.get_running_loop().run_in_executor(None, metering.encoding)
        release_free_memory()
        settle_garbage_collector()
        if settings.RELAY_INPROCESS_SCHEDULER and self._scheduler is None:
            from relay.scheduler import run_periodic_jobs

            self._scheduler = asyncio.ensure_future(run_periodic_jobs())

    async def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            self._scheduler = None
        self._started = False
        await alerts.drain()
        await ratelimit.close()
        await upstream.close_clients()
        await pg.close()
        await asyncio.get_running_loop().run_in_executor(None, db.shutdown)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def settle_garbage_collector() -> None:
    """Keep the cyclic collector off the start-up heap: everything loaded so far (Django, the
    models, the tokenizer) lives as long as the process, yet a full collection walks all of it.
    Frozen, it is skipped: under load the collector's share of the relay's CPU (perf) went from
    about 4 % to too little to show. The young generation is also collected less often (a call
    allocates and frees hundreds of containers, nearly all by reference counting)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def release_free_memory() -> None:
    """Hand the heap freed by start-up (the tokenizer's load) back to the OS (glibc only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


application = RelayApp()
