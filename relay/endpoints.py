"""The /v1 endpoints: authenticate, check, hold, route with failover, stream, settle."""

import asyncio
import logging

from django.conf import settings

from billing.holds import HoldRefusal, HoldRefused
from relay import alerts, keys, ratelimit, routing
from relay.calls import CLIENT_CLOSED, Call, Endpoint
from relay.http import ClientDisconnected, RelayError, Request
from relay.validation import validate_body
from tokenbyte import db, pg

logger = logging.getLogger(__name__)

# Refusals of the hold that are logged as calls (the owner sees why a call failed). A 429 from
# our own rate limiter is not: it would cost a database write per refused request, which is
# what a client hammering a limited key sends; its headers tell the client all it needs.
LOGGED_REFUSALS = frozenset(
    {HoldRefusal.WALLET, HoldRefusal.KEY_CREDIT, HoldRefusal.GROUP_CREDIT,
     HoldRefusal.KEY_QUOTA, HoldRefusal.GROUP_QUOTA, HoldRefusal.PER_REQUEST_CAP,
     HoldRefusal.NO_WALLET}
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


async def generation(request: Request, endpoint: Endpoint) -> None:
    key = await authenticate(request)
    await request.read_body(settings.RELAY_MAX_BODY_BYTES)
    body = request.json()
    validate_body(body, endpoint.name)
    call = Call(request, endpoint, key, body)
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
