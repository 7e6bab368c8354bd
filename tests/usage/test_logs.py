"""The Logs page: filters, keyset pages, details and the CSV export."""

import csv
import io
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncRequestFactory, RequestFactory

from accounts.scope import Scope
from tests.factories import ApiTokenFactory, RequestLogFactory, TokenGroupFactory, UserFactory
from tokenbyte.keyset import cursor_decode, cursor_encode, rows_after
from usage import selectors
from usage.selectors import (
    LOG_CSV_COLUMNS,
    LogFilters,
    log_filters_parse,
    request_logs_csv,
    request_logs_csv_async,
    request_logs_filtered,
    request_logs_page,
    usd_string,
)
from usage.views import log_csv_response

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def page_ids(response) -> list[str]:
    return [log.request_id for log in response.context["logs"]]


def csv_rows(response) -> list[list[str]]:
    text = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture
def calls(owner, outsider):
    """Six calls of the owner, one a minute from T0, each differing in one filtered column,
    and one of the outsider's with every column the same as the owner's first."""
    key = ApiTokenFactory(owner=owner, name="production-web")
    other_key = ApiTokenFactory(owner=owner, name="staging-ci")
    group = TokenGroupFactory(owner=owner, name="backend")
    rows = {
        "plain": dict(model_id="gpt-4o-mini"),
        "model": dict(model_id="claude-sonnet"),
        "key": dict(api_token=key, token_name=key.name),
        "group": dict(api_token=other_key, token_name=other_key.name, group=group,
                      group_name=group.name),
        "type": dict(call_type="embeddings"),
        "error": dict(status_code=429, error_code="rate_limit_exceeded"),
    }  # fmt: skip
    made = {}
    for minute, (name, fields) in enumerate(rows.items()):
        fields = {"model_id": "gpt-4o-mini", "call_type": "chat.completions", **fields}
        made[name] = RequestLogFactory(
            user=owner,
            request_id=f"req-{name}",
            created_at=T0 + timedelta(minutes=minute),
            **fields,
        )
    RequestLogFactory(
        user=outsider,
        request_id="req-outsider",
        created_at=T0,
        api_token=ApiTokenFactory(owner=outsider),
    )
    return {"rows": made, "key": key, "other_key": other_key, "group": group}


def test_without_filters_the_page_lists_the_owners_calls_newest_first(owner_client, calls):
    response = owner_client.get("/logs/")

    assert page_ids(response) == [
        "req-error", "req-type", "req-group", "req-key", "req-model", "req-plain",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"model": "claude-sonnet"}, ["req-model"]),
        ({"call_type": "embeddings"}, ["req-type"]),
        ({"status": "429"}, ["req-error"]),
        ({"status": "error"}, ["req-error"]),
        (
            {"status": "success"},
            ["req-type", "req-group", "req-key", "req-model", "req-plain"],
        ),
        ({"status": "500"}, []),
        (
            {"model": "gpt-4o-mini", "call_type": "chat.completions", "status": "success"},
            ["req-group", "req-key", "req-plain"],
        ),
    ],
)
def test_each_filter_narrows_the_calls_exactly(owner_client, calls, query, expected):
    response = owner_client.get("/logs/", query)

    assert response.status_code == 200
    assert page_ids(response) == expected


def test_the_key_and_group_filters_take_the_owners_key_and_group_ids(owner_client, calls):
    by_key = owner_client.get("/logs/", {"key": calls["key"].pk})
    by_group = owner_client.get("/logs/", {"group": calls["group"].pk})

    assert page_ids(by_key) == ["req-key"]
    assert page_ids(by_group) == ["req-group"]
    content = by_key.content.decode()
    assert f'<option value="{calls["key"].pk}" selected>production-web</option>' in content
    assert f'<option value="{calls["other_key"].pk}">staging-ci</option>' in content
    assert f'<option value="{calls["group"].pk}">backend</option>' in content


def test_another_users_key_filters_to_nothing(owner_client, calls, outsider):
    their_key = outsider.api_tokens.get()

    response = owner_client.get("/logs/", {"key": their_key.pk})

    assert page_ids(response) == []
    assert "req-outsider" not in response.content.decode()
    assert "No calls match these filters." in response.content.decode()


def test_the_time_range_is_read_in_the_users_zone(client):
    # Tokyo is UTC+9: 2026-12-01 00:00 there is 2026-11-30 15:00 UTC.
    user = UserFactory(time_zone="Asia/Tokyo")
    for stamp in ["14:59:59", "15:00:00", "15:30:00", "15:59:59", "16:00:00"]:
        hour, minute, second = map(int, stamp.split(":"))
        RequestLogFactory(
            user=user,
            request_id=f"req-{stamp}",
            created_at=datetime(2026, 11, 30, hour, minute, second, tzinfo=UTC),
        )
    client.force_login(user)

    response = client.get("/logs/", {"from": "2026-12-01T00:00", "to": "2026-12-01T01:00"})

    assert page_ids(response) == ["req-15:59:59", "req-15:30:00", "req-15:00:00"]
    content = response.content.decode()
    assert 'name="from" value="2026-12-01T00:00"' in content
    assert "2026-12-01 00:59:59" in content


def test_a_date_alone_covers_that_whole_day_in_the_users_zone():
    user = UserFactory.build(time_zone="America/Los_Angeles")

    filters = log_filters_parse(user=user, params={"from": "2026-11-30", "to": "2026-11-30"})

    assert filters.since == datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    assert filters.until == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_a_time_with_an_offset_keeps_its_offset():
    user = UserFactory.build(time_zone="Asia/Tokyo")

    filters = log_filters_parse(user=user, params={"from": "2026-12-01T10:00:00+00:00"})

    assert filters.since == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"from": "yesterday"}, "&#x27;yesterday&#x27; is not a date or time"),
        ({"from": "2026-12-02", "to": "2026-12-01"}, "&#x27;to&#x27; must be later than"),
        ({"status": "teapot"}, "status is &#x27;success&#x27;, &#x27;error&#x27; or an HTTP"),
        ({"key": "abc"}, "&#x27;abc&#x27; is not a key id."),
        ({"cursor": "not-a-cursor"}, "This page link is not valid"),
    ],
)
def test_an_unusable_filter_is_explained_and_lists_nothing(owner_client, calls, query, message):
    response = owner_client.get("/logs/", query)

    assert response.status_code == 200
    assert page_ids(response) == []
    content = response.content.decode()
    assert message in content
    assert "Fix the filter above to see calls." in content


def test_pages_follow_each_other_across_equal_timestamps_without_losing_or_repeating_a_row(
    owner_client, owner
):
    # 230 calls on only three distinct instants: the id breaks every tie.
    instants = [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)]
    made = [
        RequestLogFactory(user=owner, created_at=instants[i % 3], model_id="gpt-4o-mini")
        for i in range(230)
    ]
    expected = [
        log.request_id
        for log in sorted(made, key=lambda log: (log.created_at, log.pk), reverse=True)
    ]

    seen, url, pages = [], "/logs/?model=gpt-4o-mini", 0
    while url:
        response = owner_client.get(url)
        seen += page_ids(response)
        pages += 1
        url = response.context["next_query"] and f"/logs/?{response.context['next_query']}"
        if url:
            assert parse_qs(urlsplit(url).query)["model"] == ["gpt-4o-mini"]

    assert pages == 3
    assert seen == expected


def test_calls_made_while_paging_do_not_shift_the_next_page(owner):
    old = [RequestLogFactory(user=owner, created_at=T0) for _ in range(5)]
    logs = request_logs_filtered(scope=Scope(user=owner), filters=LogFilters())
    first = request_logs_page(logs, size=3)

    RequestLogFactory(user=owner, created_at=T0 + timedelta(hours=1))
    second = request_logs_page(logs, cursor=first.next_cursor, size=3)

    assert [log.pk for log in first.rows] == [old[4].pk, old[3].pk, old[2].pk]
    assert [log.pk for log in second.rows] == [old[1].pk, old[0].pk]
    assert second.next_cursor is None


def test_the_next_page_query_walks_the_keyset_not_an_offset(owner):
    logs = request_logs_filtered(scope=Scope(user=owner), filters=LogFilters(model="gpt-4o-mini"))
    cursor = cursor_encode(when=T0, pk=42)

    when, pk = cursor_decode(cursor)
    sql = str(rows_after(logs, when=when, pk=pk).query)

    assert "OFFSET" not in sql
    assert '"usage_requestlog"."created_at" <= ' in sql
    assert '("usage_requestlog"."created_at" < ' in sql
    assert 'OR "usage_requestlog"."id" < 42)' in sql
    assert sql.endswith(
        'ORDER BY "usage_requestlog"."created_at" DESC, "usage_requestlog"."id" DESC'
    )


def test_the_logs_page_shows_its_columns_and_links_the_filtered_csv(owner_client, owner):
    key = ApiTokenFactory(owner=owner, name="production-web")
    RequestLogFactory(
        user=owner,
        request_id="req-columns",
        api_token=key,
        token_name="production-web",
        group_name="backend",
        created_at=T0,
        duration_ms=1_500,
        ttft_ms=320,
        prompt_tokens=1_200,
        completion_tokens=345,
        cached_tokens=128,
        cost_micros=4_321,
        status_code=200,
    )

    response = owner_client.get("/logs/", {"key": key.pk, "status": "success"})

    content = response.content.decode()
    for text in [
        "<td>2026-11-30 12:00:00</td>",
        '<td class="num">$0.004321</td>',
        "<td><code>gpt-4o-mini</code></td>",
        '<td class="num">1,500 ms</td>',
        '<td class="num">320 ms</td>',
        '<td class="num">1,200</td>',
        '<td class="num">345</td>',
        '<td class="num">128</td>',
        "production-web",
        "· backend",
        'href="/logs/req-columns/"',
        f'href="/logs/export.csv?key={key.pk}&amp;status=success"',
    ]:
        assert text in content


def test_names_a_client_chose_are_escaped_in_the_rows(owner_client, owner):
    RequestLogFactory(
        user=owner,
        model_id="<b>model</b>",
        token_name='<script>alert("k")</script>',
        group_name="a&b",
        status_code=503,
    )

    content = owner_client.get("/logs/").content.decode()

    assert "<script>alert" not in content
    assert "&lt;script&gt;alert(&quot;k&quot;)&lt;/script&gt;" in content
    assert "<code>&lt;b&gt;model&lt;/b&gt;</code>" in content
    assert "· a&amp;b</span>" in content
    assert '<span class="badge badge-bad">503</span>' in content


def test_the_logs_page_loads_only_the_columns_it_shows(
    owner_client, owner, django_assert_num_queries
):
    RequestLogFactory(user=owner, request_params={"messages": "x" * 1000}, response_excerpt="y")

    with django_assert_num_queries(5) as queries:
        owner_client.get("/logs/")

    page_query = next(q["sql"] for q in queries.captured_queries if "usage_requestlog" in q["sql"])
    assert "request_params" not in page_query
    assert "response_excerpt" not in page_query


def test_the_empty_logs_page_says_how_calls_arrive(owner_client):
    content = owner_client.get("/logs/").content.decode()

    assert "No calls yet." in content
    assert 'href="/logs/export.csv"' in content


def test_the_logs_page_makes_five_queries_whatever_the_filters(
    owner_client, owner, django_assert_num_queries
):
    # Session, user, header balance, the page of logs, the form's keys, groups and models.
    RequestLogFactory.create_batch(30, user=owner)
    cursor = cursor_encode(when=T0 + timedelta(days=3650), pk=10**9)

    with django_assert_num_queries(5):
        response = owner_client.get("/logs/", {"model": "gpt-4o-mini", "cursor": cursor})

    assert len(response.context["logs"]) == 30


# --- details ---


def test_the_details_show_the_status_reason_key_group_attempts_and_the_error(owner_client, owner):
    RequestLogFactory(
        user=owner,
        request_id="req-failed",
        status_code=429,
        error_code="rate_limit_exceeded",
        error_message="Upstream answered 429.",
        token_name="staging-ci",
        group_name="ci",
        attempts=3,
        request_params={"temperature": 0.2, "messages_count": 1},
        response_excerpt="",
        call_type="chat.completions",
        is_stream=True,
    )

    response = owner_client.get("/logs/req-failed/")

    content = response.content.decode()
    for text in [
        '<dd id="log-http-status">429 Too Many Requests</dd>',
        "<dt>Key</dt><dd>staging-ci</dd>",
        "<dt>Group</dt><dd>ci</dd>",
        "<dt>Channel attempts</dt><dd>3</dd>",
        "<dt>Call type</dt><dd>Chat · streamed</dd>",
        "<code>rate_limit_exceeded</code>",
        "Upstream answered 429.",
        "&quot;messages_count&quot;: 1",
    ]:
        assert text in content


def test_the_details_show_prompt_cache_writes_only_when_there_were_some(owner_client, owner):
    RequestLogFactory(user=owner, request_id="req-cache", cached_tokens=50, cache_write_tokens=75)
    RequestLogFactory(user=owner, request_id="req-plain")

    cached = owner_client.get("/logs/req-cache/").content.decode()
    plain = owner_client.get("/logs/req-plain/").content.decode()

    assert "<dt>Cache write tokens</dt><dd>75</dd>" in cached
    assert "Cache write tokens" not in plain


def test_the_details_of_a_success_show_the_response_and_no_error(owner_client, owner):
    RequestLogFactory(user=owner, request_id="req-ok", response_excerpt="Hello there")

    content = owner_client.get("/logs/req-ok/").content.decode()

    assert '<dd id="log-http-status">200 OK</dd>' in content
    assert "Hello there" in content
    assert 'id="call-error"' not in content


def test_an_outsider_gets_a_404_for_the_owners_call(client, owner, outsider):
    RequestLogFactory(user=owner, request_id="req-private")
    client.force_login(outsider)

    assert client.get("/logs/req-private/").status_code == 404


# --- CSV ---


def test_the_csv_has_the_filtered_calls_with_exact_money_and_times_in_the_users_zone(client):
    user = UserFactory(time_zone="Asia/Kolkata")
    key = ApiTokenFactory(owner=user, name="production-web")
    RequestLogFactory(
        user=user,
        request_id="req-a",
        created_at=datetime(2026, 11, 30, 18, 45, 1, 250_000, tzinfo=UTC),
        api_token=key,
        token_name="production-web",
        group_name="backend",
        model_id="gpt-4o-mini",
        call_type="chat.completions",
        is_stream=True,
        status_code=200,
        duration_ms=1_500,
        ttft_ms=320,
        prompt_tokens=1_200,
        completion_tokens=345,
        cached_tokens=128,
        cost_micros=1_234_567,
        attempts=2,
    )
    RequestLogFactory(
        user=user,
        request_id="req-b",
        created_at=datetime(2026, 11, 30, 18, 0, tzinfo=UTC),
        api_token=key,
        token_name="production-web",
        status_code=502,
        error_code="upstream_error",
        ttft_ms=None,
        prompt_tokens=10,
        completion_tokens=0,
        cached_tokens=0,
        cost_micros=7,
    )
    RequestLogFactory(user=user, request_id="req-other-key", created_at=T0)
    client.force_login(user)

    response = client.get("/logs/export.csv", {"key": key.pk})

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="tokenbyte-logs-')
    assert csv_rows(response) == [
        list(LOG_CSV_COLUMNS),
        ["2026-12-01T00:15:01.250+05:30", "req-a", "gpt-4o-mini", "chat.completions", "true",
         "production-web", "backend", "200", "", "1500", "320", "1200", "345", "128",
         "1.234567", "2"],
        ["2026-11-30T23:30:00.000+05:30", "req-b", "gpt-4o-mini", "chat", "false",
         "production-web", "", "502", "upstream_error", "0", "", "10", "0", "0", "0.000007",
         "1"],
    ]  # fmt: skip


def test_the_csv_columns_are_these(owner):
    assert LOG_CSV_COLUMNS == (
        "time", "request_id", "model", "call_type", "stream", "key", "group", "status_code",
        "error_code", "duration_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
        "cached_tokens", "cost_usd", "attempts",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "0.000000"), (1, "0.000001"), (1_234, "0.001234"), (10_000_000, "10.000000"),
     (123_456_789_012_345, "123456789.012345"), (-5, "-0.000005")],
)  # fmt: skip
def test_money_is_an_exact_usd_string(micros, text):
    assert usd_string(micros) == text


def test_the_csv_walks_keyset_chunks_without_losing_or_repeating_a_row(owner, monkeypatch):
    monkeypatch.setattr(selectors, "LOG_CSV_CHUNK_ROWS", 4)
    made = [RequestLogFactory(user=owner, created_at=T0 + timedelta(seconds=i % 2))
            for i in range(11)]  # fmt: skip
    expected = [log.request_id for log in sorted(made, key=lambda r: (r.created_at, r.pk))][::-1]

    chunks = list(request_logs_csv(scope=Scope(user=owner), filters=LogFilters()))

    # The header, then chunks of 4, 4 and 3 rows.
    assert [chunk.count("\n") for chunk in chunks] == [1, 4, 4, 3]
    rows = list(csv.reader(io.StringIO("".join(chunks))))
    assert [row[1] for row in rows[1:]] == expected


def test_the_async_csv_stream_is_the_same_text(owner, monkeypatch):
    monkeypatch.setattr(selectors, "LOG_CSV_CHUNK_ROWS", 3)
    for i in range(7):
        RequestLogFactory(user=owner, created_at=T0 + timedelta(seconds=i // 3))

    async def collect() -> list[str]:
        return [
            chunk
            async for chunk in request_logs_csv_async(scope=Scope(user=owner), filters=LogFilters())
        ]

    assert async_to_sync(collect)() == list(
        request_logs_csv(scope=Scope(user=owner), filters=LogFilters())
    )


def test_under_asgi_the_csv_response_streams_an_async_iterator(owner):
    # Django reads a sync iterator whole into memory before sending it over ASGI.
    asgi = log_csv_response(
        AsyncRequestFactory().get("/"), scope=Scope(user=owner), filters=LogFilters()
    )
    wsgi = log_csv_response(
        RequestFactory().get("/"), scope=Scope(user=owner), filters=LogFilters()
    )

    assert asgi.is_async is True
    assert wsgi.is_async is False


def test_an_unusable_csv_filter_is_a_400_that_says_why(owner_client):
    response = owner_client.get("/logs/export.csv", {"status": "teapot"})

    assert response.status_code == 400
    assert response.content.decode() == (
        "status is 'success', 'error' or an HTTP status code such as 429."
    )


def test_the_csv_has_none_of_the_outsiders_calls(owner_client, calls):
    rows = csv_rows(owner_client.get("/logs/export.csv"))

    assert [row[1] for row in rows[1:]] == [
        "req-error", "req-type", "req-group", "req-key", "req-model", "req-plain",
    ]  # fmt: skip


def test_postgresqls_copy_writes_the_same_csv_as_python_for_awkward_rows(owner, monkeypatch):
    # New York leaves daylight saving on 2026-11-01 at 06:00 UTC: the offset changes mid-file.
    monkeypatch.setattr(selectors, "LOG_CSV_CHUNK_ROWS", 3)
    owner.time_zone = "America/New_York"
    awkward = [
        dict(token_name='say "hi", then\nleave', group_name="", error_code=""),
        dict(token_name="", group_name="a,b", ttft_ms=None, is_stream=True),
        dict(model_id="m\u00e9t\u00e9o", cost_micros=0, error_code="x"),
        dict(cost_micros=123_456_789, ttft_ms=0),
    ]
    for i, fields in enumerate(awkward):
        RequestLogFactory(
            user=owner,
            created_at=datetime(2026, 11, 1, 5, 59, 59, 999_999, tzinfo=UTC) + timedelta(seconds=i),
            **fields,
        )
    logs = request_logs_filtered(scope=Scope(user=owner), filters=LogFilters())
    zone = selectors.user_zone(owner)

    def whole(chunk) -> str:
        text, after, parts = "", None, []
        while True:
            text, after = chunk(logs, after, zone)
            parts.append(text)
            if after is None:
                return "".join(parts)

    copied = whole(selectors._log_csv_chunk_copy)
    assert copied == whole(selectors._log_csv_chunk_python)
    rows = list(csv.reader(io.StringIO(copied)))
    assert [row[0] for row in rows] == [
        "2026-11-01T01:00:02.999-05:00",
        "2026-11-01T01:00:01.999-05:00",
        "2026-11-01T01:00:00.999-05:00",
        "2026-11-01T01:59:59.999-04:00",
    ]
    assert rows[3][5] == 'say "hi", then\nleave'
    assert rows[0][14] == "123.456789"
