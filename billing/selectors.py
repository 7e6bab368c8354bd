from django.db.models import QuerySet, Sum

from accounts.models import User
from billing.models import Alert, LedgerEntry, TopUp, Wallet


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


def wallet_for_user(*, user: User) -> Wallet | None:
    """The user's own wallet, or None before the first credit created one."""
    return Wallet.objects.filter(user=user).first()


def wallet_balance_micros_for_user(*, user: User) -> int:
    """The balance of the user's own wallet in micro-USD, 0 without a wallet (one query)."""
    balance = Wallet.objects.filter(user=user).values_list("balance_micros", flat=True).first()
    return balance or 0


def ledger_entries_for_wallet(*, wallet: Wallet) -> QuerySet[LedgerEntry]:
    """The wallet's ledger, newest first; each row carries its running balance."""
    return LedgerEntry.objects.filter(wallet=wallet).order_by("-created_at", "-id")


def topups_for_user(*, user: User) -> QuerySet[TopUp]:
    """The user's card top-ups, newest first."""
    return TopUp.objects.filter(user=user).order_by("-created_at", "-id")
