"""Row locks of catalog, taken in one place and one order (primary-key order)."""

from django.db.models import QuerySet

from catalog.models import Channel


def channels_lock(pks: list[int]) -> QuerySet[Channel]:
    """The channels with these pks, locked in pk order until the transaction ends."""
    return Channel.objects.filter(pk__in=pks).order_by("pk").select_for_update(of=("self",))
