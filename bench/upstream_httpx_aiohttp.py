"""httpx over the httpx-aiohttp transport as the relay's upstream client, for the benchmark:
RELAY_UPSTREAM_CLIENT=bench.upstream_httpx_aiohttp (see bench/upstream_httpx.py)."""

from bench import upstream_httpx
from bench.upstream_httpx import close_clients
from relay.adapters import UpstreamRequest
from relay.routing import Route
from relay.upstream import Answer

__all__ = ["close_clients", "send"]


async def send(upstream: UpstreamRequest, route: Route) -> Answer:
    return await upstream_httpx.send(upstream, route, aiohttp_transport=True)
