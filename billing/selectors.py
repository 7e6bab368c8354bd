from django.db.models import QuerySet, Sum

from accounts.models import User
from billing.models import Alert, LedgerEntry, Wallet


def wallet_ledger_sum_micros(*, wallet: Wallet) -> int:
    """Sum of the wallet's ledger; equals wallet.balance_micros whenever the books are right."""
    total = LedgerEntry.objects.filter(wallet=wallet).aggregate(total=Sum("amount_micros"))["total"]
    return total or 0


def alerts_for_user(*, user: User, unread_only: bool = False) -> QuerySet[Alert]:
    """The user's quota and low-balance alerts, newest first, as the dashboard lists them."""
    alerts = Alert.objects.filter(user=user).select_related("api_token", "group", "wallet")
    if unread_only:
        alerts = alerts.filter(read_at__isnull=True)
    return alerts.order_by("-created_at", "-id")
