"""The relay's ASGI application, mounted at /v1 by tokenbyte.asgi."""

import asyncio
import contextlib
import ctypes
import gc
import logging
from collections.abc import Awaitable

from django.conf import settings
from django.db import InterfaceError, OperationalError

from billing import settlement
from relay import alerts, endpoints, jobs, media, messages, metering, ratelimit, responses, upstream
from relay.calls import CHAT, COMPLETIONS, EMBEDDINGS
from relay.http import ClientDisconnected, Receive, RelayError, Request, Scope, Send
from tokenbyte import db, pg

logger = logging.getLogger(__name__)

# Allocations (net of frees) before a young-generation collection; CPython's default is 700.
GC_YOUNG_THRESHOLD = 10_000
# How long a stopping process waits for its background work (channel bookkeeping, key reloads).
SHUTDOWN_DRAIN_SECONDS = 10
DATABASE_UNAVAILABLE = RelayError(
    503, "The relay's database is unavailable right now; try again shortly.",
    code="database_unavailable", headers={"retry-after": "1"},
)  # fmt: skip

POST_ROUTES = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
}
GET_METHODS = ("GET", "HEAD")
ALLOW_POST = {"allow": "POST"}
ALLOW_GET = {"allow": "GET, HEAD"}
# OpenAI endpoints this relay knows but does not serve yet: 501, not 404.
NOT_IMPLEMENTED = {
    "/v1/images/variations",
}
ALLOW_TASKS = {"allow": "GET, HEAD, POST"}
# Other APIs' formats: Anthropic's Messages, OpenAI's Responses (stateless: creating only).
FORMAT_ROUTES = {
    "/v1/messages": messages.serve,
    "/v1/responses": responses.serve,
}


async def dispatch(request: Request) -> None:
    path = request.path.rstrip("/") or "/"
    method = request.method
    endpoint = POST_ROUTES.get(path)
    if endpoint is not None:
        if method != "POST":
            raise RelayError(
                405, f"Use POST for {path}.", code="method_not_allowed", headers=ALLOW_POST
            )
        await endpoints.generation(request, endpoint)
        return
    kind = media.PATHS.get(path)
    if kind is not None:
        if method != "POST":
            raise RelayError(
                405, f"Use POST for {path}.", code="method_not_allowed", headers=ALLOW_POST
            )
        await endpoints.media_call(request, kind)
        return
    serve = FORMAT_ROUTES.get(path)
    if serve is not None or path.startswith("/v1/messages/"):
        if path.startswith("/v1/messages"):
            messages.anthropic_errors(request)
        if serve is None:
            # count_tokens and batches: not served by this relay.
            raise RelayError(
                501, f"{path} is not implemented by this relay.", code="not_implemented"
            )
        if method != "POST":
            raise RelayError(
                405, f"Use POST for {path}.", code="method_not_allowed", headers=ALLOW_POST
            )
        await serve(request)
        return
    # HEAD is answered as GET; the server sends the head of the response without its body.
    if path == "/v1/models":
        if method not in GET_METHODS:
            raise RelayError(
                405, f"Use GET for {path}.", code="method_not_allowed", headers=ALLOW_GET
            )
        await endpoints.models_list(request)
        return
    if path.startswith("/v1/models/") and method in GET_METHODS:
        await endpoints.model_detail(request, path.removeprefix("/v1/models/"))
        return
    if path == "/v1/tasks":
        if method == "POST":
            await jobs.submit(request)
        elif method in GET_METHODS:
            await jobs.listing(request)
        else:
            raise RelayError(405, f"Use GET or POST for {path}.", code="method_not_allowed",
                             headers=ALLOW_TASKS)  # fmt: skip
        return
    if path.startswith("/v1/tasks/") and method in GET_METHODS:
        await jobs.retrieve(request, path.removeprefix("/v1/tasks/"))
        return
    if path in NOT_IMPLEMENTED or path.startswith("/v1/responses/"):
        raise RelayError(501, f"{path} is not implemented by this relay.", code="not_implemented")
    raise RelayError(404, f"Invalid URL ({method} {path}).", code="unknown_url")


class RelayApp:
    """The relay's ASGI app and its process state: background work is started with spawn(),
    and shutdown waits for it (settlements first: a stopping server must not drop one)."""

    def __init__(self) -> None:
        self._started = False
        self._background: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        # The catalog's reload in the background (one at a time).
        self.catalog_refresh: asyncio.Task | None = None

    def spawn(self, coroutine: Awaitable) -> asyncio.Task:
        """Run `coroutine` in the background, kept referenced until it finishes."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if not self._started:
            # Servers without the lifespan protocol (daphne) start us on the first request.
            await self.startup()
        request = Request(scope, receive, send, self)
        try:
            await dispatch(request)
        except RelayError as error:
            await request.respond_error(error)
        except ClientDisconnected:
            pass
        except (pg.DatabaseUnavailable, OperationalError, InterfaceError) as exc:
            logger.warning("database unavailable for %s: %s", request.request_id, exc)
            await request.respond_error(DATABASE_UNAVAILABLE)
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
        # Drains the settlement outbox (what this or a dead process left) and keeps leases.
        self._loops.append(asyncio.ensure_future(settlement.upkeep()))
        if settings.RELAY_INPROCESS_SCHEDULER:
            from relay.scheduler import run_periodic_jobs

            self._loops.append(asyncio.ensure_future(run_periodic_jobs()))

    async def shutdown(self) -> None:
        for loop in self._loops:
            loop.cancel()
        self._loops = []
        self._started = False
        if self._background:
            await asyncio.wait(self._background, timeout=SHUTDOWN_DRAIN_SECONDS)
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
