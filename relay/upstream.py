"""Calls to upstream providers over one pooled HTTP client per process (per event loop).

The client is aiohttp, called directly: against httpx (even over its aiohttp transport) it
halves the CPU the relay spends per upstream call, which is most of what bounds throughput on
one core. `RELAY_UPSTREAM_CLIENT` may name another client instead: the dotted path of a module
with the same `send(upstream, route)` and `close_clients()` coroutine functions (the benchmark's
httpx clients, bench/upstream_httpx.py, are measured that way).
"""

import asyncio
import functools
import importlib
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Protocol

import aiohttp
import orjson
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from relay.adapters import UpstreamRequest
from relay.routing import Route

MAX_CONNECTIONS = 2000
MAX_IDLE_CONNECTIONS = 500


class UpstreamFailure(Exception):
    """A failed attempt on one channel. `retryable` failures move the call to the next channel."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        retryable: bool,
        retry_after: str | None = None,
        body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        self.body = body


class BrokenStream(Exception):
    """The upstream connection failed after the answer began; `name` says how, `failure` is
    what to answer if nothing had reached the client yet."""

    def __init__(self, name: str, failure: UpstreamFailure | None = None) -> None:
        super().__init__(name)
        self.name = name
        self.failure = failure


class Answer(Protocol):
    """An upstream response whose body has not been read yet (one class per HTTP client)."""

    status: int

    def header(self, name: str) -> str | None: ...

    async def read(self) -> bytes:
        """The whole body; a transport failure raises UpstreamFailure."""

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a transport failure raises BrokenStream."""

    async def close(self) -> None:
        """Give the connection back (or drop it when the body was not read to its end)."""


# --- aiohttp ------------------------------------------------------------------------------------


class AiohttpAnswer:
    __slots__ = ("response", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.status = response.status

    def header(self, name: str) -> str | None:
        return self.response.headers.get(name)

    async def read(self) -> bytes:
        try:
            return await self.response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise failure_from_exception(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self.response.content.iter_any():
                yield data
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise BrokenStream(type(exc).__name__, failure_from_exception(exc)) from exc

    async def close(self) -> None:
        self.response.release()


_sessions: dict[int, aiohttp.ClientSession] = {}


def _session() -> aiohttp.ClientSession:
    loop_id = id(asyncio.get_running_loop())
    found = _sessions.get(loop_id)
    if found is None or found.closed:
        found = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0),
            trust_env=False,
            # What the adapters send is what goes out (no default accept or user agent).
            skip_auto_headers=("User-Agent",),
        )
        _sessions[loop_id] = found
    return found


@functools.lru_cache(maxsize=256)
def _aiohttp_timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    # Per read, like httpx's: a long stream is fine as long as it keeps sending.
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)


async def _send_aiohttp(upstream: UpstreamRequest, route: Route) -> Answer:
    try:
        response = await _session().post(
            upstream.url,
            data=upstream.content,
            headers=upstream.headers,
            timeout=_aiohttp_timeout(route.connect_timeout, route.read_timeout),
            allow_redirects=False,
        )
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise failure_from_exception(exc) from exc
    return AiohttpAnswer(response)


# --- common -------------------------------------------------------------------------------------


@functools.cache
def client_module() -> ModuleType | None:
    """The module RELAY_UPSTREAM_CLIENT names (imported on first use), None for aiohttp."""
    if settings.RELAY_UPSTREAM_CLIENT == "aiohttp":
        return None
    module = importlib.import_module(settings.RELAY_UPSTREAM_CLIENT)
    if not all(callable(getattr(module, name, None)) for name in ("send", "close_clients")):
        raise ImproperlyConfigured(
            f"RELAY_UPSTREAM_CLIENT {module.__name__} has no send() and close_clients()."
        )
    return module


async def send(upstream: UpstreamRequest, route: Route) -> Answer:
    """Send the request; the answer's status and headers are in, its body is not read yet."""
    client = client_module()
    if client is None:
        return await _send_aiohttp(upstream, route)
    return await client.send(upstream, route)


async def close_loop_clients() -> None:
    """Close the session of the running event loop only (a job's loop that is about to end;
    the relay's own loop keeps its sessions)."""
    session = _sessions.pop(id(asyncio.get_running_loop()), None)
    if session is not None:
        await session.close()
    client = client_module()
    if client is not None:
        await client.close_clients()


async def close_clients() -> None:
    for session in list(_sessions.values()):
        await session.close()
    _sessions.clear()
    client = client_module()
    if client is not None:
        await client.close_clients()


def failure_from_exception(exc: BaseException) -> UpstreamFailure:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamFailure(
            502, "The upstream provider closed the connection without answering.",
            code="upstream_error", retryable=True,
        )  # fmt: skip
    if isinstance(exc, TimeoutError):
        return timed_out()
    if isinstance(exc, aiohttp.ClientConnectorError):
        return unreachable()
    return UpstreamFailure(
        502, f"The upstream connection failed: {type(exc).__name__}.", code="upstream_error",
        retryable=True,
    )  # fmt: skip


def timed_out() -> UpstreamFailure:
    return UpstreamFailure(
        504, "The upstream provider did not answer in time.", code="upstream_timeout",
        retryable=True,
    )  # fmt: skip


def unreachable() -> UpstreamFailure:
    return UpstreamFailure(
        503, "The upstream provider could not be reached.", code="upstream_unavailable",
        retryable=True,
    )  # fmt: skip


async def failure_from_answer(answer: Answer) -> UpstreamFailure:
    """Classify a non-2xx upstream answer (its body is read: error bodies are small)."""
    return failure_from_status(answer.status, await answer.read(), answer.header("retry-after"))


def failure_from_status(status: int, body: bytes, retry_after: str | None) -> UpstreamFailure:
    if status == 429:
        return UpstreamFailure(
            429, "The upstream provider is rate limiting; try again shortly.",
            code="upstream_rate_limited", retryable=True,
            retry_after=retry_after, body=body,
        )  # fmt: skip
    if status >= 500:
        return UpstreamFailure(
            502, f"The upstream provider failed with HTTP {status}.", code="upstream_error",
            retryable=True, body=body,
        )  # fmt: skip
    if status in (401, 403):
        # Our credentials for this channel, not the caller's: try another channel.
        return UpstreamFailure(
            502, "The upstream provider refused the relay's credentials.",
            code="upstream_auth_failed", retryable=True, body=body,
        )  # fmt: skip
    # 400, 404, 422…: the request itself is wrong; another channel would say the same.
    return UpstreamFailure(
        status, _upstream_message(body) or f"The upstream provider answered HTTP {status}.",
        code="upstream_rejected", retryable=False, body=body,
    )  # fmt: skip


def _upstream_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
    return ""
