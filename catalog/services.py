import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from catalog.locks import channels_lock
from catalog.models import Channel, Model, Provider
from tokenbyte.errors import ApplicationError
from tokenbyte.money import MoneyError, usd_to_micros

PROVIDER_NAMES = {
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "google": "Google",
    "deepseek": "DeepSeek",
    "qwen": "Alibaba Qwen",
    "moonshot": "Moonshot AI (Kimi)",
    "tokenbyte": "TokenByte",
}
# Keys of a catalog entry and whether each is required.
CATALOG_FIELDS = {
    "id": True,
    "provider": True,
    "display_name": False,
    "description": False,
    "context_length": False,
    "max_output_tokens": False,
    "call_type": False,
    "input_per_mtok": False,
    "output_per_mtok": False,
    "cached_input_per_mtok": False,
    "cache_write_per_mtok": False,
    "price_unit": False,
    "unit_price": False,
    "unit_price_variants": False,
    "capabilities": False,
    "enabled": False,
    "sort_order": False,
}


def _price(entry: dict, key: str, where: str) -> int | None:
    if entry.get(key) is None:
        return None
    try:
        micros = usd_to_micros(entry[key])
    except MoneyError as exc:
        raise ApplicationError(f"{where}: {key}: {exc}") from exc
    if micros < 0:
        raise ApplicationError(f"{where}: {key} must not be negative")
    return micros


def _price_variants(entry: dict, where: str) -> dict[str, int]:
    """{"<size>" or "<size>/<quality>": "0.04" USD} → micro-USD per unit, by variant."""
    variants = entry.get("unit_price_variants") or {}
    if not isinstance(variants, dict):
        raise ApplicationError(f"{where}: unit_price_variants must be an object of USD prices")
    out = {}
    for variant, price in variants.items():
        if not variant or len(variant) > 64 or not isinstance(price, str | int):
            raise ApplicationError(f"{where}: unit_price_variants[{variant!r}] must be USD")
        out[variant] = _price({"price": price}, "price", f"{where}: unit_price_variants")
    return out


def _int(entry: dict, key: str, where: str) -> int:
    value = entry.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApplicationError(f"{where}: {key} must be a non-negative integer")
    return value


def _model_fields(entry: object, index: int) -> dict:
    """Validate one catalog entry into Model field values."""
    where = f"models[{index}]"
    if not isinstance(entry, dict):
        raise ApplicationError(f"{where}: each model must be an object")
    unknown = set(entry) - set(CATALOG_FIELDS)
    if unknown:
        raise ApplicationError(f"{where}: unknown field(s): {', '.join(sorted(unknown))}")
    for key, required in CATALOG_FIELDS.items():
        if required and not entry.get(key):
            raise ApplicationError(f"{where}: {key} is required")
    model_id = entry["id"]
    if not isinstance(model_id, str) or len(model_id) > 100 or not model_id.strip():
        raise ApplicationError(f"{where}: id must be a string of at most 100 characters")
    where = f"model {model_id!r}"
    call_type = entry.get("call_type", Model.CallType.CHAT)
    if call_type not in Model.CallType.values:
        raise ApplicationError(
            f"{where}: call_type must be one of {', '.join(Model.CallType.values)}"
        )
    price_unit = entry.get("price_unit", Model.PriceUnit.MTOK)
    if price_unit not in Model.PriceUnit.values:
        raise ApplicationError(
            f"{where}: price_unit must be one of {', '.join(Model.PriceUnit.values)}"
        )
    capabilities = entry.get("capabilities", [])
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise ApplicationError(f"{where}: capabilities must be a list of strings")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ApplicationError(f"{where}: enabled must be true or false")
    return {
        "model_id": model_id.strip(),
        "provider_slug": str(entry["provider"]).strip().lower(),
        "display_name": entry.get("display_name") or model_id,
        "description": entry.get("description", ""),
        "context_length": _int(entry, "context_length", where),
        "max_output_tokens": _int(entry, "max_output_tokens", where),
        "call_type": call_type,
        "price_unit": price_unit,
        "input_price_micros_per_mtok": _price(entry, "input_per_mtok", where) or 0,
        "output_price_micros_per_mtok": _price(entry, "output_per_mtok", where) or 0,
        "cached_input_price_micros_per_mtok": _price(entry, "cached_input_per_mtok", where),
        "cache_write_price_micros_per_mtok": _price(entry, "cache_write_per_mtok", where),
        "unit_price_micros": _price(entry, "unit_price", where) or 0,
        "unit_price_variants": _price_variants(entry, where),
        "capabilities": sorted(set(capabilities)),
        "enabled": enabled,
        "sort_order": entry.get("sort_order", index),
    }


def catalog_import(*, data: object, update_existing: bool = True) -> tuple[int, int]:
    """Load models and prices; existing models are updated in place. All or nothing.

    With update_existing=False, models already present are left as they are (seeding must not
    undo a price that staff edited). Returns (created, updated).
    """
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ApplicationError('the catalog must be an object with a "models" list')
    rows = [_model_fields(entry, i) for i, entry in enumerate(data["models"])]
    seen: set[str] = set()
    for row in rows:
        if row["model_id"] in seen:
            raise ApplicationError(f"model {row['model_id']!r} appears twice")
        seen.add(row["model_id"])

    created = updated = 0
    with transaction.atomic():
        providers: dict[str, Provider] = {}
        for row in rows:
            slug = row.pop("provider_slug")
            if slug not in providers:
                providers[slug], _ = Provider.objects.get_or_create(
                    slug=slug, defaults={"name": PROVIDER_NAMES.get(slug, slug.title())}
                )
            fields = {**row, "provider": providers[slug]}
            model_id = fields.pop("model_id")
            if update_existing:
                _, was_created = Model.objects.update_or_create(model_id=model_id, defaults=fields)
            else:
                _, was_created = Model.objects.get_or_create(model_id=model_id, defaults=fields)
            created += was_created
            updated += update_existing and not was_created
    return created, updated


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApplicationError(f"not an http(s) URL: {base_url!r}")
    return base_url.rstrip("/")


def channel_create(
    *,
    name: str,
    type: str,
    base_url: str,
    model_ids: Iterable[str],
    api_key: str = "",
    model_mapping: dict[str, str] | None = None,
    priority: int = 0,
    weight: int = 1,
) -> Channel:
    name = name.strip()
    if not name:
        raise ApplicationError("a channel needs a name")
    if type not in Channel.Type.values:
        raise ApplicationError(f"channel type must be one of {', '.join(Channel.Type.values)}")
    base_url = _check_base_url(base_url)
    if weight < 1:
        raise ApplicationError("weight must be at least 1")
    wanted = [m.strip() for m in model_ids if m.strip()]
    if not wanted:
        raise ApplicationError("a channel must serve at least one model")
    models = list(Model.objects.filter(model_id__in=wanted))
    unknown = sorted(set(wanted) - {m.model_id for m in models})
    if unknown:
        raise ApplicationError(
            f"unknown model(s): {', '.join(unknown)} (import them with import_catalog first)"
        )
    mapping = model_mapping or {}
    stray = sorted(set(mapping) - set(wanted))
    if stray:
        raise ApplicationError(
            f"mapping for model(s) the channel does not serve: {', '.join(stray)}"
        )
    if Channel.objects.filter(name=name).exists():
        raise ApplicationError(f"a channel named {name!r} already exists")
    with transaction.atomic():
        channel = Channel.objects.create(
            name=name,
            type=type,
            base_url=base_url,
            api_key=api_key,
            model_mapping=mapping,
            priority=priority,
            weight=weight,
            status_changed_at=timezone.now(),
        )
        channel.served_models.set(models)
    return channel


@dataclass(frozen=True)
class ChannelTestResult:
    ok: bool
    latency_ms: int
    error: str = ""


def channel_models_add(*, channel: Channel, model_ids: Iterable[str]) -> int:
    """Let a channel serve these catalog models too (those it serves already are kept);
    returns how many it gained."""
    wanted = set(model_ids)
    models = list(Model.objects.filter(model_id__in=wanted))
    missing = wanted - {model.model_id for model in models}
    if missing:
        raise ApplicationError(f"unknown model(s): {', '.join(sorted(missing))}")
    before = channel.served_models.count()
    channel.served_models.add(*models)
    return channel.served_models.count() - before


def _probe_request(channel: Channel) -> tuple[str, dict[str, str], dict[str, str]]:
    """URL, headers and query of a cheap authenticated request that lists the upstream's models."""
    if channel.type == Channel.Type.ANTHROPIC:
        headers = {"x-api-key": channel.api_key, "anthropic-version": "2023-06-01"}
        return f"{channel.base_url}/models", headers, {}
    if channel.type == Channel.Type.GEMINI:
        return f"{channel.base_url}/models", {"x-goog-api-key": channel.api_key}, {}
    headers = {"Authorization": f"Bearer {channel.api_key}"} if channel.api_key else {}
    return f"{channel.base_url}/models", headers, {}


def channel_test(*, channel: Channel, timeout_seconds: float = 10.0) -> ChannelTestResult:
    """Call the upstream once and record the latency and the error, if any."""
    import httpx  # here, not at the top: relay processes import this module and never test

    url, headers, params = _probe_request(channel)
    started = time.monotonic()
    try:
        response = httpx.get(url, headers=headers, params=params, timeout=timeout_seconds)
        error = "" if response.is_success else f"HTTP {response.status_code}: {response.text[:200]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    latency_ms = round((time.monotonic() - started) * 1000)
    now = timezone.now()
    fields = {"last_test_latency_ms": latency_ms, "last_tested_at": now}
    if error:
        fields["last_error"] = error[:1000]
    Channel.objects.filter(pk=channel.pk).update(**fields)
    return ChannelTestResult(ok=not error, latency_ms=latency_ms, error=error)


def channel_record_failure(*, channel_id: int, error: str) -> str:
    """Count a failed call; cool the channel down or disable it past the thresholds.

    Returns the channel's status after the failure ("enabled", "cooling" or "auto_disabled").
    Conditional updates keep concurrent failures from different processes consistent.
    """
    now = timezone.now()
    window = timedelta(seconds=settings.RELAY_CHANNEL_FAILURE_WINDOW_SECONDS)
    with transaction.atomic():
        channel = channels_lock([channel_id]).first()
        if channel is None:
            return "missing"
        if (
            channel.failure_window_started_at is None
            or now - channel.failure_window_started_at > window
        ):
            channel.failure_window_started_at = now
            channel.failure_count = 0
        channel.failure_count += 1
        channel.total_failures += 1
        channel.last_failure_at = now
        channel.last_error = error[:1000]
        fields = [
            "failure_window_started_at",
            "failure_count",
            "total_failures",
            "last_failure_at",
            "last_error",
        ]
        result = "enabled"
        if (
            channel.failure_count >= settings.RELAY_CHANNEL_DISABLE_AFTER
            and channel.status == Channel.Status.ENABLED
        ):
            channel.status = Channel.Status.AUTO_DISABLED
            channel.status_reason = (
                f"{channel.failure_count} failures within "
                f"{settings.RELAY_CHANNEL_FAILURE_WINDOW_SECONDS}s; last: {error}"
            )[:255]
            channel.status_changed_at = now
            fields += ["status", "status_reason", "status_changed_at"]
            result = "auto_disabled"
        elif channel.failure_count >= settings.RELAY_CHANNEL_COOLDOWN_AFTER:
            channel.cooldown_until = now + timedelta(
                seconds=settings.RELAY_CHANNEL_COOLDOWN_SECONDS
            )
            fields.append("cooldown_until")
            result = "cooling"
        channel.save(update_fields=fields)
    return result


def channel_record_success(*, channel_id: int) -> None:
    """A success ends the failure streak (written only when there was one)."""
    Channel.objects.filter(pk=channel_id, failure_count__gt=0).update(
        failure_count=0,
        failure_window_started_at=None,
        cooldown_until=None,
        last_success_at=timezone.now(),
    )


def channels_probe_disabled(*, timeout_seconds: float = 10.0) -> list[str]:
    """Health probe: re-enable automatically disabled channels that answer again."""
    reenabled = []
    for channel in Channel.objects.filter(status=Channel.Status.AUTO_DISABLED):
        if not channel_test(channel=channel, timeout_seconds=timeout_seconds).ok:
            continue
        updated = Channel.objects.filter(pk=channel.pk, status=Channel.Status.AUTO_DISABLED).update(
            status=Channel.Status.ENABLED,
            status_reason="re-enabled by the health probe",
            status_changed_at=timezone.now(),
            failure_count=0,
            failure_window_started_at=None,
            cooldown_until=None,
        )
        if updated:
            reenabled.append(channel.name)
    return reenabled
