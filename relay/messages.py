"""POST /v1/messages: Anthropic's Messages API in front of any channel serving the model.

The call is held, failed over, metered and settled like a chat completion (it is logged as one,
with the endpoint "messages"); what differs is the format on both sides. Anthropic channels get
the client's body as it came (model mapped, max_tokens as held); other channels get it as an
OpenAI chat body and their answer comes back as an Anthropic message or event stream. Every
error of this endpoint is in Anthropic's shape, a failure mid-stream an `error` event.
"""

import time

import orjson

from billing.holds import Prices, prices_with_cache_writes
from relay import endpoints, metering, routing, upstream
from relay.adapters import UpstreamRequest, adapter_for
from relay.adapters import messages as formats
from relay.adapters.anthropic import invalid_response
from relay.calls import CHAT, Call, Endpoint, _translated
from relay.http import RelayError, Request, run_until_disconnect
from relay.keys import KeyInfo

MESSAGES = Endpoint(
    "messages", "/v1/messages", frozenset({"chat", "completion"}), "messages",
    formats.prompt_tokens, True, max_tokens_field="max_tokens",
)  # fmt: skip
# The client's Anthropic headers, passed on to Anthropic channels (a beta feature needs its own).
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")


def anthropic_errors(request: Request) -> None:
    """Answer this request's errors in Anthropic's shape."""
    request.error_body = formats.error_body


async def serve(request: Request) -> None:
    anthropic_errors(request)
    if not request.headers.get("anthropic-version"):
        raise RelayError(400, "anthropic-version: header is required", param="anthropic-version")
    await endpoints.generation(request, MESSAGES, MessagesCall)


class MessagesCall(Call):
    is_final_event = staticmethod(formats.is_stop_event)

    def __init__(self, request: Request, endpoint: Endpoint, key: KeyInfo, body: dict) -> None:
        super().__init__(request, endpoint, key, body)
        # Logged as the chat call it is; its endpoint says which format it came in.
        self.outcome.call_type = CHAT.name
        tools = self.body.get("tools")
        if isinstance(tools, list):
            names = [tool.get("name") for tool in tools if isinstance(tool, dict)]
            self.outcome.request_params["tool_names"] = names
        self._chat_body: dict | None = None

    def hold_prices(self, model: routing.ModelInfo) -> Prices:
        # A cache_control block may make the provider write any prompt token to its cache.
        return prices_with_cache_writes(model)

    async def prepare(self, snapshot: routing.Snapshot) -> None:
        if self.body.get("max_tokens") is None:
            raise RelayError(
                400, "max_tokens: Field required", param="max_tokens",
                code="missing_required_parameter",
            )  # fmt: skip
        await super().prepare(snapshot)

    def upstream_request(self, route: routing.Route) -> UpstreamRequest:
        model = route.upstream_model(self.model.model_id)
        if route.type == formats.PROVIDER_TYPE:
            body = {**self.body, "model": model, "max_tokens": self.max_tokens}
            if self.stream:
                body["stream"] = True
            else:
                body.pop("stream", None)
            headers = {"content-type": "application/json", "accept-encoding": "identity"}
            for name in FORWARDED_HEADERS:
                if self.request.headers.get(name):
                    headers[name] = self.request.headers[name]
            if route.api_key:
                headers["x-api-key"] = route.api_key
            return UpstreamRequest(f"{route.base_url}/messages", headers, orjson.dumps(body))
        if self._chat_body is None:
            self._chat_body = formats.chat_request(self.body)
        body = {**self._chat_body, "model": model}
        reasoning = "reasoning" in self.model.capabilities
        body["max_completion_tokens" if reasoning else "max_tokens"] = self.max_tokens
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return adapter_for(route).request(route, CHAT.name, body, self.stream)

    def answer_of(self, route: routing.Route, data: dict) -> dict:
        if route.type == formats.PROVIDER_TYPE:
            if not isinstance(data.get("content"), list):
                raise invalid_response()
            return data
        chat = adapter_for(route).response(data, self.outcome.upstream_model)
        return formats.message_response(chat, self.outcome.upstream_model)

    def stream_reader(self, route: routing.Route, answer: upstream.Answer):
        meter = formats.MessagesMeter(
            cost_for=lambda u: metering.usd(self.charged_for(u)), local_usage=self.local_usage
        )
        if route.type == formats.PROVIDER_TYPE:
            return meter, answer.chunks()
        model = self.outcome.upstream_model
        translator = formats.MessagesStream(model, adapter_for(route).stream(model, True))
        return meter, _translated(answer, translator)

    async def _run_plain(self, routes: list[routing.Route]) -> None:
        request, outcome = self.request, self.outcome
        _, data = await run_until_disconnect(request, self._failover(routes, self._attempt_plain))
        outcome.ttft_ms = round((time.monotonic() - outcome.started) * 1000)
        text = formats.message_text(data)
        usage = formats.usage_of(data.get("usage")) or self.local_usage(metering.count_text(text))
        outcome.usage = usage
        outcome.cost_micros = self.charged_for(usage)
        reported = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        data["usage"] = {
            **reported,
            **formats.usage_body(usage),
            "cost": metering.usd(outcome.cost_micros),
        }
        outcome.response_excerpt = text[:500]
        if not self.settle_early:
            await request.respond_json(200, data)
            return
        await request.respond_json(200, data, more=True)
        await self.finish_before_end()
        await request.end_stream()

    async def _send_usage(self, forward, meter) -> None:
        """Nothing to add: message_delta carries the usage, the provider's or our count."""

    async def _end_failed(self, forward, meter) -> None:
        await forward(formats.error_event(self.outcome.error_message, self.outcome.error_code))
