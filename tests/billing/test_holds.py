"""Holds on key and group limits: the ORM path and the SQL functions keep the same books.

Every refusal leaves every counter as it was and no hold row; a settlement swaps each part of
the hold for the actual use; the sweep gives each part back.
"""

import asyncio
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import ApiToken, TokenGroup
from accounts.services import api_token_create, token_group_create
from billing import sql_backend
from billing.holds import CallCharge, HoldParts, HoldRefusal, HoldRefused
from billing.models import Hold, LedgerEntry, Wallet
from billing.services import (
    PROCESS_LOST,
    call_settle_orm,
    credit_grant,
    hold_acquire,
    holds_release_expired,
    wallet_get_or_create,
)
from tests.factories import UserFactory
from tokenbyte import pg
from usage.models import RequestLog

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["orm", "sql"])
def path(request):
    return request.param


@pytest.fixture
def books():
    return make_books()


def make_books():
    """A key with a quota and a credit limit, in a group with both, and a $1 wallet."""
    owner = UserFactory()
    wallet = wallet_get_or_create(user=owner)
    credit_grant(wallet=wallet, amount_micros=1_000_000, reason="test")
    group = token_group_create(
        owner=owner, name="team", quota_tokens=1000, credit_limit_micros=500_000
    )
    token, _ = api_token_create(
        owner=owner, name="k", group=group, quota_tokens=1000, credit_limit_micros=500_000
    )
    return token, group, wallet


def parts_of(token, group, tokens: int) -> HoldParts:
    return HoldParts(
        tokens=tokens, key_id=token.pk, group_id=group.pk, key_credit=True, key_quota=True,
        group_credit=True, group_quota=True,
    )  # fmt: skip


def hold(path: str, request_id: str, wallet: Wallet, amount: int, parts: HoldParts) -> int:
    """0 when held, else the HoldRefusal number."""
    if path == "orm":
        try:
            hold_acquire(
                request_id=request_id, wallet_id=wallet.pk, amount_micros=amount, parts=parts,
                lease_seconds=60, model_id="m", call_type="chat.completions",
            )  # fmt: skip
        except HoldRefused as exc:
            return int(exc.reason)
        return 0
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            sql_backend.HOLD_SQL,
            [request_id, wallet.pk, parts.key_id, parts.group_id, amount, parts.tokens,
             parts.key_credit, parts.key_quota, parts.group_credit, parts.group_quota, "m",
             "chat.completions", now, now + timedelta(seconds=60), parts.membership_id],
        )  # fmt: skip
        return cursor.fetchone()[0]


def on_pool(coroutine):
    """Run a coroutine of the SQL backend on the relay's pool, closed again afterwards."""

    async def run():
        try:
            return await coroutine
        finally:
            await pg.close()

    return asyncio.run(run())


def charge_for(request_id, wallet, token, hold_micros, cost, used, *, held=True) -> CallCharge:
    now = timezone.now()
    return CallCharge(
        request_id=request_id, wallet_id=wallet.pk, key_id=token.pk, held=held,
        hold_micros=hold_micros, cost_micros=cost, used_tokens=used, touch_last_used=False,
        description="test", now=now,
        log={
            "request_id": request_id, "created_at": now, "user_id": token.owner_id,
            "organization_id": None, "api_token_id": token.pk, "token_name": token.name,
            "group_id": None, "group_name": "", "model_id": "m", "upstream_model": "",
            "call_type": "chat.completions", "endpoint": "chat.completions", "is_stream": False,
            "status_code": 200, "duration_ms": 5, "ttft_ms": None, "prompt_tokens": 10,
            "completion_tokens": used - 10 if used > 10 else 0, "cached_tokens": 0,
            "cache_write_tokens": 0,
            "channel_id": None, "channel_name": "", "attempts": 1, "error_code": "",
            "error_message": "", "client_ip": None, "request_params": {},
            "response_excerpt": "",
        },
    )  # fmt: skip


def settle_charge(path: str, charge: CallCharge):
    if path == "orm":
        return call_settle_orm(charge)
    return on_pool(sql_backend.call_settle(charge))


def settle(path: str, request_id: str, wallet: Wallet, token, hold_micros, cost, used) -> tuple:
    """(charged, low balance, key used, key quota, key alerted, group used, quota, alerted)."""
    s = settle_charge(path, charge_for(request_id, wallet, token, hold_micros, cost, used))
    quotas = []
    for state in (s.key_quota, s.group_quota):
        quotas += [None] * 3 if state is None else [
            state.used_tokens, state.quota_tokens, state.alerted_percent
        ]  # fmt: skip
    # The log row is written in the same transaction, with the cost actually charged.
    assert RequestLog.objects.get(request_id=request_id).cost_micros == s.charged_micros
    return (s.charged_micros, s.low_balance, *quotas)


def counters(token, group, wallet) -> dict:
    t = ApiToken.objects.get(pk=token.pk)
    g = TokenGroup.objects.get(pk=group.pk)
    w = Wallet.objects.get(pk=wallet.pk)
    return {
        "key": (t.quota_used_tokens, t.credit_used_micros),
        "group": (g.quota_used_tokens, g.credit_used_micros),
        "wallet": (w.balance_micros, w.held_micros),
        "holds": Hold.objects.count(),
    }


@pytest.mark.parametrize(
    ("setup", "amount", "tokens", "refusal"),
    [
        ({"key": {"quota_used_tokens": 980}}, 1000, 38, HoldRefusal.KEY_QUOTA),
        ({"key": {"credit_used_micros": 499_500}}, 1000, 38, HoldRefusal.KEY_CREDIT),
        ({"group": {"quota_used_tokens": 963}}, 1000, 38, HoldRefusal.GROUP_QUOTA),
        ({"group": {"credit_used_micros": 499_001}}, 1000, 38, HoldRefusal.GROUP_CREDIT),
        ({"wallet": {"held_micros": 999_500}}, 1000, 38, HoldRefusal.WALLET),
    ],
    ids=["key-quota", "key-credit", "group-quota", "group-credit", "wallet"],
)
def test_a_refused_hold_changes_nothing(path, books, setup, amount, tokens, refusal):
    token, group, wallet = books
    ApiToken.objects.filter(pk=token.pk).update(**setup.get("key", {}))
    TokenGroup.objects.filter(pk=group.pk).update(**setup.get("group", {}))
    Wallet.objects.filter(pk=wallet.pk).update(**setup.get("wallet", {}))
    before = counters(token, group, wallet)

    status = hold(path, "req_refused", wallet, amount, parts_of(token, group, tokens))

    assert status == refusal
    assert counters(token, group, wallet) == before


def test_a_hold_reserves_every_part_and_the_settlement_swaps_each_for_the_use(path, books):
    token, group, wallet = books

    status = hold(path, "req_ok", wallet, 1070, parts_of(token, group, 128))

    assert status == 0
    assert counters(token, group, wallet) == {
        "key": (128, 1070), "group": (128, 1070), "wallet": (1_000_000, 1070), "holds": 1,
    }  # fmt: skip
    row = Hold.objects.get()
    assert (row.tokens, row.key_quota_tokens, row.group_quota_tokens) == (128, 128, 128)
    assert (row.key_credit_micros, row.group_credit_micros) == (1070, 1070)
    assert (row.model_id, row.call_type) == ("m", "chat.completions")
    assert row.group_id == group.pk

    result = settle(path, "req_ok", wallet, token, 1070, 168, 19)

    assert result == (168, False, 19, 1000, 0, 19, 1000, 0)
    assert counters(token, group, wallet) == {
        "key": (19, 168), "group": (19, 168), "wallet": (1_000_000 - 168, 0), "holds": 1,
    }  # fmt: skip
    assert Hold.objects.get().status == "settled"


def test_a_settlement_never_counts_more_tokens_than_the_hold_reserved(path, books):
    token, group, wallet = books
    hold(path, "req_over", wallet, 500, parts_of(token, group, 40))

    settle(path, "req_over", wallet, token, 500, 900, 75)

    assert counters(token, group, wallet)["key"] == (40, 500)


def test_the_settlement_says_when_the_wallet_went_below_its_threshold(path, books):
    token, group, wallet = books
    Wallet.objects.filter(pk=wallet.pk).update(low_balance_threshold_micros=999_900)
    hold(path, "req_low", wallet, 1070, parts_of(token, group, 128))

    result = settle(path, "req_low", wallet, token, 1070, 168, 19)

    assert result[:2] == (168, True)


def test_the_sweep_gives_every_part_back(path, books):
    token, group, wallet = books
    before = counters(token, group, wallet)
    hold(path, "req_dead", wallet, 1070, parts_of(token, group, 128))

    released = holds_release_expired(now=timezone.now() + timedelta(seconds=61))

    assert released == 1
    assert counters(token, group, wallet) == {**before, "holds": 1}
    assert Hold.objects.get().status == "released"


def test_a_call_settled_after_the_sweep_still_counts_its_use(path, books):
    token, group, wallet = books
    hold(path, "req_late", wallet, 1070, parts_of(token, group, 128))
    holds_release_expired(now=timezone.now() + timedelta(seconds=61))

    result = settle(path, "req_late", wallet, token, 1070, 168, 19)

    assert result[0] == 168
    assert counters(token, group, wallet) == {
        "key": (19, 168), "group": (19, 168), "wallet": (1_000_000 - 168, 0), "holds": 1,
    }  # fmt: skip


def test_holding_a_request_id_twice_reserves_once(path, books):
    token, group, wallet = books
    hold(path, "req_twice", wallet, 1070, parts_of(token, group, 128))
    after_first = counters(token, group, wallet)

    status = hold(path, "req_twice", wallet, 1070, parts_of(token, group, 128))

    assert status == 0
    assert counters(token, group, wallet) == after_first


def test_settling_twice_charges_once_and_says_it_was_a_replay(path, books):
    token, group, wallet = books
    hold(path, "req_replay", wallet, 1070, parts_of(token, group, 128))
    charge = charge_for("req_replay", wallet, token, 1070, 168, 19)
    first = settle_charge(path, charge)
    after_first = counters(token, group, wallet)

    second = settle_charge(path, charge)

    assert (first.charged_micros, first.replayed) == (168, False)
    assert (second.charged_micros, second.replayed) == (168, True)
    assert counters(token, group, wallet) == after_first
    assert LedgerEntry.objects.filter(kind="usage").count() == 1
    assert RequestLog.objects.count() == 1


def test_the_sweep_logs_a_call_whose_process_died_and_a_late_settlement_replaces_that_row(
    path, books
):
    token, group, wallet = books
    hold(path, "req_lost", wallet, 1070, parts_of(token, group, 128))

    holds_release_expired(now=timezone.now() + timedelta(seconds=61))

    row = RequestLog.objects.get(request_id="req_lost")
    assert (row.status_code, row.error_code, row.cost_micros) == (500, PROCESS_LOST, 0)
    assert (row.model_id, row.call_type, row.api_token_id) == ("m", "chat.completions", token.pk)

    result = settle(path, "req_lost", wallet, token, 1070, 168, 19)

    assert result[0] == 168
    row.refresh_from_db()
    assert (row.status_code, row.error_code, row.cost_micros) == (200, "", 168)
    assert Wallet.objects.get(pk=wallet.pk).balance_micros == 1_000_000 - 168


def test_a_late_settlement_charges_nothing_rather_than_what_other_calls_hold(path, books):
    token, group, wallet = books
    hold(path, "req_late2", wallet, 1070, parts_of(token, group, 128))
    holds_release_expired(now=timezone.now() + timedelta(seconds=61))
    Wallet.objects.filter(pk=wallet.pk).update(held_micros=999_900)  # other calls in flight
    before = counters(token, group, wallet)

    result = settle(path, "req_late2", wallet, token, 1070, 168, 19)

    assert result[0] == 0
    after = counters(token, group, wallet)
    # The tokens used still count; no credit is taken, and the wallet is untouched.
    assert after["wallet"] == before["wallet"]
    assert after["key"] == (19, 0)
    assert not LedgerEntry.objects.filter(kind="usage").exists()


def test_a_refused_hold_names_its_reason_in_the_one_refusal_type():
    refused = HoldRefused(HoldRefusal.KEY_QUOTA, "no")

    assert (refused.code, refused.reason.is_quota) == ("token_quota_exceeded", True)
    assert HoldRefused(HoldRefusal.WALLET).code == "insufficient_quota"
    assert HoldRefused(HoldRefusal.PER_REQUEST_CAP).code == "per_request_cap_exceeded"
