"""Calls to upstream providers: one shared httpx.AsyncClient per process (per event loop)."""

import asyncio

import aiohttp
import httpx
import orjson
from django.conf import settings
from httpx_aiohttp import AiohttpTransport

from relay.routing import Route

_clients: dict[int, httpx.AsyncClient] = {}


def client() -> httpx.AsyncClient:
    """The process's pooled client (one per running event loop)."""
    loop_id = id(asyncio.get_running_loop())
    found = _clients.get(loop_id)
    if found is None or found.is_closed:
        limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500)
        found = httpx.AsyncClient(
            # aiohttp underneath: the same httpx API at about half the CPU per request of
            # httpcore, whose pool scans every connection on each request.
            transport=AiohttpTransport(limits=limits, trust_env=False),
            timeout=httpx.Timeout(120.0, connect=settings.RELAY_CONNECT_TIMEOUT_SECONDS),
            follow_redirects=False,
            trust_env=False,
        )
        _clients[loop_id] = found
    return found


async def close_clients() -> None:
    for found in list(_clients.values()):
        await found.aclose()
    _clients.clear()


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


def timeout_for(route: Route) -> httpx.Timeout:
    return httpx.Timeout(route.read_timeout, connect=route.connect_timeout)


def failure_from_exception(exc: Exception) -> UpstreamFailure:
    if isinstance(exc.__cause__, aiohttp.ServerDisconnectedError):
        # The transport files a closed connection under ConnectTimeout; it is neither.
        return UpstreamFailure(
            502, "The upstream provider closed the connection without answering.",
            code="upstream_error", retryable=True,
        )  # fmt: skip
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamFailure(
            504, "The upstream provider did not answer in time.", code="upstream_timeout",
            retryable=True,
        )  # fmt: skip
    if isinstance(exc, httpx.ConnectError):
        return UpstreamFailure(
            503, "The upstream provider could not be reached.", code="upstream_unavailable",
            retryable=True,
        )  # fmt: skip
    return UpstreamFailure(
        502, f"The upstream connection failed: {type(exc).__name__}.", code="upstream_error",
        retryable=True,
    )  # fmt: skip


async def failure_from_response(response: httpx.Response) -> UpstreamFailure:
    """Classify a non-2xx upstream answer (the body is read, it is small)."""
    body = await response.aread()
    status = response.status_code
    if status == 429:
        return UpstreamFailure(
            429, "The upstream provider is rate limiting; try again shortly.",
            code="upstream_rate_limited", retryable=True,
            retry_after=response.headers.get("retry-after"), body=body,
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
