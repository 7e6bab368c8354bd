"""Row locks of billing, taken in one place and one order.

Wallets are locked in primary-key order. A transaction that also changes keys or groups takes
them first (accounts/locks.py), as holds and settlements do: key, group, then wallet.
"""

from django.db.models import QuerySet

from billing.models import Wallet


def wallets_lock(pks: list[int]) -> QuerySet[Wallet]:
    """The wallets with these pks, locked in pk order until the transaction ends."""
    return Wallet.objects.filter(pk__in=pks).order_by("pk").select_for_update(of=("self",))
