"""Upstream wire formats. The relay speaks OpenAI's; an adapter translates a channel's format.

An adapter turns the OpenAI-shaped request into the provider's request, the provider's JSON
answer back into OpenAI's, and its stream into OpenAI server-sent events, so metering and the
client see one format whatever the channel.
"""

from dataclasses import dataclass
from typing import Protocol

from relay.routing import Route


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    content: bytes


class StreamTranslator(Protocol):
    def feed(self, data: bytes) -> bytes:
        """Provider stream bytes in, OpenAI SSE bytes out (possibly empty)."""

    def close(self) -> bytes:
        """Whatever is left once the provider's stream has ended."""


class Adapter(Protocol):
    def request(self, route: Route, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        """The provider request for an OpenAI-shaped body (model already mapped)."""

    def response(self, data: dict, model: str) -> dict:
        """The provider's JSON answer as an OpenAI response."""

    def stream(self, model: str, include_usage: bool) -> StreamTranslator | None:
        """A translator for the provider's stream; None when it already is OpenAI SSE."""


_adapters: dict[str, Adapter] = {}


def adapter_for(route: Route) -> Adapter:
    found = _adapters.get(route.type)
    if found is None:
        # Imported on first use: the adapters import this module.
        if route.type == "anthropic":
            from relay.adapters.anthropic import ANTHROPIC as found
        elif route.type == "gemini":
            from relay.adapters.gemini import GEMINI as found
        else:
            from relay.adapters.openai import OPENAI as found
        _adapters[route.type] = found
    return found
