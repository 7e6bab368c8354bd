"""The /v1 endpoints: authenticate, check, hold, route with failover, stream, settle."""

import asyncio
import logging
import time

from django.conf import settings

from billing import settlement
from billing.holds import HoldRefusal, HoldRefused, HoldRequest
from relay import alerts, keys, media, metering, ratelimit, routing
from relay.calls import CLIENT_CLOSED, Call, Endpoint, Outcome, resolve_model, settle_outcome
from relay.http import ClientDisconnected, RelayError, Request, run_until_disconnect
from relay.upstream import BrokenStream
from relay.validation import validate_body
from tokenbyte import db, pg

logger = logging.getLogger(__name__)

# Refusals of the hold that are logged as calls (the owner sees why a call failed). A 429 from
# our own rate limiter is not: it would cost a database write per refused request, which is
# what a client hammering a limited key sends; its headers tell the client all it needs.
LOGGED_REFUSALS = frozenset(
    {HoldRefusal.WALLET, HoldRefusal.KEY_CREDIT, HoldRefusal.GROUP_CREDIT,
     HoldRefusal.KEY_QUOTA, HoldRefusal.GROUP_QUOTA, HoldRefusal.PER_REQUEST_CAP,
     HoldRefusal.NO_WALLET, HoldRefusal.MEMBER_ALLOWANCE}
)  # fmt: skip


async def authenticate(request: Request) -> keys.KeyInfo:
    presented = keys.presented_key(request)
    if not presented:
        raise keys.missing_key_error()
    digest = keys.digest_of(presented)
    hit, info, stale = keys.cached(digest)
    if not hit:
        info = await load_key(digest)
    elif stale:
        request.app.spawn(load_key(digest))
    return keys.check(info, request)


async def load_key(digest: str) -> keys.KeyInfo | None:
    """Read a key (one statement on the pool on PostgreSQL) and cache it."""
    if pg.enabled():
        info = keys.from_row(await pg.fetchone(keys.KEY_SQL, [digest]))
        keys.store(digest, info)
        return info
    return await db.run(keys.lookup, digest)


async def catalog(request: Request) -> routing.Snapshot:
    """The catalog snapshot; a stale one is served while a fresh one loads in the background."""
    app = request.app
    age = routing.snapshot_age()
    ttl = settings.RELAY_CATALOG_CACHE_SECONDS
    if age is None or age > 2 * ttl:
        return await db.run(routing.refresh)
    if age > ttl and (app.catalog_refresh is None or app.catalog_refresh.done()):
        app.catalog_refresh = app.spawn(db.run(routing.refresh))
    return routing.current()


def refusal_error(refused: HoldRefused) -> RelayError:
    return RelayError(403, refused.message, code=refused.code, type="insufficient_quota")


def _note_error(call: Call, error: RelayError) -> None:
    """Record the error on the call's outcome (its log row)."""
    call.outcome.status_code = error.status
    call.outcome.error_code = error.code or ""
    call.outcome.error_message = error.message


async def generation(request: Request, endpoint: Endpoint, call_class: type[Call] = Call) -> None:
    key = await authenticate(request)
    await request.read_body(settings.RELAY_MAX_BODY_BYTES)
    body = request.json()
    validate_body(body, endpoint.name)
    call = call_class(request, endpoint, key, body)
    try:
        await call.prepare(await catalog(request))
    except HoldRefused as refused:
        error = refusal_error(refused)
        if refused.reason in LOGGED_REFUSALS:
            _note_error(call, error)
            await asyncio.shield(call.finish())
        if refused.exhausted:
            alerts.quota_exhausted(key, refused.reason, refused.smallest_call_tokens)
        raise error from refused
    except (RelayError, pg.DatabaseUnavailable):
        if call.admission is not None:
            # Refused after the rate limiter admitted it: no tokens were used.
            await asyncio.shield(ratelimit.correct(call.admission, 0))
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


# --- images, audio, moderations (the upstream part is relay/media.py) --------------------------


async def media_call(request: Request, kind: media.MediaKind) -> None:
    key = await authenticate(request)
    if kind.multipart:
        await request.read_body(settings.RELAY_MAX_UPLOAD_BYTES)
        form = media.parse_form(request.body, request.headers.get("content-type", ""))
        media_request = media.from_form(kind, form)
    else:
        await request.read_body(settings.RELAY_MAX_BODY_BYTES)
        media_request = media.from_json(kind, request.json())
    snapshot = await catalog(request)
    model = resolve_model(media_request.body, key, snapshot, kind)
    media.check_model(kind, model)
    routes = media.routes_for(kind, routing.plan(model.model_id, settings.RELAY_MAX_ATTEMPTS))
    held = media.quote(media_request, model)
    outcome = Outcome(
        request_id=request.request_id, key=key, model_id=model.model_id, call_type=kind.name,
        endpoint=kind.name, is_stream=kind is media.AUDIO_SPEECH, client_ip=keys.client_ip(request),
        request_params={**media_request.loggable_params(), **held.units.loggable()},
    )  # fmt: skip
    call = MediaCall(request, key, outcome)
    try:
        if key.rate_limited:
            await call.admit(held.units.tokens)
        reservation = await settlement.hold_reserve(
            HoldRequest(
                request_id=request.request_id, key=key, prices=model, model_id=model.model_id,
                call_type=kind.name, prompt_tokens=held.units.tokens, max_tokens=0, n=1,
                default_max_tokens=0, has_output=False, fixed_micros=held.cost_micros,
            )
        )  # fmt: skip
    except HoldRefused as refused:
        error = refusal_error(refused)
        if refused.reason in LOGGED_REFUSALS:
            outcome.status_code, outcome.error_code = error.status, error.code or ""
            outcome.error_message = error.message
            await asyncio.shield(call.finish())
        if refused.exhausted:
            alerts.quota_exhausted(key, refused.reason, refused.smallest_call_tokens)
        raise error from refused
    except (RelayError, pg.DatabaseUnavailable):
        if call.admission is not None:
            await asyncio.shield(ratelimit.correct(call.admission, 0))
        raise
    outcome.hold_micros, outcome.held = reservation.hold_micros, True
    try:
        if kind is media.AUDIO_SPEECH:
            await call.relay_speech(media_request, model, routes)
        else:
            await call.relay(media_request, model, routes)
    except RelayError as error:
        outcome.status_code, outcome.error_code = error.status, error.code or ""
        outcome.error_message = error.message
        outcome.cost_micros = 0
        await request.respond_error(error)
    except ClientDisconnected:
        if outcome.status_code == 200:
            outcome.status_code = CLIENT_CLOSED
            outcome.error_code = "client_disconnected"
            outcome.error_message = "The client closed the connection before the answer."
    finally:
        # Shielded: settlement must finish even when the client is gone or the server stops.
        await asyncio.shield(call.finish())


class MediaCall:
    """The relay's side of one media call: rate limit, upstream with failover, answer, settle.

    What a failure costs: nothing before any byte reached the client (every endpoint); a
    speech stream that breaks off or whose client hangs up after bytes were delivered is
    charged its whole input (the upstream reports no partial count).
    """

    def __init__(self, request: Request, key: keys.KeyInfo, outcome: Outcome) -> None:
        self.request = request
        self.key = key
        self.outcome = outcome
        self.admission: ratelimit.Admission | None = None
        self._finished = False

    async def admit(self, tokens: int) -> None:
        self.admission = await ratelimit.admit(
            self.key, member=self.request.request_id, tokens=tokens
        )
        if self.admission is None:
            return
        self.request.out_headers = self.admission.headers()
        if not self.admission.admitted:
            raise self.admission.error()

    def on_attempt(self, number: int, route: routing.Route) -> None:
        self.outcome.attempts = number
        self.outcome.channel_id = route.channel_id
        self.outcome.channel_name = route.name
        self.outcome.upstream_model = route.upstream_model(self.outcome.model_id)

    async def relay(self, media_request, model, routes) -> None:
        request, outcome = self.request, self.outcome
        result = await run_until_disconnect(
            request,
            media.run(
                media_request, model, routes, spawn=request.app.spawn, on_attempt=self.on_attempt
            ),
        )
        outcome.ttft_ms = round((time.monotonic() - outcome.started) * 1000)
        self._charge(result.units, result.cost_micros)
        if result.data is not None:
            outcome.response_excerpt = _media_excerpt(result.data)
        settle_first = self.key.settles_before_reply
        if result.content_type.startswith(media.JSON_CONTENT_TYPE):
            await request.respond_bytes(200, result.content, more=settle_first)
        else:
            await request.start_stream(content_type=result.content_type.encode("latin-1"))
            await request.stream_chunk(result.content)
        if settle_first or not result.content_type.startswith(media.JSON_CONTENT_TYPE):
            if settle_first:
                await self.finish_quietly()
            await request.end_stream()

    async def relay_speech(self, media_request, model, routes) -> None:
        request, outcome = self.request, self.outcome
        stream = await run_until_disconnect(
            request,
            media.open_speech(
                media_request, model, routes, spawn=request.app.spawn, on_attempt=self.on_attempt
            ),
        )
        outcome.ttft_ms = round((time.monotonic() - outcome.started) * 1000)

        async def pump() -> None:
            await request.start_stream(content_type=stream.content_type.encode("latin-1"))
            # From the first byte delivered on, the call is charged its whole input.
            self._charge(stream.units, stream.cost_micros)
            try:
                async for data in stream.chunks():
                    await request.stream_chunk(data)
            except BrokenStream as exc:
                outcome.status_code = 502
                outcome.error_code = "upstream_stream_interrupted"
                outcome.error_message = f"The upstream provider's audio broke off: {exc.name}."
            if self.key.settles_before_reply:
                await self.finish_quietly()
            await request.end_stream()

        try:
            await run_until_disconnect(request, pump())
        except ClientDisconnected:
            outcome.status_code = CLIENT_CLOSED
            outcome.error_code = "client_disconnected"
            outcome.error_message = "The client closed the connection mid-stream."
            raise ClientDisconnected from None
        finally:
            await stream.close()

    def _charge(self, units: metering.MediaUnits, cost_micros: int) -> None:
        self.outcome.cost_micros = min(cost_micros, self.outcome.hold_micros)
        self.outcome.usage = metering.Usage(prompt_tokens=units.tokens, reported=False)
        self.outcome.request_params = {**self.outcome.request_params, "used": units.loggable()}

    async def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        await settle_outcome(self.outcome, self.admission)

    async def finish_quietly(self) -> None:
        try:
            await asyncio.shield(self.finish())
        except Exception:
            logger.exception("could not settle %s", self.request.request_id)


def _media_excerpt(data: dict) -> str:
    if isinstance(data.get("text"), str):
        return data["text"][:500]
    results = data.get("results")
    if isinstance(results, list) and results and isinstance(results[0], dict):
        return f"flagged: {bool(results[0].get('flagged'))}"
    images = data.get("data")
    if isinstance(images, list):
        return f"{len(images)} image(s)"
    return ""


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
    snapshot = await catalog(request)
    data = [_model_object(m) for m in _usable(key, snapshot)]
    await request.respond_json(200, {"object": "list", "data": data})


async def model_detail(request: Request, model_id: str) -> None:
    key = await authenticate(request)
    snapshot = await catalog(request)
    for model in _usable(key, snapshot):
        if model.model_id == model_id:
            await request.respond_json(200, _model_object(model))
            return
    raise RelayError(
        404, f"The model '{model_id}' does not exist or you do not have access to it.",
        code="model_not_found", param="model",
    )  # fmt: skip
