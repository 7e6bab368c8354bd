from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from billing.selectors import ledger_entries_for_wallet, topups_for_user, wallet_for_user

LEDGER_PAGE_SIZE = 100


@login_required
def wallet(request: HttpRequest) -> HttpResponse:
    wallet = wallet_for_user(user=request.user)
    entries = list(ledger_entries_for_wallet(wallet=wallet)[:LEDGER_PAGE_SIZE]) if wallet else []
    context = {
        "wallet": wallet,
        "entries": entries,
        "topups": list(topups_for_user(user=request.user)[:LEDGER_PAGE_SIZE]),
        "page_size": LEDGER_PAGE_SIZE,
    }
    return render(request, "billing/wallet.html", context)
