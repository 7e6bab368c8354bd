import json
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
