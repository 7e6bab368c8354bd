from datetime import UTC, date, datetime, timedelta

import pytest

from accounts.scope import Scope
from tests.factories import ApiTokenFactory, TokenGroupFactory, UsageRollupFactory, UserFactory
from tokenbyte.errors import ApplicationError
from usage.selectors import (
    RollupTotals,
    usage_breakdown_in_scope,
    usage_range_for_user,
    usage_rollup_totals_in_scope,
    usage_series_in_scope,
)

pytestmark = pytest.mark.django_db

NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)


def at(day: int, hour: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def user_range(user, first: date, last: date):
    return usage_range_for_user(user=user, preset="custom", first_day=first, last_day=last)


def test_totals_sum_the_users_hours_in_the_range_only(owner, outsider):
    UsageRollupFactory(
        user=owner,
        hour=at(1, 0),
        requests=3,
        errors=1,
        prompt_tokens=100,
        completion_tokens=40,
        cached_tokens=20,
        cost_micros=1_500,
        duration_ms=2_400,
    )
    UsageRollupFactory(
        user=owner,
        hour=at(30, 23),
        model_id="claude",
        requests=2,
        prompt_tokens=10,
        completion_tokens=5,
        cost_micros=250,
        duration_ms=600,
    )
    UsageRollupFactory(user=owner, hour=DEC_1, cost_micros=9_999)  # the range's end is excluded
    UsageRollupFactory(user=owner, hour=at(31, 23, month=10), cost_micros=9_999)
    UsageRollupFactory(user=outsider, hour=at(2, 0), cost_micros=9_999)

    totals = usage_rollup_totals_in_scope(scope=Scope(user=owner), start=NOV_1, end=DEC_1)

    assert totals == RollupTotals(
        requests=5,
        errors=1,
        prompt_tokens=110,
        completion_tokens=45,
        cached_tokens=20,
        cost_micros=1_750,
        duration_ms=3_000,
    )
    assert (totals.tokens, totals.error_rate_percent, totals.avg_duration_ms) == (155, 20.0, 600)


def test_totals_of_an_empty_range_are_zero_without_rates(owner):
    totals = usage_rollup_totals_in_scope(scope=Scope(user=owner), start=NOV_1, end=DEC_1)

    assert totals == RollupTotals()
    assert (totals.error_rate_percent, totals.avg_duration_ms) == (None, None)


def test_users_in_utc_minus_8_and_utc_plus_9_get_different_days_for_the_same_hours():
    west = UserFactory(time_zone="Etc/GMT+8")  # UTC-8 (the sign of Etc zones is inverted)
    east = UserFactory(time_zone="Asia/Tokyo")  # UTC+9
    for user in (west, east):
        UsageRollupFactory(user=user, hour=at(10, 6), cost_micros=100, requests=1)
        UsageRollupFactory(user=user, hour=at(10, 20), cost_micros=20, requests=2)

    series = {
        user: usage_series_in_scope(
            scope=Scope(user=user),
            start=user_range(user, date(2026, 11, 9), date(2026, 11, 11)).start,
            end=user_range(user, date(2026, 11, 9), date(2026, 11, 11)).end,
        )
        for user in (west, east)
    }

    # 06:00 UTC is 22:00 on the 9th in UTC-8 and 15:00 on the 10th in Tokyo; 20:00 UTC is
    # 12:00 on the 10th in UTC-8 and 05:00 on the 11th in Tokyo.
    assert series[west].bucket_labels == ["2026-11-09", "2026-11-10", "2026-11-11"]
    assert series[west].total.cost_micros == [100, 20, 0]
    assert series[west].total.requests == [1, 2, 0]
    assert series[east].bucket_labels == ["2026-11-09", "2026-11-10", "2026-11-11"]
    assert series[east].total.cost_micros == [0, 100, 20]


def test_a_half_hour_zone_counts_an_hour_in_the_day_where_it_starts():
    user = UserFactory(time_zone="Asia/Kolkata")  # UTC+5:30
    # 18:00–19:00 UTC is 23:30–00:30 local: all of it counts on the 10th.
    UsageRollupFactory(user=user, hour=at(10, 18), cost_micros=7)
    days = user_range(user, date(2026, 11, 10), date(2026, 11, 11))

    series = usage_series_in_scope(scope=Scope(user=user), start=days.start, end=days.end)

    assert series.total.cost_micros == [7, 0]


def test_weeks_start_on_the_users_monday():
    user = UserFactory(time_zone="Asia/Tokyo")
    # Sunday 15 November 23:00 in Tokyo, then Monday 16 November 00:00 in Tokyo.
    UsageRollupFactory(user=user, hour=at(15, 14), cost_micros=1)
    UsageRollupFactory(user=user, hour=at(15, 15), cost_micros=10)
    days = user_range(user, date(2026, 11, 12), date(2026, 11, 20))

    series = usage_series_in_scope(
        scope=Scope(user=user), start=days.start, end=days.end, granularity="week"
    )

    assert series.bucket_labels == ["2026-11-09", "2026-11-16"]
    assert series.total.cost_micros == [1, 10]


def test_months_change_at_the_users_midnight():
    user = UserFactory(time_zone="Asia/Tokyo")
    # 30 November 14:00 UTC is 23:00 in Tokyo; 15:00 UTC is already 1 December there.
    UsageRollupFactory(user=user, hour=at(30, 14), cost_micros=3, prompt_tokens=5)
    UsageRollupFactory(user=user, hour=at(30, 15), cost_micros=40, prompt_tokens=7)
    days = user_range(user, date(2026, 10, 15), date(2026, 12, 31))

    series = usage_series_in_scope(
        scope=Scope(user=user), start=days.start, end=days.end, granularity="month"
    )

    assert series.bucket_labels == ["2026-10", "2026-11", "2026-12"]
    assert series.total.cost_micros == [0, 3, 40]
    assert series.total.tokens == [0, 35, 37]


def test_a_split_series_keeps_the_top_models_by_spend_and_sums_the_rest_as_other(owner):
    costs = {"m-a": 700, "m-b": 600, "m-c": 500, "m-d": 400, "m-e": 300, "m-f": 200, "m-g": 100}
    for model, cost in costs.items():
        UsageRollupFactory(user=owner, hour=at(2, 8), model_id=model, cost_micros=cost)
    UsageRollupFactory(user=owner, hour=at(3, 8), model_id="m-g", cost_micros=5, requests=4)
    days = user_range(owner, date(2026, 11, 2), date(2026, 11, 3))

    series = usage_series_in_scope(
        scope=Scope(user=owner), start=days.start, end=days.end, split="model"
    )

    assert [(line.label, line.cost_micros) for line in series.lines] == [
        ("m-a", [700, 0]),
        ("m-b", [600, 0]),
        ("m-c", [500, 0]),
        ("m-d", [400, 0]),
        ("m-e", [300, 0]),
        ("other", [300, 5]),
    ]
    assert series.lines[-1].requests == [2, 4]
    assert series.total.cost_micros == [2_800, 5]


def test_a_split_by_key_names_the_users_keys_and_no_one_elses(owner, outsider):
    key = ApiTokenFactory(owner=owner, name="production-web")
    outsiders_key = ApiTokenFactory(owner=outsider, name="outsider-secret-name")
    UsageRollupFactory(user=owner, hour=at(2, 8), key_id=key.pk, cost_micros=30)
    UsageRollupFactory(user=owner, hour=at(2, 8), key_id=0, cost_micros=20)
    UsageRollupFactory(user=owner, hour=at(2, 8), key_id=outsiders_key.pk, cost_micros=10)
    days = user_range(owner, date(2026, 11, 2), date(2026, 11, 2))

    series = usage_series_in_scope(
        scope=Scope(user=owner), start=days.start, end=days.end, split="key"
    )

    assert [(line.key, line.label) for line in series.lines] == [
        (str(key.pk), "production-web"),
        ("0", "no key"),
        (str(outsiders_key.pk), f"deleted key #{outsiders_key.pk}"),
    ]


def test_a_series_rejects_an_unknown_granularity_or_split(owner):
    with pytest.raises(ApplicationError) as granularity:
        usage_series_in_scope(scope=Scope(user=owner), start=NOV_1, end=DEC_1, granularity="hour")
    with pytest.raises(ApplicationError) as split:
        usage_series_in_scope(scope=Scope(user=owner), start=NOV_1, end=DEC_1, split="channel")

    assert (granularity.value.code, granularity.value.extra) == (
        "invalid_granularity",
        {"param": "granularity"},
    )
    assert (split.value.code, split.value.extra) == ("invalid_split", {"param": "split"})


def test_a_breakdown_by_group_has_sums_error_rate_and_mean_duration(owner):
    group = TokenGroupFactory(owner=owner, name="backend")
    deleted = TokenGroupFactory(owner=owner, name="gone")
    deleted_id = deleted.pk
    deleted.delete()
    UsageRollupFactory(
        user=owner, hour=at(2, 1), group_id=group.pk, requests=3, errors=1, duration_ms=900
    )
    UsageRollupFactory(
        user=owner,
        hour=at(2, 2),
        group_id=group.pk,
        model_id="other-model",
        requests=5,
        errors=1,
        cost_micros=766,
        duration_ms=1_100,
    )
    UsageRollupFactory(user=owner, hour=at(2, 3), group_id=deleted_id, cost_micros=10)
    UsageRollupFactory(user=owner, hour=at(2, 3), group_id=0, cost_micros=5_000)

    rows = usage_breakdown_in_scope(scope=Scope(user=owner), start=NOV_1, end=DEC_1, by="group")

    assert [(row.label, row.requests, row.cost_micros) for row in rows] == [
        ("no group", 1, 5_000),
        ("backend", 8, 2_000),
        (f"deleted group #{deleted_id}", 1, 10),
    ]
    backend = rows[1]
    assert (backend.key, backend.errors, backend.tokens) == (str(group.pk), 2, 84)
    assert (backend.error_rate_percent, backend.avg_duration_ms) == (25.0, 250)


def test_a_breakdown_by_model_is_ordered_by_spend(owner):
    UsageRollupFactory(user=owner, hour=at(2, 1), model_id="cheap", cost_micros=1)
    UsageRollupFactory(user=owner, hour=at(2, 1), model_id="dear", cost_micros=99)

    rows = usage_breakdown_in_scope(scope=Scope(user=owner), start=NOV_1, end=DEC_1, by="model")

    assert [(row.key, row.label) for row in rows] == [("dear", "dear"), ("cheap", "cheap")]


@pytest.mark.parametrize(
    ("preset", "first", "last"),
    [
        ("7d", date(2026, 12, 1), date(2026, 12, 7)),
        ("30d", date(2026, 11, 8), date(2026, 12, 7)),
        ("this_month", date(2026, 12, 1), date(2026, 12, 7)),
        ("last_month", date(2026, 11, 1), date(2026, 11, 30)),
    ],
)
def test_range_presets_are_whole_days_of_the_user(preset, first, last):
    user = UserFactory.build(time_zone="Asia/Tokyo")
    # 6 December 20:00 UTC is already 7 December in Tokyo.
    now = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)

    days = usage_range_for_user(user=user, preset=preset, now=now)

    assert (days.first_day, days.last_day) == (first, last)
    midnight_in_tokyo = datetime(first.year, first.month, first.day, tzinfo=UTC) - timedelta(
        hours=9
    )
    assert days.start == midnight_in_tokyo
    assert days.end == midnight_in_tokyo + timedelta(days=days.days)


@pytest.mark.parametrize(
    ("first", "last", "param"),
    [
        (None, date(2026, 11, 2), "from"),
        (date(2026, 11, 2), None, "to"),
        (date(2026, 11, 3), date(2026, 11, 2), "from"),
        (date(2024, 1, 1), date(2026, 11, 2), "from"),
    ],
)
def test_a_custom_range_must_be_whole_and_at_most_two_years(first, last, param):
    user = UserFactory.build()

    with pytest.raises(ApplicationError) as error:
        usage_range_for_user(user=user, preset="custom", first_day=first, last_day=last)

    assert (error.value.code, error.value.extra) == ("invalid_range", {"param": param})
