"""The /v1 endpoints: authenticate, check, hold, route with failover, stream, settle."""

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from django.conf import settings

from billing.services import Settlement
from catalog.services import channel_record_failure, channel_record_success
from relay import accounting, alerts, db, keys, metering, pg, ratelimit, routing, upstream
from relay.accounting import Outcome, QuotaRefused
from relay.adapters import UpstreamRequest, adapter_for
from relay.http import ClientDisconnected, RelayError, Request, run_until_disconnect
from relay.streaming import SSEMeter, done_event, error_event, is_done_event
from relay.upstream import BrokenStream, UpstreamFailure

logger = logging.getLogger(__name__)

# Body fields copied into the log's request parameters (contents of messages are not).
CONTENT_FIELDS = ("messages", "prompt", "input", "tools", "functions")
# Status logged for a call whose client hung up first (nginx's convention).
CLIENT_CLOSED = 499
# Refusals of the hold that are logged as calls (the owner sees why a call failed). A 429 from
# our own rate limiter is not: it would cost a database write per refused request, which is
# what a client hammering a limited key sends; its headers tell the client all it needs.
LOGGED_REFUSALS = frozenset(
    {"insufficient_quota", "per_request_cap_exceeded", "token_quota_exceeded"}
)
# Completions default to 16 output tokens when max_tokens is absent (OpenAI's documented default).
LEGACY_COMPLETIONS_DEFAULT_MAX_TOKENS = 16
FALLBACK_MAX_OUTPUT_TOKENS = 4096


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str  # the public path
    call_types: frozenset[str]
    required: str  # the body field that must be present
    count_prompt: Callable[[dict], int]
    has_output: bool


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


# --- shared steps -------------------------------------------------------------------------------


async def authenticate(request: Request) -> keys.KeyInfo:
    presented = keys.presented_key(request)
    if not presented:
        raise keys.missing_key_error()
    digest = keys.digest_of(presented)
    hit, info, stale = keys.cached(digest)
    if not hit:
        info = await load_key(digest)
    elif stale:
        spawn(load_key(digest))
    return keys.check(info, request)


async def load_key(digest: str) -> keys.KeyInfo | None:
    if pg.enabled():
        return await pg.load_key(digest)
    return await db.run(keys.lookup, digest)


_refreshing: asyncio.Task | None = None


async def catalog() -> routing.Snapshot:
    """The catalog snapshot; a stale one is served while a fresh one loads in the background."""
    global _refreshing
    age = routing.snapshot_age()
    ttl = settings.RELAY_CATALOG_CACHE_SECONDS
    if age is None or age > 2 * ttl:
        return await db.run(routing.refresh)
    if age > ttl and (_refreshing is None or _refreshing.done()):
        _refreshing = asyncio.ensure_future(db.run(routing.refresh))
    return routing.current()


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


def spawn(coroutine) -> None:
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _record_failure(route: routing.Route, failure: UpstreamFailure) -> None:
    spawn(_record_failure_async(route, failure))


async def _record_failure_async(route: routing.Route, failure: UpstreamFailure) -> None:
    try:
        state = await db.run(
            channel_record_failure,
            channel_id=route.channel_id,
            error=f"HTTP {failure.status} {failure.code}: {failure.message}",
        )
    except Exception:
        logger.exception("could not record a failure of channel %s", route.name)
        return
    if state in ("cooling", "auto_disabled"):
        routing.cool_down_locally(route.channel_id, settings.RELAY_CHANNEL_COOLDOWN_SECONDS)
        routing.invalidate_soon()


def _record_success(route: routing.Route) -> None:
    if route.had_failures:
        spawn(db.run(channel_record_success, channel_id=route.channel_id))


async def _backoff(attempt: int) -> None:
    base = settings.RELAY_RETRY_BACKOFF_MS / 1000
    await asyncio.sleep(base * (2**attempt) * random.uniform(0.5, 1.5))


def final_error(failure: UpstreamFailure | None) -> RelayError:
    if failure is None:
        return RelayError(503, "No channel is available right now.", code="no_channel_available")
    headers = {"retry-after": failure.retry_after or "1"} if failure.status == 429 else None
    return RelayError(failure.status, failure.message, code=failure.code, headers=headers)


# --- generation endpoints -----------------------------------------------------------------------


class Call:
    """One relayed generation call, from its parsed body to its settlement."""

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
        hold_request = accounting.HoldRequest(
            request_id=self.request.request_id,
            key=self.key,
            model=model,
            prompt_tokens=metering.with_margin(self.prompt_tokens),
            max_tokens=requested,
            n=n,
            default_max_tokens=default_max,
            has_output=self.endpoint.has_output,
        )
        if pg.enabled():
            reservation = await pg.reserve(hold_request)
        else:
            reservation = await db.run(accounting.reserve, hold_request)
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
        await ratelimit.correct(self.admission, self.outcome.used_tokens)
        settlement = await settle(self.outcome)
        alerts.after_settlement(self.key, settlement)

    async def finish_before_end(self) -> None:
        """Settle while the response is still open; the answer is out, so a failure here is
        logged (the sweep releases the hold) and the response still ends cleanly."""
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
            data = adapter_for(route).response(data, self.outcome.upstream_model)
        if not isinstance(data, dict):
            raise UpstreamFailure(
                502, "The upstream provider sent an invalid response.",
                code="invalid_upstream_response", retryable=True,
            )  # fmt: skip
        return data

    async def _failover(self, routes, attempt_fn):
        last: UpstreamFailure | None = None
        for attempt, route in enumerate(routes):
            if attempt:
                await _backoff(attempt - 1)
            self.outcome.attempts = attempt + 1
            self.outcome.channel_id = route.channel_id
            self.outcome.channel_name = route.name
            self.outcome.upstream_model = route.upstream_model(self.model.model_id)
            try:
                result = await attempt_fn(route)
            except UpstreamFailure as failure:
                last = failure
                if failure.retryable:
                    _record_failure(route, failure)
                    continue
                raise final_error(failure) from failure
            _record_success(route)
            return route, result
        raise final_error(last)

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
        meter = SSEMeter(
            show_usage=self.show_usage, cost_for=lambda u: metering.usd(self.charged_for(u))
        )
        translator = adapter_for(route).stream(self.outcome.upstream_model, True)
        chunks = answer.chunks() if translator is None else _translated(answer, translator)
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
            if self.settle_early and (held_back or is_done_event(event)):
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
                    await forward(error_event(outcome.error_message, outcome.error_code))
                    await forward(done_event())
                elif meter.error:
                    # The provider's own error event went through as it came; the log says it.
                    self._interrupt(*meter.error)
                    if not meter.done:
                        await forward(done_event())
                elif not meter.done:
                    raise BrokenStream("ended without [DONE]")
            except BrokenStream as exc:
                self._interrupt(
                    f"The upstream provider's stream broke off: {exc.name}.",
                    "upstream_stream_interrupted",
                )
                await forward(error_event(outcome.error_message, outcome.error_code))
                await forward(done_event())
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
        usage = meter.usage or self.local_usage(meter.delivered_completion_tokens())
        self.outcome.usage = usage
        self.outcome.cost_micros = self.charged_for(usage)
        self.outcome.response_excerpt = meter.response_excerpt()

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


async def generation(request: Request, endpoint: Endpoint) -> None:
    key = await authenticate(request)
    await request.read_body(settings.RELAY_MAX_BODY_BYTES)
    body = request.json()
    call = Call(request, endpoint, key, body)
    try:
        await call.prepare(await catalog())
    except RelayError as error:
        if error.status == 403 and error.code in LOGGED_REFUSALS:
            _note_error(call, error)
            await asyncio.shield(call.finish())
        elif call.admission is not None:
            # Refused after the rate limiter admitted it: no tokens were used.
            await asyncio.shield(ratelimit.correct(call.admission, 0))
        if isinstance(error, QuotaRefused) and error.exhausted:
            alerts.quota_exhausted(key, error.scope, error.smallest_call_tokens)
        raise
    try:
        await call.run()
    except RelayError as error:
        _note_error(call, error)
        if call.settle_early:
            await asyncio.shield(call.finish())
        await request.respond_error(error)
    except ClientDisconnected:
        if call.outcome.status_code == 200:
            call.outcome.status_code = CLIENT_CLOSED
            call.outcome.error_code = "client_disconnected"
            call.outcome.error_message = "The client closed the connection before the answer."
    finally:
        # Shielded: settlement must finish even when the client is gone or the server stops.
        await asyncio.shield(call.finish())


async def settle(outcome: Outcome) -> Settlement:
    if pg.enabled():
        return await pg.settle(outcome)
    return await db.run(accounting.settle, outcome)


def _note_error(call: Call, error: RelayError) -> None:
    """Record the error on the call's outcome (its log row)."""
    call.outcome.status_code = error.status
    call.outcome.error_code = error.code or ""
    call.outcome.error_message = error.message


# --- models -------------------------------------------------------------------------------------


def _model_object(model: routing.ModelInfo) -> dict:
    return {
        "id": model.model_id,
        "object": "model",
        "created": model.created,
        "owned_by": model.provider,
    }


def _usable(key: keys.KeyInfo, snapshot: routing.Snapshot) -> list[routing.ModelInfo]:
    return [
        m
        for m in snapshot.models.values()
        if snapshot.routes.get(m.model_id)
        and (not key.allowed_models or m.model_id in key.allowed_models)
    ]


async def models_list(request: Request) -> None:
    key = await authenticate(request)
    snapshot = await catalog()
    data = [_model_object(m) for m in _usable(key, snapshot)]
    await request.respond_json(200, {"object": "list", "data": data})


async def model_detail(request: Request, model_id: str) -> None:
    key = await authenticate(request)
    snapshot = await catalog()
    for model in _usable(key, snapshot):
        if model.model_id == model_id:
            await request.respond_json(200, _model_object(model))
            return
    raise RelayError(
        404, f"The model '{model_id}' does not exist or you do not have access to it.",
        code="model_not_found", param="model",
    )  # fmt: skip
