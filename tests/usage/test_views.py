from datetime import UTC, datetime

import pytest

from tests.factories import RequestLogFactory, UserFactory
from usage.selectors import month_start_for_user

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", ["/dashboard/", "/logs/", "/logs/req-anything/"])
def test_it_sends_an_anonymous_visitor_to_the_login_page(client, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"


# The dashboard's own tests (stats from the rollups) are in test_dashboard.py.
def test_month_start_is_the_first_local_midnight_of_the_month():
    now = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)

    auckland = month_start_for_user(user=UserFactory.build(time_zone="Pacific/Auckland"), now=now)
    los_angeles = month_start_for_user(
        user=UserFactory.build(time_zone="America/Los_Angeles"), now=now
    )

    assert auckland.astimezone(UTC) == datetime(2026, 11, 30, 11, 0, tzinfo=UTC)
    assert los_angeles.astimezone(UTC) == datetime(2026, 11, 1, 7, 0, tzinfo=UTC)


def test_the_logs_page_lists_the_owners_calls_newest_first(owner_client, owner, outsider):
    first = RequestLogFactory(user=owner, created_at=datetime(2026, 11, 2, 8, 0, tzinfo=UTC))
    second = RequestLogFactory(
        user=owner,
        created_at=datetime(2026, 11, 3, 8, 0, tzinfo=UTC),
        token_name="production-web",
        duration_ms=1_500,
        ttft_ms=320,
        prompt_tokens=1_200,
        completion_tokens=345,
        cached_tokens=128,
        cost_micros=4_321,
    )
    RequestLogFactory(user=outsider, request_id="req-of-outsider")

    response = owner_client.get("/logs/")

    assert [log.pk for log in response.context["logs"]] == [second.pk, first.pk]
    content = response.content.decode()
    assert f'href="/logs/{second.request_id}/"' in content
    for text in ["production-web", "1,500 ms", "320 ms", "1,200", "345", "128", "$0.004321"]:
        assert text in content
    assert "req-of-outsider" not in content


def test_the_logs_page_shows_times_in_the_users_zone(client):
    user = UserFactory(time_zone="Asia/Tokyo")
    RequestLogFactory(user=user, created_at=datetime(2026, 11, 30, 16, 30, tzinfo=UTC))
    client.force_login(user)

    response = client.get("/logs/")

    assert "2026-12-01 01:30:00" in response.content.decode()


def test_the_logs_page_shows_at_most_a_hundred_calls(owner_client, owner):
    RequestLogFactory.create_batch(101, user=owner)

    response = owner_client.get("/logs/")

    assert len(response.context["logs"]) == 100


def test_the_logs_page_makes_a_bounded_number_of_queries(
    owner_client, owner, django_assert_max_num_queries
):
    RequestLogFactory.create_batch(30, user=owner)

    # One more than before the filters: the form's keys, groups and model ids (one query).
    with django_assert_max_num_queries(5):
        response = owner_client.get("/logs/")

    assert response.status_code == 200


def test_a_log_details_page_shows_the_call(owner_client, owner):
    log = RequestLogFactory(
        user=owner,
        request_id="req-details",
        model_id="gpt-4o-mini",
        upstream_model="gpt-4o-mini-2024-07-18",
        status_code=429,
        error_code="rate_limit_exceeded",
        error_message="Upstream answered 429.",
        token_name="staging-ci",
        group_name="ci",
        request_params={"temperature": 0.2, "max_tokens": 64},
        response_excerpt="Hello there",
        cost_micros=0,
    )

    response = owner_client.get("/logs/req-details/")

    assert response.status_code == 200
    assert response.context["log"] == log
    content = response.content.decode()
    for text in [
        "gpt-4o-mini-2024-07-18",
        "rate_limit_exceeded",
        "Upstream answered 429.",
        "staging-ci",
        "ci",
        "&quot;temperature&quot;: 0.2",
        "Hello there",
        "$0.00",
    ]:
        assert text in content


def test_another_users_log_details_are_a_404(owner_client, outsider):
    RequestLogFactory(user=outsider, request_id="req-of-outsider")

    response = owner_client.get("/logs/req-of-outsider/")

    assert response.status_code == 404


def test_a_missing_log_is_a_404(owner_client):
    assert owner_client.get("/logs/req-missing/").status_code == 404


def test_the_log_details_page_makes_a_bounded_number_of_queries(
    owner_client, owner, django_assert_max_num_queries
):
    RequestLogFactory(user=owner, request_id="req-count")

    with django_assert_max_num_queries(4):
        response = owner_client.get("/logs/req-count/")

    assert response.status_code == 200
