"""Holds under real concurrency: a burst of calls can never spend money that is not there."""

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from billing.models import Hold, Wallet
from billing.selectors import wallet_ledger_sum_micros
from billing.services import holds_release_expired
from tests.relay.conftest import both_paths, chat, wait_for, wait_for_logs

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["sql", "orm"])
def relay(request):
    return both_paths(request)


# With max_tokens=100, one call holds 28 prompt tokens (our estimate with its margin) at $2.50/M
# plus 100 output tokens at $10/M: 70 + 1000 micro-USD.
HOLD_PER_CALL = 1070


def test_fifty_concurrent_calls_against_a_wallet_funded_for_ten(make_account, mock):
    account = make_account(f"{HOLD_PER_CALL * 10 / 1_000_000:.6f}")
    # Slow answers keep every hold open while the whole burst arrives.
    mock.latency_ms = 1500

    def call(_):
        try:
            chat(account, max_tokens=100)
            return "ok"
        except openai.PermissionDeniedError as exc:
            assert exc.code == "insufficient_quota"
            return "refused"

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(call, range(50)))

    assert results.count("ok") == 10
    assert results.count("refused") == 40
    logs = wait_for_logs(account, 50, timeout=15)
    assert sum(log.status_code == 200 for log in logs) == 10
    wait_for(lambda: not Hold.objects.filter(status="open").exists(), message="holds closed")
    wallet = Wallet.objects.get(pk=account.wallet.pk)
    assert wallet.held_micros == 0
    assert wallet.balance_micros == HOLD_PER_CALL * 10 - 10 * 168
    assert wallet.balance_micros >= 0
    assert wallet.balance_micros == wallet_ledger_sum_micros(wallet=wallet)


def test_a_key_credit_limit_holds_under_concurrency(make_account, mock):
    account = make_account("10", credit_limit_micros=HOLD_PER_CALL * 3)
    mock.latency_ms = 1000

    def call(_):
        try:
            chat(account, max_tokens=100)
            return "ok"
        except openai.PermissionDeniedError:
            return "refused"

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(call, range(12)))

    assert results.count("ok") == 3
    wait_for_logs(account, 12, timeout=15)
    account.token.refresh_from_db()
    assert account.token.credit_used_micros == 3 * 168
    wallet = Wallet.objects.get(pk=account.wallet.pk)
    assert wallet.balance_micros == 10_000_000 - 3 * 168 == wallet_ledger_sum_micros(wallet=wallet)


def test_a_hold_left_by_a_dead_process_is_released_by_the_sweep(make_account):
    from datetime import timedelta

    from django.utils import timezone

    from billing.holds import HoldParts
    from billing.services import hold_acquire

    account = make_account("1", credit_limit_micros=5000)
    hold_acquire(
        request_id="req_crashed",
        wallet_id=account.wallet.pk,
        amount_micros=700,
        parts=HoldParts(key_id=account.token.pk, key_credit=True),
        lease_seconds=60,
    )

    assert holds_release_expired() == 0
    assert holds_release_expired(now=timezone.now() + timedelta(seconds=61)) == 1
    assert holds_release_expired(now=timezone.now() + timedelta(seconds=61)) == 0

    wallet = Wallet.objects.get(pk=account.wallet.pk)
    assert (wallet.balance_micros, wallet.held_micros) == (1_000_000, 0)
    account.token.refresh_from_db()
    assert account.token.credit_used_micros == 0
    assert Hold.objects.get(request_id="req_crashed").status == "released"
