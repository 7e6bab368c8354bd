from django.db.models import Sum

from billing.models import LedgerEntry, Wallet


def wallet_ledger_sum_micros(*, wallet: Wallet) -> int:
    """Sum of the wallet's ledger; equals wallet.balance_micros whenever the books are right."""
    total = LedgerEntry.objects.filter(wallet=wallet).aggregate(total=Sum("amount_micros"))["total"]
    return total or 0
