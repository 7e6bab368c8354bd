"""httpx as the relay's upstream client, kept so the benchmark can measure it against aiohttp
called directly (relay/upstream.py): RELAY_UPSTREAM_CLIENT=bench.upstream_httpx for httpx's own
transport, bench.upstream_httpx_aiohttp for the httpx-aiohttp transport."""

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx

from relay.adapters import UpstreamRequest
from relay.routing import Route
from relay.upstream import (
    MAX_CONNECTIONS,
    MAX_IDLE_CONNECTIONS,
    Answer,
    BrokenStream,
    UpstreamFailure,
    failure_from_exception,
    timed_out,
    unreachable,
)


def failure_from_httpx(exc: httpx.HTTPError) -> UpstreamFailure:
    if isinstance(exc.__cause__, aiohttp.ClientError):
        # The aiohttp transport files refused and closed connections under ConnectTimeout;
        # the aiohttp error underneath says what happened.
        return failure_from_exception(exc.__cause__)
    if isinstance(exc, httpx.TimeoutException):
        return timed_out()
    if isinstance(exc, httpx.ConnectError):
        return unreachable()
    return failure_from_exception(exc)


class HttpxAnswer:
    __slots__ = ("response", "status")

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code

    def header(self, name: str) -> str | None:
        return self.response.headers.get(name)

    async def read(self) -> bytes:
        try:
            return await self.response.aread()
        except httpx.HTTPError as exc:
            raise failure_from_httpx(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self.response.aiter_raw():
                yield data
        except httpx.HTTPError as exc:
            raise BrokenStream(type(exc).__name__, failure_from_httpx(exc)) from exc

    async def close(self) -> None:
        await self.response.aclose()


_clients: dict[tuple[int, bool], httpx.AsyncClient] = {}


def _client(aiohttp_transport: bool) -> httpx.AsyncClient:
    key = (id(asyncio.get_running_loop()), aiohttp_transport)
    found = _clients.get(key)
    if found is None or found.is_closed:
        limits = httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_IDLE_CONNECTIONS
        )
        transport = None
        if aiohttp_transport:
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=limits, trust_env=False)
        found = httpx.AsyncClient(
            transport=transport, limits=limits, follow_redirects=False, trust_env=False
        )
        _clients[key] = found
    return found


async def send(
    upstream: UpstreamRequest, route: Route, *, aiohttp_transport: bool = False
) -> Answer:
    http = _client(aiohttp_transport)
    request = http.build_request(
        "POST", upstream.url, content=upstream.content, headers=upstream.headers,
        timeout=httpx.Timeout(route.read_timeout, connect=route.connect_timeout),
    )  # fmt: skip
    try:
        response = await http.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise failure_from_httpx(exc) from exc
    return HttpxAnswer(response)


async def close_clients() -> None:
    for client in list(_clients.values()):
        await client.aclose()
    _clients.clear()
