"""Every settled call is counted in its hour's usage rollup, on both settlement backends, in the
same transaction as its log row: the rollups always equal a recount of the logs."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.models import Wallet
from billing.services import holds_release_expired
from tests.billing.test_holds import charge_for, hold, make_books, parts_of, settle_charge
from usage.models import RequestLog, UsageRollup
from usage.services import usage_rollup_add, usage_rollups_rebuild, usage_rollups_reconcile

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["orm", "sql"])
def path(request):
    """Each test runs on both settlement backends (as tests/billing/test_holds.py does)."""
    return request.param


@pytest.fixture
def books():
    return make_books()


COUNTERS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens",
            "cost_micros", "duration_ms")  # fmt: skip


def rollups() -> list[tuple]:
    return list(
        UsageRollup.objects.order_by("hour", "key_id", "model_id").values_list(
            "hour", "user_id", "key_id", "group_id", "model_id", "call_type", *COUNTERS
        )
    )


def totals() -> dict:
    return UsageRollup.objects.aggregate(**{name: Sum(name) for name in COUNTERS})


def test_a_settled_call_is_counted_in_its_hour_with_the_cost_charged(path, books):
    token, group, wallet = books
    hold(path, "req_r1", wallet, 1070, parts_of(token, group, 128))

    settle_charge(path, charge_for("req_r1", wallet, token, 1070, 168, 19))

    log = RequestLog.objects.get(request_id="req_r1")
    hour = log.created_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    assert rollups() == [
        (hour, token.owner_id, token.pk, 0, "m", "chat.completions", 1, 0, 10, 9, 0, 168, 5)
    ]


def test_calls_of_the_same_hour_key_and_model_add_up_in_one_row(path, books):
    token, group, wallet = books
    for n in range(3):
        hold(path, f"req_sum{n}", wallet, 1070, parts_of(token, group, 128))
        settle_charge(path, charge_for(f"req_sum{n}", wallet, token, 1070, 100 + n, 19))

    assert UsageRollup.objects.count() == 1
    assert totals() == {
        "requests": 3, "errors": 0, "prompt_tokens": 30, "completion_tokens": 27,
        "cached_tokens": 0, "cost_micros": 303, "duration_ms": 15,
    }  # fmt: skip


def test_a_replayed_settlement_is_not_counted_twice(path, books):
    token, group, wallet = books
    hold(path, "req_rep", wallet, 1070, parts_of(token, group, 128))
    charge = charge_for("req_rep", wallet, token, 1070, 168, 19)
    settle_charge(path, charge)

    settle_charge(path, charge)

    assert totals()["requests"] == 1
    assert totals()["cost_micros"] == 168


def test_a_refused_or_failed_call_without_a_hold_counts_as_an_error_that_cost_nothing(path, books):
    token, _, wallet = books
    charge = charge_for("req_err", wallet, token, 0, 0, 0, held=False)
    charge.log.update(status_code=429, error_code="rate_limited", prompt_tokens=0)

    settle_charge(path, charge)

    assert totals() == {
        "requests": 1, "errors": 1, "prompt_tokens": 0, "completion_tokens": 0,
        "cached_tokens": 0, "cost_micros": 0, "duration_ms": 5,
    }  # fmt: skip


def test_a_late_settlement_replacing_the_sweeps_row_leaves_one_request_with_its_cost(path, books):
    token, group, wallet = books
    hold(path, "req_lost", wallet, 1070, parts_of(token, group, 128))
    holds_release_expired(now=timezone.now() + timedelta(seconds=61))
    assert (totals()["requests"], totals()["errors"], totals()["cost_micros"]) == (1, 1, 0)

    settle_charge(path, charge_for("req_lost", wallet, token, 1070, 168, 19))

    assert (totals()["requests"], totals()["errors"], totals()["cost_micros"]) == (1, 0, 168)
    assert totals()["prompt_tokens"] == 10


def test_a_late_settlement_the_wallet_cannot_pay_is_counted_at_no_cost(path, books):
    token, group, wallet = books
    hold(path, "req_late", wallet, 1070, parts_of(token, group, 128))
    holds_release_expired(now=timezone.now() + timedelta(seconds=61))
    Wallet.objects.filter(pk=wallet.pk).update(held_micros=999_900)

    settle_charge(path, charge_for("req_late", wallet, token, 1070, 168, 19))

    assert (totals()["requests"], totals()["cost_micros"]) == (1, 0)


def test_the_rollups_equal_a_recount_of_the_logs(path, books):
    token, group, wallet = books
    for n in range(4):
        hold(path, f"req_rc{n}", wallet, 1070, parts_of(token, group, 128))
        charge = charge_for(f"req_rc{n}", wallet, token, 1070, 50 * n, 19)
        if n == 3:
            charge.log.update(status_code=502, error_code="upstream_error")
        settle_charge(path, charge)
    incremental = rollups()

    written = usage_rollups_rebuild()

    assert written == 1
    assert rollups() == incremental


def test_hours_are_utc_hours_whatever_the_time_zone_of_the_moment(books):
    token, _, _ = books
    log = {
        "created_at": datetime(2026, 3, 1, 9, 59, 59, tzinfo=timezone.get_fixed_timezone(600)),
        "user_id": token.owner_id, "api_token_id": token.pk, "model_id": "m",
        "call_type": "embeddings", "status_code": 200, "prompt_tokens": 7,
    }  # fmt: skip

    usage_rollup_add(log=log, cost_micros=3)
    usage_rollup_add(
        log={**log, "created_at": datetime(2026, 2, 28, 23, 1, tzinfo=UTC)}, cost_micros=4
    )

    row = UsageRollup.objects.get()
    assert row.hour == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert (row.requests, row.prompt_tokens, row.cost_micros) == (2, 14, 7)


def test_the_hourly_reconcile_corrects_drift_and_finds_none_in_right_books(books):
    token, group, wallet = books
    for n in range(3):
        hold("sql", f"req_rec{n}", wallet, 1070, parts_of(token, group, 128))
        settle_charge("sql", charge_for(f"req_rec{n}", wallet, token, 1070, 50, 19))
    right = rollups()
    an_hour_later = timezone.now() + timedelta(hours=1)

    assert usage_rollups_reconcile(now=an_hour_later) == 0
    # Drift of every kind: a count off, a bucket missing, a bucket with no logs.
    UsageRollup.objects.update(requests=7, cost_micros=1)
    stray = UsageRollup.objects.values().get()
    stray.pop("id")
    UsageRollup.objects.create(**{**stray, "model_id": "never-called"})
    assert usage_rollups_reconcile(now=an_hour_later) == 2
    UsageRollup.objects.filter(model_id="never-called").delete()
    assert rollups() == right

    UsageRollup.objects.all().delete()
    assert usage_rollups_reconcile(now=an_hour_later) == 1
    assert rollups() == right
    # The hour still filling is left to the settlements.
    assert usage_rollups_reconcile(now=timezone.now()) == 0
