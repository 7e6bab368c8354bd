"""/api/usage/ and /api/dashboard/: stats from the hourly rollups, as the owner and as an outsider,
by personal access token and by session."""

from datetime import UTC, datetime

import pytest
from freezegun import freeze_time

from accounts.services import access_token_create
from tests.factories import (
    AlertFactory,
    ApiTokenFactory,
    RequestLogFactory,
    TokenGroupFactory,
    UsageRollupFactory,
    UserFactory,
    WalletFactory,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]

NOW = "2026-12-07T10:00:00Z"


@pytest.fixture
def frozen():
    with freeze_time(NOW):
        yield


def at(month: int, day: int, hour: int) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def bearer(user) -> dict:
    _, secret = access_token_create(user=user, name="script")
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def usage(owner, outsider):
    """The owner's calls on two days of November and one of December, and an outsider's."""
    key = ApiTokenFactory(owner=owner, name="production-web")
    group = TokenGroupFactory(owner=owner, name="backend")
    UsageRollupFactory(
        user=owner,
        hour=at(11, 20, 8),
        key_id=key.pk,
        group_id=group.pk,
        model_id="gpt-a",
        requests=4,
        errors=1,
        prompt_tokens=1_000,
        completion_tokens=500,
        cached_tokens=200,
        cost_micros=12_345,
        duration_ms=4_000,
    )
    UsageRollupFactory(user=owner, hour=at(11, 21, 8), model_id="gpt-b", cost_micros=100)
    UsageRollupFactory(user=owner, hour=at(12, 7, 9), model_id="gpt-b", cost_micros=55)
    UsageRollupFactory(user=outsider, hour=at(11, 20, 8), model_id="outsiders", cost_micros=9)
    return {"key": key, "group": group}


def test_every_usage_endpoint_needs_authentication(client):
    for path in ["/api/usage/summary/", "/api/usage/series/", "/api/usage/breakdown/?by=model"]:
        response = client.get(path)

        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert client.get("/api/dashboard/").status_code == 401


def test_the_summary_sums_a_range_of_the_owners_days(client, owner, usage):
    response = client.get(
        "/api/usage/summary/", {"from": "2026-11-20", "to": "2026-11-21"}, headers=bearer(owner)
    )

    assert response.status_code == 200
    assert response.json() == {
        "range": {"time_zone": "UTC", "from": "2026-11-20", "to": "2026-11-21"},
        "totals": {
            "requests": 5,
            "errors": 1,
            "error_rate_percent": 20.0,
            "prompt_tokens": 1_012,
            "completion_tokens": 530,
            "cached_tokens": 200,
            "total_tokens": 1_542,
            "cost_micros": 12_445,
            "cost_usd": "0.012445",
            "duration_ms": 4_800,
            "avg_duration_ms": 960,
        },
    }


def test_the_summary_defaults_to_the_last_30_days(owner_client, usage):
    response = owner_client.get("/api/usage/summary/")

    body = response.json()
    assert body["range"] == {"time_zone": "UTC", "from": "2026-11-08", "to": "2026-12-07"}
    assert body["totals"]["cost_micros"] == 12_500


def test_an_outsider_sees_only_their_own_usage(client, outsider, usage):
    response = client.get(
        "/api/usage/breakdown/", {"by": "model", "from": "2026-11-01"}, headers=bearer(outsider)
    )

    assert response.status_code == 400  # `to` is missing
    response = client.get(
        "/api/usage/breakdown/",
        {"by": "model", "from": "2026-11-01", "to": "2026-11-30"},
        headers=bearer(outsider),
    )
    assert [row["label"] for row in response.json()["results"]] == ["outsiders"]


def test_a_custom_range_needs_both_days_in_order(owner_client):
    response = owner_client.get("/api/usage/summary/", {"from": "2026-11-21", "to": "2026-11-20"})

    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request",
        "code": "invalid_range",
        "message": "The range's first day is after its last day.",
        "fields": {"from": ["The range's first day is after its last day."]},
    }


def test_a_malformed_day_is_a_400_on_that_field(owner_client):
    response = owner_client.get("/api/usage/summary/", {"from": "yesterday", "to": "2026-11-20"})

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["from"]


def test_the_series_splits_by_model_with_the_rest_as_other(owner_client, usage):
    response = owner_client.get(
        "/api/usage/series/",
        {"from": "2026-11-20", "to": "2026-11-22", "split": "model", "top": 1},
    )

    assert response.status_code == 200
    assert response.json()["series"] == {
        "granularity": "day",
        "split": "model",
        "buckets": ["2026-11-20", "2026-11-21", "2026-11-22"],
        "total": {
            "key": "",
            "label": "all",
            "cost_micros": [12_345, 100, 0],
            "tokens": [1_500, 42, 0],
            "requests": [4, 1, 0],
        },
        "series": [
            {
                "key": "gpt-a",
                "label": "gpt-a",
                "cost_micros": [12_345, 0, 0],
                "tokens": [1_500, 0, 0],
                "requests": [4, 0, 0],
            },
            {
                "key": "other",
                "label": "other",
                "cost_micros": [0, 100, 0],
                "tokens": [0, 42, 0],
                "requests": [0, 1, 0],
            },
        ],
    }


def test_the_series_by_month_follows_the_users_zone(client):
    user = UserFactory(time_zone="Asia/Tokyo")
    # 30 November 15:00 UTC is midnight of 1 December in Tokyo.
    UsageRollupFactory(user=user, hour=at(11, 30, 14), cost_micros=3)
    UsageRollupFactory(user=user, hour=at(11, 30, 15), cost_micros=40)

    response = client.get(
        "/api/usage/series/",
        {"from": "2026-11-01", "to": "2026-12-31", "granularity": "month"},
        headers=bearer(user),
    )

    body = response.json()
    assert body["range"]["time_zone"] == "Asia/Tokyo"
    assert body["series"]["buckets"] == ["2026-11-01", "2026-12-01"]
    assert body["series"]["total"]["cost_micros"] == [3, 40]
    assert body["series"]["series"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"granularity": "hour"}, "granularity"),
        ({"split": "channel"}, "split"),
        ({"top": 0}, "top"),
    ],
)
def test_a_bad_series_parameter_is_a_400_on_that_field(owner_client, params, field):
    response = owner_client.get("/api/usage/series/", params)

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [field]


def test_the_breakdown_by_key_names_the_owners_keys(owner_client, usage):
    response = owner_client.get(
        "/api/usage/breakdown/", {"by": "key", "from": "2026-11-01", "to": "2026-12-07"}
    )

    results = response.json()["results"]
    assert [(row["key"], row["label"], row["cost_micros"]) for row in results] == [
        (str(usage["key"].pk), "production-web", 12_345),
        ("0", "no key", 155),
    ]
    assert results[0]["error_rate_percent"] == 25.0
    assert results[0]["avg_duration_ms"] == 1_000
    assert results[0]["cost_usd"] == "0.012345"


def test_the_breakdown_needs_a_dimension(owner_client):
    response = owner_client.get("/api/usage/breakdown/")

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["by"]


def test_the_dashboard_api_has_the_month_balance_series_calls_and_alerts(
    client, owner, outsider, usage
):
    WalletFactory(user=owner, balance_micros=7_500_000)
    log = RequestLogFactory(user=owner, request_id="req-latest", created_at=at(12, 7, 9))
    RequestLogFactory(user=outsider, request_id="req-of-outsider")
    AlertFactory(user=owner, message="Key production is at 80% of its quota")
    AlertFactory(user=outsider, message="Outsider's alert")

    response = client.get("/api/dashboard/", headers=bearer(owner))

    assert response.status_code == 200
    body = response.json()
    assert body["month_start"] == "2026-12-01T00:00:00.000+00:00"
    assert body["month"]["cost_micros"] == 55
    assert body["month"]["requests"] == 1
    assert (body["balance_micros"], body["balance_usd"]) == (7_500_000, "7.500000")
    assert body["range"] == {"time_zone": "UTC", "from": "2026-11-08", "to": "2026-12-07"}
    assert len(body["series"]["buckets"]) == 30
    assert [line["label"] for line in body["series"]["series"]] == ["gpt-a", "gpt-b"]
    assert [call["request_id"] for call in body["recent_calls"]] == [log.request_id]
    assert [alert["message"] for alert in body["alerts"]] == [
        "Key production is at 80% of its quota"
    ]


def test_the_dashboard_api_makes_a_bounded_number_of_queries(
    owner_client, owner, usage, django_assert_max_num_queries
):
    RequestLogFactory.create_batch(12, user=owner)
    AlertFactory(user=owner)

    with django_assert_max_num_queries(7):
        response = owner_client.get("/api/dashboard/")

    assert response.status_code == 200
