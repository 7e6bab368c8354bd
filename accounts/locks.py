"""Row locks of accounts, taken in one place and one order.

Keys and groups are locked in primary-key order, so two transactions that lock several of them
cannot deadlock; billing's holds take their rows key, group, then wallet (billing/locks.py).
"""

from django.db.models import Model, QuerySet


def limits_lock(model: type[Model], pks: list[int], **filters) -> QuerySet:
    """Keys or groups (`model`) with these pks, locked in pk order until the transaction ends.
    Only their own rows: related rows read with them (the owner) are not locked."""
    return (
        model.objects.filter(pk__in=pks, **filters)
        .order_by("pk")
        .select_for_update(of=("self",))
        .select_related("owner")
    )
