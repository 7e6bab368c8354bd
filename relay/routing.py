"""Which channel serves a model: a snapshot of the catalog, cooldowns, and weighted choice.

The snapshot (models, prices, channels) is reloaded at most every RELAY_CATALOG_CACHE_SECONDS,
so a relayed call reads no catalog row from the database.
"""

import random
import time
from dataclasses import dataclass, field

from django.conf import settings

from catalog.models import Channel, Model


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    display_name: str
    provider: str
    call_type: str
    price_unit: str
    input_price: int  # micro-USD per 1M tokens
    output_price: int  # micro-USD per 1M tokens
    cached_input_price: int  # micro-USD per 1M tokens
    cache_write_price: int  # micro-USD per 1M tokens written to the provider's prompt cache
    unit_price: int  # micro-USD per unit
    context_length: int
    max_output_tokens: int
    capabilities: frozenset[str]
    created: int  # unix time, for /v1/models
    # micro-USD per image by variant ("<size>" or "<size>/<quality>"); see metering.image_price.
    unit_price_variants: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    channel_id: int
    name: str
    type: str
    base_url: str
    api_key: str
    model_mapping: dict
    priority: int
    weight: int
    connect_timeout: float
    read_timeout: float
    cooldown_until: float  # time.time() seconds, 0 = none
    had_failures: bool

    def upstream_model(self, model_id: str) -> str:
        return self.model_mapping.get(model_id, model_id)


@dataclass
class Snapshot:
    loaded_at: float
    models: dict[str, ModelInfo]
    routes: dict[str, list[Route]] = field(default_factory=dict)


_snapshot: Snapshot | None = None
# channel id -> time.time() until which this process skips it (set on failures seen here).
_local_cooldowns: dict[int, float] = {}


def _load() -> Snapshot:
    models = {}
    for m in Model.objects.filter(enabled=True).select_related("provider"):
        models[m.model_id] = ModelInfo(
            model_id=m.model_id,
            display_name=m.display_name,
            provider=m.provider.slug,
            call_type=m.call_type,
            price_unit=m.price_unit,
            input_price=m.input_price_micros_per_mtok,
            output_price=m.output_price_micros_per_mtok,
            cached_input_price=m.effective_cached_input_price,
            cache_write_price=(
                m.input_price_micros_per_mtok
                if m.cache_write_price_micros_per_mtok is None
                else m.cache_write_price_micros_per_mtok
            ),
            unit_price=m.unit_price_micros,
            context_length=m.context_length,
            max_output_tokens=m.max_output_tokens,
            capabilities=frozenset(m.capabilities or ()),
            created=int(m.created_at.timestamp()),
            unit_price_variants=dict(m.unit_price_variants or {}),
        )
    routes: dict[str, list[Route]] = {}
    channels = Channel.objects.filter(status=Channel.Status.ENABLED).prefetch_related(
        "served_models"
    )
    for ch in channels:
        route = Route(
            channel_id=ch.pk,
            name=ch.name,
            type=ch.type,
            base_url=ch.base_url.rstrip("/"),
            api_key=ch.api_key,
            model_mapping=dict(ch.model_mapping or {}),
            priority=ch.priority,
            weight=max(1, ch.weight),
            connect_timeout=ch.connect_timeout_seconds,
            read_timeout=ch.read_timeout_seconds,
            cooldown_until=ch.cooldown_until.timestamp() if ch.cooldown_until else 0.0,
            had_failures=ch.failure_count > 0,
        )
        for m in ch.served_models.all():
            if m.model_id in models:
                routes.setdefault(m.model_id, []).append(route)
    return Snapshot(loaded_at=time.monotonic(), models=models, routes=routes)


def snapshot_age() -> float | None:
    """Seconds since the snapshot was loaded; None when there is none."""
    return None if _snapshot is None else time.monotonic() - _snapshot.loaded_at


def refresh() -> Snapshot:
    """Reload the snapshot (runs in a database thread)."""
    global _snapshot
    _snapshot = _load()
    return _snapshot


def current() -> Snapshot:
    assert _snapshot is not None, "refresh() first"
    return _snapshot


def invalidate_soon() -> None:
    """Mark the snapshot stale: the next call reloads it in the background."""
    if _snapshot is not None:
        _snapshot.loaded_at -= settings.RELAY_CATALOG_CACHE_SECONDS


def cool_down_locally(channel_id: int, seconds: float) -> None:
    _local_cooldowns[channel_id] = time.time() + seconds


def plan(model_id: str, attempts: int) -> list[Route]:
    """Channels to try in order: highest priority first, weighted random within a priority.

    Channels cooling down are skipped, unless nothing else is left (better a slow answer than 503).
    """
    routes = current().routes.get(model_id, [])
    now = time.time()
    ready = [
        r
        for r in routes
        if r.cooldown_until <= now and _local_cooldowns.get(r.channel_id, 0.0) <= now
    ]
    pool = ready or list(routes)
    ordered: list[Route] = []
    for priority in sorted({r.priority for r in pool}, reverse=True):
        tier = [r for r in pool if r.priority == priority]
        while tier:
            pick = random.choices(tier, weights=[r.weight for r in tier])[0]
            ordered.append(pick)
            tier.remove(pick)
    if not ordered:
        return []
    # Fewer channels than attempts: retry the best ones again.
    distinct = len(ordered)
    while len(ordered) < attempts:
        ordered.append(ordered[len(ordered) % distinct])
    return ordered[:attempts]
