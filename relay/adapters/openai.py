"""OpenAI and OpenAI-compatible hosts (and the mock upstream): a pass-through."""

import orjson

from relay.adapters import StreamTranslator, UpstreamRequest
from relay.routing import Route

PATHS = {
    "chat.completions": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


class OpenAIAdapter:
    def request(self, route: Route, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if route.api_key:
            headers["authorization"] = f"Bearer {route.api_key}"
        return UpstreamRequest(f"{route.base_url}{PATHS[endpoint]}", headers, orjson.dumps(body))

    def response(self, data: dict, model: str) -> dict:
        return data

    def stream(self, model: str, include_usage: bool) -> StreamTranslator | None:
        return None


OPENAI = OpenAIAdapter()
