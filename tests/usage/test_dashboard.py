from datetime import UTC, datetime

import pytest
from freezegun import freeze_time

from tests.factories import (
    AlertFactory,
    ApiTokenFactory,
    RequestLogFactory,
    TokenGroupFactory,
    UsageRollupFactory,
    UserFactory,
    WalletFactory,
)

pytestmark = pytest.mark.django_db

NOW = "2026-12-07T10:00:00Z"


def at(month: int, day: int, hour: int) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


@pytest.mark.parametrize("url", ["/dashboard/", "/usage/", "/usage/export.csv?by=model"])
def test_it_sends_an_anonymous_visitor_to_the_login_page(client, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/")


@freeze_time(NOW)
def test_the_dashboard_sums_this_months_rollups_of_the_owner_only(owner_client, owner, outsider):
    WalletFactory(user=owner, balance_micros=7_500_000)
    UsageRollupFactory(
        user=owner, hour=at(12, 1, 0), requests=2, prompt_tokens=12, completion_tokens=30
    )
    UsageRollupFactory(
        user=owner,
        hour=at(12, 7, 9),
        requests=3,
        prompt_tokens=100,
        completion_tokens=50,
        cost_micros=2_000,
    )
    UsageRollupFactory(user=owner, hour=at(11, 30, 23), requests=50, cost_micros=9_999)
    UsageRollupFactory(user=outsider, hour=at(12, 2, 0), requests=9, cost_micros=999)

    response = owner_client.get("/dashboard/")

    assert response.status_code == 200
    totals = response.context["totals"]
    assert (totals.requests, totals.tokens, totals.cost_micros) == (5, 192, 3_234)
    content = response.content.decode()
    assert '<dd id="stat-spend">$0.003234</dd>' in content
    assert '<dd id="stat-tokens">192</dd>' in content
    assert '<dd class="note" id="stat-tokens-note">112 in · 80 out</dd>' in content
    assert '<dd id="stat-requests">5</dd>' in content
    assert '<dd id="stat-balance">$7.50</dd>' in content


@freeze_time("2026-12-01T05:00:00Z")
def test_the_dashboards_month_starts_at_midnight_in_the_users_zone(client):
    # In Auckland (UTC+13 in December) the month began on 30 November at 11:00 UTC.
    user = UserFactory(time_zone="Pacific/Auckland")
    UsageRollupFactory(user=user, hour=at(11, 30, 11), requests=1)
    UsageRollupFactory(user=user, hour=at(11, 30, 10), requests=100)
    client.force_login(user)

    response = client.get("/dashboard/")

    assert response.context["totals"].requests == 1
    assert "This month since 2026-12-01 (Pacific/Auckland)" in response.content.decode()


@freeze_time(NOW)
def test_the_dashboard_charts_the_last_30_days_of_spend_by_model_with_its_numbers(
    owner_client, owner, outsider
):
    UsageRollupFactory(user=owner, hour=at(11, 8, 0), model_id="gpt-a", cost_micros=1_000)
    UsageRollupFactory(user=owner, hour=at(12, 7, 9), model_id="gpt-a", cost_micros=250)
    UsageRollupFactory(user=owner, hour=at(12, 7, 9), model_id="claude-b", cost_micros=2_000_000)
    UsageRollupFactory(user=owner, hour=at(11, 7, 23), model_id="too-old", cost_micros=5)
    UsageRollupFactory(user=outsider, hour=at(12, 7, 9), model_id="outsiders", cost_micros=7)

    response = owner_client.get("/dashboard/")

    chart = response.context["cost_chart"]
    assert chart["columns"] == ["claude-b", "gpt-a"]
    assert len(chart["rows"]) == 30
    assert chart["rows"][0] == {"label": "2026-11-08", "values": [0, 1_000], "total": 1_000}
    assert chart["rows"][-1] == {
        "label": "2026-12-07",
        "values": [2_000_000, 250],
        "total": 2_000_250,
    }
    assert chart["total"] == 2_001_250
    assert chart["payload"]["stacked"] is True
    assert chart["payload"]["datasets"][1] == {"label": "gpt-a", "data": [1_000] + [0] * 28 + [250]}
    content = response.content.decode()
    assert 'id="chart-daily-cost-data"' in content
    assert "<summary>Show numbers</summary>" in content
    assert '<td class="num">$2.00025</td>' in content
    assert "outsiders" not in content
    assert "too-old" not in content


def test_the_dashboard_lists_the_ten_latest_calls_and_active_alerts(owner_client, owner, outsider):
    logs = [RequestLogFactory(user=owner) for _ in range(12)]
    RequestLogFactory(user=outsider, request_id="req-of-outsider")
    AlertFactory(user=owner, message="Key production is at 80% of its quota")
    AlertFactory(user=outsider, message="Outsider's alert")

    response = owner_client.get("/dashboard/")

    recent = [log.request_id for log in response.context["recent_logs"]]
    assert recent == [log.request_id for log in reversed(logs[2:])]
    assert [row["request_id"] for row in response.context["recent_index"]] == recent
    content = response.content.decode()
    assert "Key production is at 80% of its quota" in content
    assert "Outsider's alert" not in content
    assert "req-of-outsider" not in content
    assert 'data-ws-path="/ws/dashboard/"' in content
    assert "js/dashboard.js" in content


def test_the_dashboard_of_a_new_user_says_how_to_make_a_call(owner_client):
    content = owner_client.get("/dashboard/").content.decode()

    assert '<div class="table-wrap" data-live-table hidden>' in content
    assert "No calls yet." in content
    assert '<p class="chart-empty">Nothing in these days yet.</p>' in content


def test_the_dashboard_makes_a_bounded_number_of_queries(
    owner_client, owner, django_assert_max_num_queries
):
    WalletFactory(user=owner, balance_micros=1_000_000)
    for n in range(15):
        RequestLogFactory(user=owner)
        UsageRollupFactory(user=owner, model_id=f"model-{n}")
    AlertFactory(user=owner)

    # Session, user, header balance; month totals, balance, 30-day series, calls, alerts.
    with django_assert_max_num_queries(8):
        response = owner_client.get("/dashboard/")

    assert response.status_code == 200


def test_the_navigation_links_the_usage_page(owner_client):
    content = owner_client.get("/dashboard/").content.decode()

    assert '<a href="/usage/">Usage</a>' in content


@freeze_time(NOW)
def test_the_usage_page_shows_the_last_30_days_by_default(owner_client, owner, outsider):
    key = ApiTokenFactory(owner=owner, name="production-web")
    group = TokenGroupFactory(owner=owner, name="backend")
    UsageRollupFactory(
        user=owner,
        hour=at(12, 6, 12),
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
    UsageRollupFactory(user=owner, hour=at(11, 1, 0), cost_micros=999)  # before the range
    UsageRollupFactory(user=outsider, hour=at(12, 6, 12), model_id="outsiders-model")

    response = owner_client.get("/usage/")

    assert response.status_code == 200
    days = response.context["days"]
    assert (days.first_day.isoformat(), days.last_day.isoformat()) == ("2026-11-08", "2026-12-07")
    assert [chart["title"] for chart in response.context["charts"]] == [
        "Spend per day",
        "Tokens per day",
        "Requests per day",
    ]
    content = response.content.decode()
    assert '<dd id="usage-spend">$0.012345</dd>' in content
    assert '<dd id="usage-tokens">1,500</dd>' in content
    assert '<dd id="usage-requests">4</dd>' in content
    assert '<dd id="usage-duration">1,000 ms</dd>' in content
    for table_id in ("usage-table-model", "usage-table-key", "usage-table-group"):
        assert f'id="{table_id}"' in content
    for text in ["production-web", "backend", "gpt-a", "25.0%", "$0.012345", "1,000 ms"]:
        assert text in content
    assert "outsiders-model" not in content
    assert 'href="?range=7d&amp;granularity=day"' in content
    assert 'href="?range=30d&amp;granularity=day" aria-current="page"' in content
    assert 'href="/usage/export.csv?range=30d&amp;granularity=day&amp;by=key"' in content


@freeze_time(NOW)
def test_the_usage_page_shows_weeks_of_a_custom_range_split_by_key(owner_client, owner):
    key = ApiTokenFactory(owner=owner, name="staging-ci")
    # Tuesday 3 November and Monday 9 November (UTC, the owner's zone).
    UsageRollupFactory(user=owner, hour=at(11, 3, 8), key_id=key.pk, cost_micros=100)
    UsageRollupFactory(user=owner, hour=at(11, 9, 8), key_id=0, cost_micros=40)

    response = owner_client.get(
        "/usage/?range=custom&from=2026-11-01&to=2026-11-15&granularity=week&split=key"
    )

    cost = response.context["charts"][0]
    assert cost["title"] == "Spend per week, by key"
    assert cost["bucket_name"] == "Week of"
    assert cost["columns"] == ["staging-ci", "no key"]
    assert cost["rows"] == [
        {"label": "2026-10-26", "values": [0, 0], "total": 0},
        {"label": "2026-11-02", "values": [100, 0], "total": 100},
        {"label": "2026-11-09", "values": [0, 40], "total": 40},
    ]
    content = response.content.decode()
    assert 'value="2026-11-01"' in content
    assert '<option value="week" selected>Week</option>' in content
    assert '<option value="key" selected>Key</option>' in content


@freeze_time(NOW)
def test_a_wrong_usage_query_shows_the_error_and_the_last_30_days(owner_client):
    response = owner_client.get("/usage/?range=custom&from=2026-11-10&to=2026-11-01")

    assert response.status_code == 200
    assert response.context["days"].preset == "30d"
    assert "The range&#x27;s first day is after its last day." in response.content.decode()


def test_the_usage_page_makes_a_bounded_number_of_queries(
    owner_client, owner, django_assert_max_num_queries
):
    keys = ApiTokenFactory.create_batch(3, owner=owner)
    for n, key in enumerate(keys):
        UsageRollupFactory(user=owner, key_id=key.pk, model_id=f"model-{n}")

    # Session, user, header balance; series, key names, totals; three tables, key and group names.
    with django_assert_max_num_queries(11):
        response = owner_client.get("/usage/?split=key")

    assert response.status_code == 200


@freeze_time(NOW)
def test_the_usage_csv_has_a_row_per_model_with_exact_numbers(owner_client, owner, outsider):
    UsageRollupFactory(
        user=owner,
        hour=at(12, 6, 12),
        model_id="gpt-a",
        requests=4,
        errors=1,
        prompt_tokens=1_000,
        completion_tokens=500,
        cached_tokens=200,
        cost_micros=12_345,
        duration_ms=4_002,
    )
    UsageRollupFactory(user=owner, hour=at(12, 6, 13), model_id="=cmd()", cost_micros=1)
    UsageRollupFactory(user=outsider, hour=at(12, 6, 12), model_id="outsiders-model")

    response = owner_client.get("/usage/export.csv?range=7d&by=model")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        'attachment; filename="usage-by-model-2026-12-01-to-2026-12-07.csv"'
    )
    assert response.content.decode().splitlines() == [
        "name,id,requests,errors,error_rate_percent,prompt_tokens,completion_tokens,"
        "cached_tokens,cost_usd,cost_micros,avg_duration_ms",
        "gpt-a,gpt-a,4,1,25.0,1000,500,200,0.012345,12345,1001",
        "'=cmd(),'=cmd(),1,0,0.0,12,30,0,0.000001,1,800",
    ]


def test_the_usage_csv_refuses_an_unknown_breakdown(owner_client):
    response = owner_client.get("/usage/export.csv?by=channel")

    assert response.status_code == 400
    assert response.content.decode() == "Unknown breakdown 'channel'; one of model, key, group."
