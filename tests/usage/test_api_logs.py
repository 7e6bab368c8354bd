"""/api/logs/: the Logs page's filters, keyset pages, one call, and the CSV export."""

import csv
import io
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from accounts.services import access_token_create
from tests.factories import ApiTokenFactory, RequestLogFactory, TokenGroupFactory, UserFactory
from tokenbyte.keyset import INVALID_CURSOR

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def bearer(owner) -> dict:
    """The owner's personal access token, as a header of the test client."""
    _, secret = access_token_create(user=owner, name="script")
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def ids(response) -> list[str]:
    return [row["request_id"] for row in response.json()["results"]]


def test_the_list_answers_the_owners_calls_with_every_field(client, owner, outsider, bearer):
    owner.time_zone = "Asia/Tokyo"
    owner.save(update_fields=["time_zone"])
    key = ApiTokenFactory(owner=owner, name="production-web")
    group = TokenGroupFactory(owner=owner, name="backend")
    RequestLogFactory(
        user=owner,
        request_id="req-one",
        created_at=datetime(2026, 11, 30, 16, 30, 0, 125_000, tzinfo=UTC),
        api_token=key,
        token_name="production-web",
        group=group,
        group_name="backend",
        model_id="gpt-4o-mini",
        upstream_model="gpt-4o-mini-2024-07-18",
        call_type="chat.completions",
        is_stream=True,
        status_code=200,
        duration_ms=1_500,
        ttft_ms=320,
        prompt_tokens=1_200,
        completion_tokens=345,
        cached_tokens=128,
        cost_micros=4_321,
        attempts=2,
        request_params={"temperature": 0.2},
    )
    RequestLogFactory(user=outsider, request_id="req-outsider")

    response = client.get("/api/logs/", **bearer)

    assert response.status_code == 200
    assert response.json() == {
        "results": [
            {
                "request_id": "req-one",
                "created_at": "2026-12-01T01:30:00.125+09:00",
                "model": "gpt-4o-mini",
                "upstream_model": "gpt-4o-mini-2024-07-18",
                "call_type": "chat.completions",
                "stream": True,
                "key_id": key.pk,
                "key_name": "production-web",
                "group_id": group.pk,
                "group_name": "backend",
                "status_code": 200,
                "error_code": "",
                "duration_ms": 1_500,
                "ttft_ms": 320,
                "prompt_tokens": 1_200,
                "completion_tokens": 345,
                "cached_tokens": 128,
                "cache_write_tokens": 0,
                "total_tokens": 1_545,
                "cost_micros": 4_321,
                "cost_usd": "0.004321",
                "attempts": 2,
                "member_email": None,
            }
        ],
        "next": None,
        "next_cursor": None,
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"model": "claude-sonnet"}, ["req-model"]),
        ({"call_type": "embeddings"}, ["req-type"]),
        ({"status": "error"}, ["req-error"]),
        ({"status": "503"}, ["req-error"]),
        ({"from": "2026-11-30T12:03:00Z"}, ["req-error", "req-type"]),
        ({"to": "2026-11-30T12:01:00+00:00"}, ["req-plain"]),
    ],
)
def test_the_list_takes_the_pages_filters(owner_client, owner, query, expected):
    rows = {
        "plain": {},
        "model": {"model_id": "claude-sonnet"},
        "key": {},
        "type": {"call_type": "embeddings"},
        "error": {"status_code": 503},
    }
    for minute, (name, fields) in enumerate(rows.items()):
        fields = {"call_type": "chat.completions", **fields}
        if name == "key":
            minute = 2
        RequestLogFactory(
            user=owner,
            request_id=f"req-{name}",
            created_at=T0 + timedelta(minutes=minute),
            **fields,
        )

    response = owner_client.get("/api/logs/", query)

    assert response.status_code == 200
    assert ids(response) == expected


def test_the_key_and_group_filters(owner_client, owner):
    key = ApiTokenFactory(owner=owner)
    group = TokenGroupFactory(owner=owner)
    RequestLogFactory(user=owner, request_id="req-key", api_token=key)
    RequestLogFactory(user=owner, request_id="req-group", group=group)
    RequestLogFactory(user=owner, request_id="req-none")

    assert ids(owner_client.get("/api/logs/", {"key": key.pk})) == ["req-key"]
    assert ids(owner_client.get("/api/logs/", {"group": group.pk})) == ["req-group"]


def test_pages_follow_next_across_equal_timestamps_without_losing_or_repeating_a_row(
    owner_client, owner
):
    made = [
        RequestLogFactory(user=owner, created_at=T0 + timedelta(seconds=i % 2), model_id="m")
        for i in range(25)
    ]
    RequestLogFactory(user=owner, model_id="other")
    expected = [
        log.request_id for log in sorted(made, key=lambda r: (r.created_at, r.pk), reverse=True)
    ]

    seen, url, pages = [], "/api/logs/?model=m&limit=10", 0
    while url:
        body = owner_client.get(url).json()
        seen += [row["request_id"] for row in body["results"]]
        pages += 1
        url = body["next"]
        if url:
            assert url.startswith("http://testserver/api/logs/?")
            assert "model=m" in url and "limit=10" in url
            assert f"cursor={body['next_cursor']}" in url

    assert pages == 3
    assert seen == expected


def test_the_limit_is_capped_and_defaults_to_a_hundred(owner_client, owner):
    RequestLogFactory.create_batch(101, user=owner)

    default = owner_client.get("/api/logs/").json()
    huge = owner_client.get("/api/logs/", {"limit": 5000}).json()

    assert len(default["results"]) == 100
    assert parse_qs(urlsplit(default["next"]).query) == {
        "limit": ["100"],
        "cursor": [default["next_cursor"]],
    }
    assert len(huge["results"]) == 101
    assert huge["next"] is None


NOT_A_TIME = "'soon' is not a date or time (use 2026-12-01 or 2026-12-01T14:30)."
NOT_A_STATUS = "status is 'success', 'error' or an HTTP status code such as 429."
NOT_A_CURSOR = INVALID_CURSOR


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ({"from": "soon"}, "from", NOT_A_TIME),
        ({"status": "oops"}, "status", NOT_A_STATUS),
        ({"key": "-1"}, "key", "'-1' is not a key id."),
        ({"cursor": "%%%"}, "cursor", NOT_A_CURSOR),
        # [time, 2**63]: past PostgreSQL's bigint.
        ({"cursor": "WyIyMDI2LTEyLTAxVDAwOjAwOjAwKzAwOjAwIiw5MjIzMzcyMDM2ODU0Nzc1ODA4XQ"},
         "cursor", NOT_A_CURSOR),
        ({"model": "gpt\x00"}, "model", "model cannot contain a NUL character."),
        ({"to": "9999-12-31"}, "to",
         "'9999-12-31' is not a date or time (use 2026-12-01 or 2026-12-01T14:30)."),
    ],
)  # fmt: skip
def test_an_unusable_filter_or_cursor_is_a_400_on_that_field(owner_client, query, field, message):
    response = owner_client.get("/api/logs/", query)

    assert response.status_code == 400
    code = "invalid_cursor" if field == "cursor" else "invalid_filter"
    assert response.json() == {
        "error": {
            "type": "invalid_request",
            "code": code,
            "message": message,
            "fields": {field: [message]},
        }
    }


def test_one_call_has_its_details(client, owner, bearer):
    RequestLogFactory(
        user=owner,
        request_id="req-detail",
        created_at=T0,
        status_code=429,
        error_code="rate_limit_exceeded",
        error_message="Slow down.",
        endpoint="chat.completions",
        request_params={"temperature": 0.2, "messages_count": 2},
        response_excerpt="",
        client_ip="203.0.113.9",
        cost_micros=0,
    )

    body = client.get("/api/logs/req-detail/", **bearer).json()

    assert body["status_code"] == 429
    assert body["status_reason"] == "Too Many Requests"
    assert body["error_code"] == "rate_limit_exceeded"
    assert body["error_message"] == "Slow down."
    assert body["request_params"] == {"temperature": 0.2, "messages_count": 2}
    assert body["response_excerpt"] == ""
    assert body["client_ip"] == "203.0.113.9"
    assert body["endpoint"] == "chat.completions"
    assert body["created_at"] == "2026-11-30T12:00:00.000+00:00"
    assert body["cost_usd"] == "0.000000"


def test_another_users_call_is_a_404_like_a_missing_one(client, owner, outsider):
    RequestLogFactory(user=outsider, request_id="req-theirs")
    client.force_login(owner)

    theirs = client.get("/api/logs/req-theirs/")
    missing = client.get("/api/logs/req-missing/")

    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    assert theirs.json()["error"]["type"] == "not_found"


def test_the_list_needs_authentication(client):
    response = client.get("/api/logs/")

    assert response.status_code in (401, 403)
    assert response.json()["error"]["type"] in ("authentication_error", "permission_error")


def test_a_relay_key_is_not_an_api_credential(client, owner):
    RequestLogFactory(user=owner)

    response = client.get("/api/logs/", HTTP_AUTHORIZATION="Bearer sk-not-for-the-api")

    assert response.status_code == 401


def test_the_csv_export_is_the_pages_csv_for_the_same_filters(client, owner, bearer):
    key = ApiTokenFactory(owner=owner, name="production-web")
    RequestLogFactory(
        user=owner, request_id="req-a", created_at=T0, api_token=key, token_name=key.name,
        cost_micros=1_500_000,
    )  # fmt: skip
    RequestLogFactory(user=owner, request_id="req-b", created_at=T0)
    RequestLogFactory(user=UserFactory(), request_id="req-outsider", created_at=T0)

    api = client.get("/api/logs/export.csv", {"key": key.pk}, **bearer)
    client.force_login(owner)
    page = client.get("/logs/export.csv", {"key": key.pk})

    api_text = b"".join(api.streaming_content).decode()
    assert api.status_code == 200
    assert api["Content-Type"] == "text/csv; charset=utf-8"
    assert api_text == b"".join(page.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(api_text)))
    assert [(row[1], row[14]) for row in rows[1:]] == [("req-a", "1.500000")]


def test_the_csv_export_streams_even_when_the_client_asks_for_text_csv(owner_client, owner):
    RequestLogFactory(user=owner, request_id="req-a")

    response = owner_client.get("/api/logs/export.csv", HTTP_ACCEPT="text/csv")

    assert response.status_code == 200
    assert "req-a" in b"".join(response.streaming_content).decode()


def test_an_unusable_csv_filter_is_a_json_400(owner_client):
    response = owner_client.get("/api/logs/export.csv", {"to": "never"}, HTTP_ACCEPT="text/csv")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["fields"] == {
        "to": ["'never' is not a date or time (use 2026-12-01 or 2026-12-01T14:30)."]
    }


def test_the_list_makes_a_constant_number_of_queries(
    owner_client, owner, django_assert_num_queries
):
    RequestLogFactory.create_batch(40, user=owner)

    # Session, user and the page of logs.
    with django_assert_num_queries(3):
        response = owner_client.get("/api/logs/", {"limit": 20})

    assert len(response.json()["results"]) == 20
