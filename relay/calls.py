"""One relayed generation call, from its parsed body to its settlement.

The relay is transport: it parses and checks the call, asks billing to hold its worst case,
streams the upstream's answer through (failover in relay/failover.py), and hands billing a
CallCharge to settle. What the call cost is decided here from the usage; everything about
money and the log row's writing is billing's.

The charging rule for failures: a call whose upstream fails before any content reaches the
client (a 502/504, a stream that breaks or turns malformed before its first content) is free,
streamed or not; once content has been delivered, the call is charged for its prompt and the
output delivered (the provider's usage when it sent one, our count otherwise).
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
from django.conf import settings
from django.utils import timezone

from billing import settlement
from billing.holds import CallCharge, HoldRequest, Prices
from relay import alerts, keys, metering, ratelimit, routing, upstream
from relay.adapters import UpstreamRequest, adapter_for
from relay.failover import failover
from relay.http import ClientDisconnected, RelayError, Request, run_until_disconnect
from relay.streaming import SSEMeter, done_event, error_event, is_done_event, usage_event
from relay.upstream import BrokenStream, UpstreamFailure

logger = logging.getLogger(__name__)

# Body fields copied into the log's request parameters (contents of messages are not).
CONTENT_FIELDS = ("messages", "prompt", "input", "tools", "functions", "system", "instructions")
# Status logged for a call whose client hung up first (nginx's convention).
CLIENT_CLOSED = 499
# Completions default to 16 output tokens when max_tokens is absent (OpenAI's documented default).
LEGACY_COMPLETIONS_DEFAULT_MAX_TOKENS = 16
FALLBACK_MAX_OUTPUT_TOKENS = 4096
# token id -> monotonic time of this process's last last_used_at write.
_last_used_written: dict[int, float] = {}
LAST_USED_INTERVAL_SECONDS = 60


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str  # the public path
    call_types: frozenset[str]
    required: str  # the body field that must be present
    count_prompt: Callable[[dict], int]
    has_output: bool
    # The body field capping the output (for endpoints other than chat and completions).
    max_tokens_field: str | None = None


CHAT = Endpoint(
    "chat.completions", "/v1/chat/completions", frozenset({"chat", "completion"}), "messages",
    metering.chat_prompt_tokens, True,
)  # fmt: skip
COMPLETIONS = Endpoint(
    "completions", "/v1/completions", frozenset({"chat", "completion"}), "prompt",
    metering.completion_prompt_tokens, True,
)  # fmt: skip
EMBEDDINGS = Endpoint(
    "embeddings", "/v1/embeddings", frozenset({"embedding"}), "input",
    metering.embedding_input_tokens, False,
)  # fmt: skip


def _int_param(body: dict, name: str, minimum: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RelayError(
            400, f"'{name}' must be an integer of at least {minimum}.", param=name,
            code="invalid_value",
        )  # fmt: skip
    return value


def resolve_model(
    body: dict, key: keys.KeyInfo, snapshot: routing.Snapshot, endpoint: Endpoint
) -> routing.ModelInfo:
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise RelayError(400, "You must provide a model parameter.", param="model")
    if key.allowed_models and model_id not in key.allowed_models:
        raise RelayError(
            403, f"This API key is not allowed to use the model '{model_id}'.",
            code="model_not_allowed", param="model",
        )  # fmt: skip
    model = snapshot.models.get(model_id)
    if model is None:
        raise RelayError(
            404, f"The model '{model_id}' does not exist or you do not have access to it.",
            code="model_not_found", param="model",
        )  # fmt: skip
    if model.call_type not in endpoint.call_types:
        raise RelayError(
            400, f"The model '{model_id}' is a {model.call_type} model and cannot be used with "
            f"{endpoint.path}.", code="model_not_supported", param="model",
        )  # fmt: skip
    if not snapshot.routes.get(model_id):
        raise RelayError(
            503, f"No channel is available for the model '{model_id}' right now.",
            code="no_channel_available",
        )  # fmt: skip
    return model


def loggable_params(body: dict) -> dict:
    params = {k: v for k, v in body.items() if k not in CONTENT_FIELDS}
    for name in CONTENT_FIELDS:
        if isinstance(body.get(name), list):
            params[f"{name}_count"] = len(body[name])
    if isinstance(body.get("tools"), list):
        params["tool_names"] = [
            (t.get("function") or {}).get("name") for t in body["tools"] if isinstance(t, dict)
        ]
    return params


# Fire-and-forget work (channel bookkeeping) kept referenced until it finishes.
_background: set[asyncio.Task] = set()


@dataclass
class Outcome:
    """What happened to a call, for settlement and its log row."""

    request_id: str
    key: keys.KeyInfo
    model_id: str
    call_type: str
    endpoint: str
    is_stream: bool
    client_ip: str | None
    request_params: dict
    hold_micros: int = 0
    status_code: int = 200
    usage: metering.Usage = field(default_factory=metering.Usage)
    cost_micros: int = 0
    upstream_model: str = ""
    channel_id: int | None = None
    channel_name: str = ""
    attempts: int = 0
    error_code: str = ""
    error_message: str = ""
    response_excerpt: str = ""
    started: float = field(default_factory=time.monotonic)
    ttft_ms: int | None = None
    # A hold was taken (and must be settled or released).
    held: bool = False

    @property
    def used_tokens(self) -> int:
        return self.usage.prompt_tokens + self.usage.completion_tokens


def log_row(outcome: "Outcome", now: datetime) -> dict:
    """The request log row's columns (by attname), cost excluded: the settlement decides it."""
    duration_ms = round((time.monotonic() - outcome.started) * 1000)
    key = outcome.key
    return {
        "request_id": outcome.request_id,
        "created_at": now - timedelta(milliseconds=duration_ms),
        "user_id": key.owner_id,
        "organization_id": key.organization_id,
        "api_token_id": key.key_id,
        "token_name": key.name,
        "group_id": key.group_id,
        "group_name": key.group_name,
        "model_id": outcome.model_id,
        "upstream_model": outcome.upstream_model,
        "call_type": outcome.call_type,
        "endpoint": outcome.endpoint,
        "is_stream": outcome.is_stream,
        "status_code": outcome.status_code,
        "duration_ms": duration_ms,
        "ttft_ms": outcome.ttft_ms,
        "prompt_tokens": outcome.usage.prompt_tokens,
        "completion_tokens": outcome.usage.completion_tokens,
        "cached_tokens": outcome.usage.cached_tokens,
        "cache_write_tokens": outcome.usage.cache_write_tokens,
        "channel_id": outcome.channel_id,
        "channel_name": outcome.channel_name,
        "attempts": outcome.attempts,
        "error_code": outcome.error_code,
        "error_message": _loggable(outcome.error_message[:2000]),
        "client_ip": outcome.client_ip,
        "request_params": outcome.request_params,
        "response_excerpt": _loggable(outcome.response_excerpt[:500]),
    }


async def settle_outcome(outcome: "Outcome", admission: "ratelimit.Admission | None") -> None:
    """A finished call's last steps, for every endpoint: correct the TPM windows, then settle
    (so a later call sees both) and check the alerts."""
    await ratelimit.correct(admission, outcome.used_tokens)
    settled = await settlement.call_settle(charge_of(outcome))
    if not settled.queued:
        alerts.after_settlement(outcome.key, settled)


class Call:
    """One relayed generation call, from its parsed body to its settlement."""

    # Whether a stream's event is its end marker (held back for keys that settle first).
    is_final_event = staticmethod(is_done_event)

    def __init__(self, request: Request, endpoint: Endpoint, key: keys.KeyInfo, body: dict):
        self.request = request
        self.endpoint = endpoint
        self.key = key
        self.body = body
        self.stream = bool(body.get("stream")) and endpoint.has_output
        stream_options = body.get("stream_options")
        self.show_usage = bool(
            isinstance(stream_options, dict) and stream_options.get("include_usage")
        )
        self.model: routing.ModelInfo
        self.prompt_tokens = 0
        self.outcome = Outcome(
            request_id=request.request_id,
            key=key,
            model_id=str(body.get("model") or ""),
            call_type=endpoint.name,
            endpoint=endpoint.name,
            is_stream=self.stream,
            client_ip=keys.client_ip(request),
            request_params=loggable_params(body),
        )
        self.max_tokens_param: str | None = None
        self.max_tokens: int | None = None
        self.admission: ratelimit.Admission | None = None
        self.settle_early = key.settles_before_reply
        self._finished = False

    # The request as each channel receives it (in OpenAI's shape; the adapter translates).
    def upstream_request(self, route: routing.Route) -> UpstreamRequest:
        body = dict(self.body)
        body["model"] = route.upstream_model(self.model.model_id)
        if self.max_tokens_param and self.max_tokens is not None:
            body[self.max_tokens_param] = self.max_tokens
        if self.stream:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return adapter_for(route).request(route, self.endpoint.name, body, self.stream)

    def hold_prices(self, model: routing.ModelInfo) -> Prices:
        """The prices the hold assumes (a call that may write the prompt cache holds more)."""
        return model

    def charged_for(self, usage: metering.Usage) -> int:
        return min(metering.cost_micros(self.model, usage), self.outcome.hold_micros)

    def local_usage(self, completion_tokens: int) -> metering.Usage:
        return metering.Usage(
            prompt_tokens=self.prompt_tokens, completion_tokens=completion_tokens, reported=False
        )

    async def prepare(self, snapshot: routing.Snapshot) -> None:
        body = self.body
        self.model = resolve_model(body, self.key, snapshot, self.endpoint)
        if body.get(self.endpoint.required) in (None, "", []):
            raise RelayError(
                400, f"Missing required parameter: '{self.endpoint.required}'.",
                param=self.endpoint.required, code="missing_required_parameter",
            )  # fmt: skip
        if self.endpoint is CHAT and not isinstance(body["messages"], list):
            raise RelayError(400, "'messages' must be an array.", param="messages")
        n = _int_param(body, "n") or 1
        self.prompt_tokens = self.endpoint.count_prompt(body)
        requested = None
        if self.endpoint is CHAT:
            requested = _int_param(body, "max_completion_tokens")
            if requested is None:
                requested = _int_param(body, "max_tokens")
            self.max_tokens_param = (
                "max_completion_tokens"
                if "max_completion_tokens" in body or "reasoning" in self.model.capabilities
                else "max_tokens"
            )
        elif self.endpoint is COMPLETIONS:
            requested = _int_param(body, "max_tokens") or LEGACY_COMPLETIONS_DEFAULT_MAX_TOKENS
            self.max_tokens_param = "max_tokens"
        elif self.endpoint.max_tokens_field:
            requested = _int_param(body, self.endpoint.max_tokens_field)
            self.max_tokens_param = self.endpoint.max_tokens_field
        model = self.model
        if self.endpoint.has_output:
            default_max = model.max_output_tokens or (
                max(1, model.context_length - self.prompt_tokens)
                if model.context_length
                else FALLBACK_MAX_OUTPUT_TOKENS
            )
        else:
            requested, default_max = 0, 0
        if self.key.rate_limited:
            await self.admit(self.prompt_tokens + (requested or 0) * n)
        hold_request = HoldRequest(
            request_id=self.request.request_id,
            key=self.key,
            prices=self.hold_prices(model),
            model_id=model.model_id,
            call_type=self.endpoint.name,
            prompt_tokens=metering.with_margin(self.prompt_tokens),
            max_tokens=requested,
            n=n,
            default_max_tokens=default_max,
            has_output=self.endpoint.has_output,
        )
        reservation = await settlement.hold_reserve(hold_request)
        self.outcome.hold_micros = reservation.hold_micros
        self.outcome.held = True
        if self.endpoint.has_output:
            self.max_tokens = reservation.max_tokens or requested

    async def admit(self, tokens: int) -> None:
        """RPM/TPM/RPD of the key and its group: after the model checks, before the hold.

        TPM counts our prompt estimate plus max_tokens × n when the client set it (the prompt
        alone otherwise); the settlement corrects it with the actual usage.
        """
        self.admission = await ratelimit.admit(
            self.key, member=self.request.request_id, tokens=tokens
        )
        if self.admission is None:
            return
        # On every response of this call from here on, success or error, streamed or not.
        self.request.out_headers = self.admission.headers()
        if not self.admission.admitted:
            raise self.admission.error()

    async def finish(self) -> None:
        """Correct the TPM windows, then settle (so a later call sees both) and check alerts.

        Runs once: before the response ends for keys that need it (see settles_before_reply),
        otherwise after it.
        """
        if self._finished:
            return
        self._finished = True
        await settle_outcome(self.outcome, self.admission)

    async def finish_before_end(self) -> None:
        """Settle while the response is still open; the answer is out, so a failure here is
        logged (the settlement itself is never dropped: see billing.settlement) and the
        response still ends cleanly."""
        try:
            await asyncio.shield(self.finish())
        except Exception:
            logger.exception("could not settle %s", self.request.request_id)

    async def run(self) -> None:
        routes = routing.plan(self.model.model_id, settings.RELAY_MAX_ATTEMPTS)
        if self.stream:
            await self._run_stream(routes)
        else:
            await self._run_plain(routes)

    # --- non-streaming

    async def _attempt_plain(self, route: routing.Route) -> dict:
        answer = await upstream.send(self.upstream_request(route), route)
        try:
            if answer.status >= 400:
                raise await upstream.failure_from_answer(answer)
            content = await answer.read()
        finally:
            await answer.close()
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamFailure(
                502, "The upstream provider sent an invalid response.",
                code="invalid_upstream_response", retryable=True,
            ) from exc  # fmt: skip
        if isinstance(data, dict):
            data = self.answer_of(route, data)
        if not isinstance(data, dict):
            raise UpstreamFailure(
                502, "The upstream provider sent an invalid response.",
                code="invalid_upstream_response", retryable=True,
            )  # fmt: skip
        return data

    def answer_of(self, route: routing.Route, data: dict) -> dict:
        """The upstream's JSON answer in the client's format."""
        return adapter_for(route).response(data, self.outcome.upstream_model)

    def stream_reader(self, route: routing.Route, answer: upstream.Answer):
        """The meter of the client's event format, and the upstream's stream in that format."""
        meter = SSEMeter(
            show_usage=self.show_usage, cost_for=lambda u: metering.usd(self.charged_for(u))
        )
        translator = adapter_for(route).stream(self.outcome.upstream_model, True)
        chunks = answer.chunks() if translator is None else _translated(answer, translator)
        return meter, chunks

    def _on_attempt(self, number: int, route: routing.Route) -> None:
        self.outcome.attempts = number
        self.outcome.channel_id = route.channel_id
        self.outcome.channel_name = route.name
        self.outcome.upstream_model = route.upstream_model(self.model.model_id)

    def _failover(self, routes: list[routing.Route], attempt):
        return failover(routes, attempt, on_attempt=self._on_attempt, spawn=self.request.app.spawn)

    def _usage_from(self, data: dict) -> metering.Usage:
        usage = metering.Usage.from_openai(data.get("usage"))
        if usage is not None:
            return usage
        text = []
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            message = choice.get("message") or {}
            text.append(str(choice.get("text") or message.get("content") or ""))
            for call in message.get("tool_calls") or ():
                function = (call or {}).get("function") or {}
                text.append(str(function.get("name") or "") + str(function.get("arguments") or ""))
        return self.local_usage(metering.count_text("".join(text)))

    async def _run_plain(self, routes) -> None:
        _, data = await run_until_disconnect(
            self.request, self._failover(routes, self._attempt_plain)
        )
        outcome = self.outcome
        outcome.ttft_ms = round((time.monotonic() - outcome.started) * 1000)
        usage = self._usage_from(data)
        outcome.usage = usage
        outcome.cost_micros = self.charged_for(usage)
        usage_body = data.get("usage") if isinstance(data.get("usage"), dict) else None
        if usage_body is None:
            usage_body = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
            data["usage"] = usage_body
        usage_body["cost"] = metering.usd(outcome.cost_micros)
        outcome.response_excerpt = _excerpt(data)
        if not self.settle_early:
            await self.request.respond_json(200, data)
            return
        await self.request.respond_json(200, data, more=True)
        await self.finish_before_end()
        await self.request.end_stream()

    # --- streaming

    async def _attempt_stream(self, route: routing.Route):
        """Open the upstream stream and read its first event: failures up to here fail over."""
        answer = await upstream.send(self.upstream_request(route), route)
        if answer.status >= 400:
            try:
                raise await upstream.failure_from_answer(answer)
            finally:
                await answer.close()
        meter, chunks = self.stream_reader(route, answer)
        first: list[bytes] = []
        try:
            while not first:
                data = await chunks.__anext__()
                first = meter.feed(data)
        except StopAsyncIteration:
            await answer.close()
            raise UpstreamFailure(
                502, "The upstream provider ended the stream before sending anything.",
                code="invalid_upstream_response", retryable=True,
            ) from None  # fmt: skip
        except BrokenStream as exc:
            await answer.close()
            raise exc.failure or upstream.failure_from_exception(exc) from exc
        if meter.malformed:
            await answer.close()
            raise UpstreamFailure(
                502, "The upstream provider sent an invalid stream.",
                code="invalid_upstream_response", retryable=True,
            )  # fmt: skip
        if meter.error and not meter.first_content_seen:
            # Failed before answering anything (overloaded, say): the next channel may answer.
            await answer.close()
            raise UpstreamFailure(502, meter.error[0], code=meter.error[1], retryable=True)
        return answer, chunks, meter, first

    async def _run_stream(self, routes) -> None:
        request = self.request
        outcome = self.outcome
        _, (answer, chunks, meter, first) = await run_until_disconnect(
            request, self._failover(routes, self._attempt_stream)
        )
        self.meter = meter

        # Settle-early keys: [DONE] and what follows wait for the settlement, since SDKs stop
        # reading at [DONE] (the end of the body would be too late).
        held_back: list[bytes] = []

        async def forward(event: bytes) -> None:
            if self.settle_early and (held_back or self.is_final_event(event)):
                held_back.append(event)
            else:
                await request.stream_chunk(event)

        async def pump() -> None:
            try:
                await request.start_stream()
                for event in first:
                    await forward(event)
                outcome.ttft_ms = round((time.monotonic() - outcome.started) * 1000)
                async for data in chunks:
                    for event in meter.feed(data):
                        await forward(event)
                    if meter.malformed:
                        break
                if meter.malformed:
                    self._interrupt(
                        "The upstream provider sent an invalid stream.", "invalid_upstream_response"
                    )
                    await self._end_failed(forward, meter)
                elif meter.error:
                    # The provider's own error event went through as it came; the log says it.
                    self._interrupt(*meter.error)
                    await self._send_usage(forward, meter)
                    if not meter.done:
                        await forward(done_event())
                elif not meter.done:
                    raise BrokenStream("ended before its end event")
            except BrokenStream as exc:
                self._interrupt(
                    f"The upstream provider's stream broke off: {exc.name}.",
                    "upstream_stream_interrupted",
                )
                await self._end_failed(forward, meter)
            finally:
                await answer.close()
            if self.settle_early:
                self._metered(meter)
                await self.finish_before_end()
                for event in held_back:
                    await request.stream_chunk(event)
            await request.end_stream()

        try:
            await run_until_disconnect(request, pump())
        except ClientDisconnected:
            outcome.status_code = CLIENT_CLOSED
            outcome.error_code = "client_disconnected"
            outcome.error_message = "The client closed the connection mid-stream."
            raise
        finally:
            if not self._finished:
                self._metered(meter)

    def _metered(self, meter: SSEMeter) -> None:
        if self.outcome.status_code == 502 and not meter.first_content_seen:
            # Failed before any content reached the client: free, as its non-streamed twin.
            self.outcome.usage = metering.Usage()
            self.outcome.cost_micros = 0
            return
        usage = meter.usage or self.local_usage(meter.delivered_completion_tokens())
        self.outcome.usage = usage
        self.outcome.cost_micros = self.charged_for(usage)
        self.outcome.response_excerpt = meter.response_excerpt()

    async def _send_usage(self, forward, meter: SSEMeter) -> None:
        """A failed stream's usage chunk, when the client asked for one and the upstream's own
        did not come through."""
        if self.show_usage and meter.usage is None:
            self._metered(meter)
            usage = self.outcome.usage
            await forward(usage_event(meter, usage, metering.usd(self.outcome.cost_micros)))

    async def _end_failed(self, forward, meter: SSEMeter) -> None:
        """End a stream that failed part-way: its usage, then our error event and [DONE]."""
        await self._send_usage(forward, meter)
        await forward(error_event(self.outcome.error_message, self.outcome.error_code))
        await forward(done_event())

    def _interrupt(self, message: str, code: str) -> None:
        self.outcome.status_code = 502
        self.outcome.error_code = code
        self.outcome.error_message = message


async def _translated(answer: upstream.Answer, translator):
    async for data in answer.chunks():
        out = translator.feed(data)
        if out:
            yield out
    tail = translator.close()
    if tail:
        yield tail


def _excerpt(data: dict) -> str:
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message") or {}
            text = choice.get("text") or message.get("content")
            if text:
                return str(text)[:500]
    return ""


def last_used_due(key_id: int) -> bool:
    """At most one last_used_at write a minute per key and process."""
    now = time.monotonic()
    if now - _last_used_written.get(key_id, float("-inf")) >= LAST_USED_INTERVAL_SECONDS:
        _last_used_written[key_id] = now
        return True
    return False


def _loggable(text: str) -> str:
    """Text from the upstream, as PostgreSQL can store it (no NUL in text or jsonb): a reply
    that echoes one must not make the settlement's write fail."""
    return text.replace("\x00", "") if "\x00" in text else text


def charge_of(outcome: "Outcome") -> CallCharge:
    """What billing settles for a finished call, its log row included."""
    now = timezone.now()
    key = outcome.key
    return CallCharge(
        request_id=outcome.request_id,
        wallet_id=key.wallet_id,
        key_id=key.key_id,
        held=outcome.held,
        hold_micros=outcome.hold_micros,
        cost_micros=outcome.cost_micros,
        used_tokens=outcome.used_tokens,
        touch_last_used=last_used_due(key.key_id),
        description=f"{outcome.model_id} via {key.name}",
        now=now,
        log=log_row(outcome, now),
    )
