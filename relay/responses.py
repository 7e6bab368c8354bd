"""POST /v1/responses: OpenAI's Responses API, passed through to OpenAI-compatible channels.

Held, failed over, metered and settled like a chat completion (logged as one, with the endpoint
"responses"). The body goes upstream as it came but for the mapped model and
max_output_tokens, which is always sent: the client's, or what the hold could cover, as chat
does with max_tokens. Usage comes from the answer or the stream's terminal event
(response.completed, .incomplete or .failed), which gets the cost added. The relay keeps no
responses, so GET /v1/responses/{id} and the other stored-response endpoints answer 501.
"""

import time
from collections.abc import Callable

import orjson
from django.conf import settings

from relay import endpoints, metering, routing, upstream
from relay.adapters import UpstreamRequest
from relay.adapters.anthropic import invalid_response
from relay.calls import CHAT, Call, Endpoint, resolve_model
from relay.http import RelayError, Request, run_until_disconnect
from relay.keys import KeyInfo
from relay.metering import TOKENS_PER_IMAGE, TOKENS_PER_MESSAGE, TOKENS_REPLY_PRIMING, Usage
from relay.streaming import EventMeter, named_event
from tokenbyte.money import ceil_div

# Channel types that speak the Responses API (OpenAI-compatible hosts and the mock upstream).
PASS_THROUGH_TYPES = frozenset({"openai", "mock"})
# Events that end a response, each with the response and its usage.
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Events whose `delta` is output the client receives.
TEXT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
    }
)


def _content_tokens(content: object) -> int:
    if isinstance(content, str):
        return metering.count_text(content)
    total = 0
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            total += metering.count_text(part["text"])
        elif part.get("type") == "input_image":
            total += TOKENS_PER_IMAGE
        else:
            total += ceil_div(len(orjson.dumps(part)), 4)
    return total


def prompt_tokens(body: dict) -> int:
    """Our count of a Responses request's prompt (instructions, input items, tools)."""
    total = TOKENS_REPLY_PRIMING + _content_tokens(body.get("instructions"))
    given = body.get("input")
    if isinstance(given, str):
        total += TOKENS_PER_MESSAGE + metering.count_text(given)
    for item in given if isinstance(given, list) else ():
        if not isinstance(item, dict):
            continue
        total += TOKENS_PER_MESSAGE + _content_tokens(item.get("content"))
        for name in ("output", "arguments", "name"):
            if isinstance(item.get(name), str):
                total += metering.count_text(item[name])
    if body.get("tools"):
        total += metering.count_text(orjson.dumps(body["tools"]).decode())
    return total


RESPONSES = Endpoint(
    "responses", "/v1/responses", frozenset({"chat", "completion"}), "input", prompt_tokens,
    True, max_tokens_field="max_output_tokens",
)  # fmt: skip


def _tokens(value: object) -> int:
    return min(max(0, int(value or 0)), metering.MAX_TOKEN_COUNT)


def usage_of(usage: object) -> Usage | None:
    """Responses usage as the relay's (input_tokens counts the cached ones too, as in chat)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details")
    try:
        return Usage(
            prompt_tokens=_tokens(usage.get("input_tokens")),
            completion_tokens=_tokens(usage.get("output_tokens")),
            cached_tokens=_tokens(details.get("cached_tokens")) if isinstance(details, dict) else 0,
            reported=True,
        )
    except (TypeError, ValueError, OverflowError):
        return None


def usage_body(usage: Usage, reported: object, cost: float) -> dict:
    """The response's usage with the cost added (our count when the upstream sent none)."""
    if isinstance(reported, dict):
        return {**reported, "cost": cost}
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost": cost,
    }


def output_text(response: dict) -> str:
    """The text of a response's output items (function calls included), for counts and excerpts."""
    parts = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            parts.append(str(item.get("name") or "") + str(item.get("arguments") or ""))
        for part in item.get("content") or ():
            if isinstance(part, dict):
                parts.append(str(part.get("text") or part.get("refusal") or ""))
    return "".join(parts)


class ResponsesMeter(EventMeter):
    def __init__(
        self, *, cost_for: Callable[[Usage], float], local_usage: Callable[[int], Usage]
    ) -> None:
        super().__init__(cost_for=cost_for)
        self.local_usage = local_usage
        self.sequence = -1

    def read(self, kind: str, payload: dict, event: bytes) -> bytes | None:
        if isinstance(payload.get("sequence_number"), int):
            self.sequence = payload["sequence_number"]
        if kind in TEXT_DELTAS:
            self.add_text(str(payload.get("delta") or ""))
        elif kind == "response.output_item.added":
            item = payload.get("item") or {}
            if isinstance(item, dict) and item.get("type") == "function_call":
                self.add_text(str(item.get("name") or ""))
        elif kind in TERMINAL_EVENTS:
            return self._terminal(kind, payload, event)
        elif kind == "error":
            self.error = (
                str(payload.get("message") or "The upstream provider reported an error."),
                str(payload.get("code") or "upstream_error"),
            )
            self.done = True
        return event

    def _terminal(self, kind: str, payload: dict, event: bytes) -> bytes:
        self.done = True
        response = payload.get("response")
        if not isinstance(response, dict):
            return event
        if kind == "response.failed":
            error = response.get("error") or {}
            self.error = (
                str(error.get("message") or "The upstream provider could not answer."),
                str(error.get("code") or "upstream_error"),
            )
        usage = usage_of(response.get("usage"))
        if usage is not None:
            self.usage = usage
        else:
            usage = self.local_usage(self.delivered_completion_tokens())
        response["usage"] = usage_body(usage, response.get("usage"), self.cost_for(usage))
        return named_event(kind, payload)

    def error_event(self, message: str, code: str) -> bytes:
        payload = {
            "type": "error", "code": code, "message": message, "param": None,
            "sequence_number": self.sequence + 1,
        }  # fmt: skip
        return named_event("error", payload)


def is_terminal_event(event: bytes) -> bool:
    return event.startswith((b"event: response.completed", b"event: response.incomplete"))


async def serve(request: Request) -> None:
    await endpoints.generation(request, RESPONSES, ResponsesCall)


class ResponsesCall(Call):
    is_final_event = staticmethod(is_terminal_event)

    def __init__(self, request: Request, endpoint: Endpoint, key: KeyInfo, body: dict) -> None:
        super().__init__(request, endpoint, key, body)
        self.outcome.call_type = CHAT.name
        tools = self.body.get("tools")
        if isinstance(tools, list):
            names = [tool.get("name") for tool in tools if isinstance(tool, dict)]
            self.outcome.request_params["tool_names"] = names

    async def prepare(self, snapshot: routing.Snapshot) -> None:
        model = resolve_model(self.body, self.key, snapshot, self.endpoint)
        if not any(route.type in PASS_THROUGH_TYPES for route in snapshot.routes[model.model_id]):
            raise RelayError(
                400, f"/v1/responses is not supported for this model's provider "
                f"({model.provider}); use /v1/chat/completions.",
                code="unsupported_endpoint", param="model",
            )  # fmt: skip
        await super().prepare(snapshot)

    async def run(self) -> None:
        routes = routing.plan(self.model.model_id, settings.RELAY_MAX_ATTEMPTS)
        routes = [route for route in routes if route.type in PASS_THROUGH_TYPES]
        if not routes:
            raise RelayError(
                503, f"No channel is available for the model '{self.model.model_id}' right now.",
                code="no_channel_available",
            )  # fmt: skip
        if self.stream:
            await self._run_stream(routes)
        else:
            await self._run_plain(routes)

    def upstream_request(self, route: routing.Route) -> UpstreamRequest:
        body = {
            **self.body,
            "model": route.upstream_model(self.model.model_id),
            "max_output_tokens": self.max_tokens,
        }
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if route.api_key:
            headers["authorization"] = f"Bearer {route.api_key}"
        return UpstreamRequest(f"{route.base_url}/responses", headers, orjson.dumps(body))

    def answer_of(self, route: routing.Route, data: dict) -> dict:
        if not isinstance(data.get("output"), list):
            raise invalid_response()
        return data

    def stream_reader(self, route: routing.Route, answer: upstream.Answer):
        meter = ResponsesMeter(
            cost_for=lambda u: metering.usd(self.charged_for(u)), local_usage=self.local_usage
        )
        return meter, answer.chunks()

    async def _run_plain(self, routes: list[routing.Route]) -> None:
        request, outcome = self.request, self.outcome
        _, data = await run_until_disconnect(request, self._failover(routes, self._attempt_plain))
        outcome.ttft_ms = round((time.monotonic() - outcome.started) * 1000)
        text = output_text(data)
        usage = usage_of(data.get("usage")) or self.local_usage(metering.count_text(text))
        outcome.usage = usage
        outcome.cost_micros = self.charged_for(usage)
        data["usage"] = usage_body(usage, data.get("usage"), metering.usd(outcome.cost_micros))
        outcome.response_excerpt = text[:500]
        if not self.settle_early:
            await request.respond_json(200, data)
            return
        await request.respond_json(200, data, more=True)
        await self.finish_before_end()
        await request.end_stream()

    async def _send_usage(self, forward, meter) -> None:
        """Nothing to add: the terminal event carries the usage, the provider's or our count."""

    async def _end_failed(self, forward, meter: ResponsesMeter) -> None:
        await forward(meter.error_event(self.outcome.error_message, self.outcome.error_code))
