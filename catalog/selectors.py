import json
from dataclasses import dataclass
from pathlib import Path

from django.db.models import Exists, OuterRef, QuerySet

from catalog.models import Channel, Model

DEFAULT_CATALOG_PATH = Path(__file__).with_name("default_catalog.json")


def default_catalog() -> dict:
    return json.loads(DEFAULT_CATALOG_PATH.read_text(encoding="utf-8"))


def models_callable() -> QuerySet[Model]:
    """Enabled models that an enabled channel serves: what the relay routes.

    Every user may call every routed model today; a key's own allowlist narrows it per key.
    """
    served = Channel.objects.filter(served_models=OuterRef("pk"), status=Channel.Status.ENABLED)
    return (
        Model.objects.filter(enabled=True)
        .filter(Exists(served))
        .select_related("provider")
        .order_by("sort_order", "model_id")
    )


@dataclass(frozen=True)
class ModelSearch:
    """The Models page and /api/models/: the callable models that match, and the choices of
    each filter (taken from every callable model, so a filter never offers an empty choice)."""

    models: list[Model]
    total: int
    providers: list[tuple[str, str]]  # (slug, name)
    capabilities: list[str]
    call_types: list[tuple[str, str]]  # (value, label)


def models_callable_search(
    *, query: str = "", provider: str = "", capability: str = "", call_type: str = ""
) -> ModelSearch:
    """The callable models whose id, name, provider or description contain `query` (any case),
    narrowed by provider slug, capability tag and call type. One query: the catalog is small, and
    a capability is an element of a JSON list, which SQLite cannot look up in the database.
    """
    every = list(models_callable())
    needle = query.strip().casefold()
    models = [
        model
        for model in every
        if (not provider or model.provider.slug == provider)
        and (not capability or capability in (model.capabilities or ()))
        and (not call_type or model.call_type == call_type)
        and (
            not needle
            or any(
                needle in text.casefold()
                for text in (
                    model.model_id,
                    model.display_name,
                    model.provider.name,
                    model.description,
                )
            )
        )
    ]
    types_present = {model.call_type for model in every}
    return ModelSearch(
        models=models,
        total=len(every),
        providers=sorted({(m.provider.slug, m.provider.name) for m in every}, key=lambda p: p[1]),
        capabilities=sorted({str(tag) for m in every for tag in (m.capabilities or ())}),
        call_types=[(v, label) for v, label in Model.CallType.choices if v in types_present],
    )


def model_callable_get(*, model_id: str) -> Model | None:
    """One callable model by its public id; None when it is unknown, disabled or unrouted."""
    return models_callable().filter(model_id=model_id).first()
