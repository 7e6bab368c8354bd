"""Holds on key and group limits: the ORM path and the SQL functions keep the same books.

Every refusal leaves every counter as it was and no hold row; a settlement swaps each part of
the hold for the actual use; the sweep gives each part back.
"""

from datetime import timedelta

import orjson
import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import ApiToken, TokenGroup
from accounts.services import api_token_create, token_group_create
from billing.models import Hold, Wallet
from billing.services import (
    HoldParts,
    HoldRefusal,
    HoldRefused,
    credit_grant,
    hold_acquire,
    hold_settle,
    holds_release_expired,
    wallet_get_or_create,
)
from tests.factories import UserFactory
from usage.models import RequestLog

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["orm", "sql"])
def path(request):
    return request.param


@pytest.fixture
def books():
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
        tokens=tokens, api_token_id=token.pk, group_id=group.pk, token_credit=True,
        token_quota=True, group_credit=True, group_quota=True,
    )  # fmt: skip


def hold(path: str, request_id: str, wallet: Wallet, amount: int, parts: HoldParts) -> int:
    """0 when held, else the HoldRefusal number."""
    if path == "orm":
        try:
            hold_acquire(
                request_id=request_id, wallet_id=wallet.pk, amount_micros=amount, parts=parts,
                ttl_seconds=60,
            )  # fmt: skip
        except HoldRefused as exc:
            return int(exc.refusal)
        return 0
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relay_hold(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [request_id, wallet.pk, parts.api_token_id, parts.group_id, amount, parts.tokens,
             parts.token_credit, parts.token_quota, parts.group_credit, parts.group_quota, now,
             now + timedelta(seconds=60)],
        )  # fmt: skip
        return cursor.fetchone()[0]


def settle(path: str, request_id: str, wallet: Wallet, token, hold_micros, cost, used) -> tuple:
    """(charged, low balance, key used, key quota, key alerted, group used, quota, alerted)."""
    if path == "orm":
        with transaction.atomic():
            s = hold_settle(
                request_id=request_id, wallet_id=wallet.pk, hold_micros=hold_micros,
                cost_micros=cost, used_tokens=used,
            )  # fmt: skip
        quotas = []
        for state in (s.key_quota, s.group_quota):
            quotas += [None] * 3 if state is None else [
                state.used_tokens, state.quota_tokens, state.alerted_percent
            ]  # fmt: skip
        return (s.charged_micros, s.low_balance, *quotas)
    log = RequestLog(
        request_id=request_id, user_id=token.owner_id, api_token_id=token.pk, model_id="m",
        call_type="chat", status_code=200,
    )  # fmt: skip
    row = {f.column: getattr(log, f.attname) for f in RequestLog._meta.concrete_fields}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT * FROM relay_settle(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
            [request_id, wallet.pk, token.pk, True, hold_micros, cost, used, False, "test",
             timezone.now(), orjson.dumps(row).decode()],
        )  # fmt: skip
        result = cursor.fetchone()
    # The log row is written in the same statement, with the cost actually charged.
    assert RequestLog.objects.get(request_id=request_id).cost_micros == result[0]
    return result


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
    assert (row.tokens, row.token_quota_tokens, row.group_quota_tokens) == (128, 128, 128)
    assert (row.token_credit_micros, row.group_credit_micros) == (1070, 1070)
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
