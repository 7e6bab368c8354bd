"""Dashboard, logs and usage follow the scope (issue 14): the personal account shows only calls
without an organization; an organization's scope shows every member's calls to its owners and
admins and a member's own to a member; an outsider naming the organization gets a 404.

Personas: owner, admin and member of Acme, and an outsider (with an organization of their own).
The console's scope is the session's (accounts.scope.SESSION_KEY, as the switcher leaves it);
the API's is `?organization=<id>`.
"""

import asyncio
import csv
import io
from datetime import UTC, date, datetime

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.test import Client
from freezegun import freeze_time

from accounts.models import Membership
from accounts.scope import SESSION_KEY
from accounts.services import organization_create
from billing.models import Wallet
from billing.services import credit_grant
from tests.factories import (
    AlertFactory,
    ApiTokenFactory,
    MembershipFactory,
    RequestLogFactory,
    UserFactory,
    WalletFactory,
)
from tests.organizations import console
from usage.consumers import DashboardConsumer
from usage.selectors import LOG_CSV_COLUMNS
from usage.services import usage_rollup_add

pytestmark = pytest.mark.django_db

NOW = "2026-12-07T10:00:00Z"
WEEK = {"range": "7d"}
API_WEEK = {"from": "2026-12-01", "to": "2026-12-07"}

# request id, persona, organization ("acme", "other" or None), day of December, cost (micro-USD),
# prompt and completion tokens, status.
CALLS = [
    ("req-owner-personal", "owner", None, 1, 1_000, 10, 20, 200),
    ("req-owner-org", "owner", "acme", 2, 20_000, 100, 200, 200),
    ("req-admin-org", "admin", "acme", 3, 300_000, 1_000, 500, 200),
    ("req-member-org-1", "member", "acme", 4, 4_000, 40, 60, 200),
    ("req-member-org-2", "member", "acme", 5, 5_000, 50, 0, 500),
    ("req-member-personal", "member", None, 5, 7, 1, 2, 200),
    ("req-outsider", "outsider", None, 1, 9, 1, 1, 200),
    ("req-other-org", "outsider", "other", 2, 11, 1, 1, 200),
]
ACME_ALL = ["req-member-org-2", "req-member-org-1", "req-admin-org", "req-owner-org"]
MEMBER_OWN = ["req-member-org-2", "req-member-org-1"]
# (persona, scope) -> the calls listed, newest first. The outsider's "org" is Acme: the
# console falls back to their personal account, the API answers 404.
LISTED = {
    ("owner", "org"): ACME_ALL,
    ("admin", "org"): ACME_ALL,
    ("member", "org"): MEMBER_OWN,
    ("owner", "personal"): ["req-owner-personal"],
    ("admin", "personal"): [],
    ("member", "personal"): ["req-member-personal"],
    ("outsider", "personal"): ["req-outsider"],
}
PERSONAS_IN_SCOPE = list(LISTED)


@pytest.fixture
def frozen():
    with freeze_time(NOW):
        yield


@pytest.fixture
def people(owner, outsider) -> dict:
    return {
        "owner": owner,
        "admin": UserFactory(email="admin@example.com"),
        "member": UserFactory(email="member@example.com", name="Mia Member"),
        "outsider": outsider,
    }


@pytest.fixture
def acme(people):
    """Acme through the real service (its wallet, its owner), an admin and a capped member;
    $50 in its wallet, $2 in the owner's own."""
    org = organization_create(user=people["owner"], name="Acme")
    MembershipFactory(organization=org, user=people["admin"], role=Membership.Role.ADMIN)
    MembershipFactory(
        organization=org,
        user=people["member"],
        role=Membership.Role.MEMBER,
        monthly_allowance_micros=10_000_000,
        allowance_used_micros=9_000,
        allowance_period_start=date(2026, 12, 1),
    )
    credit_grant(wallet=Wallet.objects.get(organization=org), amount_micros=50_000_000, reason="t")
    WalletFactory(user=people["owner"], balance_micros=2_000_000)
    return org


@pytest.fixture
def calls(frozen, people, acme) -> dict:
    """The calls of CALLS, each with its key, its log row and its rollup (as settlement writes
    them); returns the keys by name."""
    other = organization_create(user=people["outsider"], name="Other")
    orgs = {"acme": acme, "other": other, None: None}
    keys = {}
    for request_id, persona, org_name, day, cost, prompt, completion, status in CALLS:
        user, org = people[persona], orgs[org_name]
        name = f"{persona}-{org_name or 'personal'}-key"
        if name not in keys:
            keys[name] = ApiTokenFactory(owner=user, organization=org, name=name)
        log = RequestLogFactory(
            request_id=request_id,
            user=user,
            organization=org,
            api_token=keys[name],
            token_name=name,
            created_at=datetime(2026, 12, day, 8, tzinfo=UTC),
            cost_micros=cost,
            prompt_tokens=prompt,
            completion_tokens=completion,
            status_code=status,
            duration_ms=100,
        )
        usage_rollup_add(log=log, cost_micros=cost)
    return keys


def in_scope(people, acme, persona: str, scope: str) -> Client:
    return console(people[persona], acme if scope == "org" else None)


def api_params(acme, scope: str, **params) -> dict:
    return {**params, "organization": acme.pk} if scope == "org" else params


def csv_rows(response) -> list[list[str]]:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return list(csv.reader(io.StringIO(body.decode())))


# --- the logs page, its API and the personal fallback --------------------------------------------


@pytest.mark.parametrize(("persona", "scope"), PERSONAS_IN_SCOPE)
def test_the_logs_page_lists_exactly_the_scopes_calls(people, acme, calls, persona, scope):
    response = in_scope(people, acme, persona, scope).get("/logs/")

    assert response.status_code == 200
    assert [log.request_id for log in response.context["logs"]] == LISTED[persona, scope]


def test_an_outsider_whose_session_names_the_organization_sees_their_personal_calls(
    people, acme, calls
):
    client = console(people["outsider"], acme)

    response = client.get("/logs/")

    assert [log.request_id for log in response.context["logs"]] == ["req-outsider"]
    assert SESSION_KEY not in client.session


@pytest.mark.parametrize(("persona", "scope"), PERSONAS_IN_SCOPE)
def test_the_logs_api_lists_exactly_the_scopes_calls(people, acme, calls, persona, scope):
    client = console(people[persona])

    response = client.get("/api/logs/", api_params(acme, scope))

    assert response.status_code == 200
    assert [row["request_id"] for row in response.json()["results"]] == LISTED[persona, scope]


@pytest.mark.parametrize(
    "path",
    [
        "/api/logs/",
        "/api/logs/req-outsider/",
        "/api/logs/export.csv",
        "/api/usage/summary/",
        "/api/usage/series/",
        "/api/usage/breakdown/?by=model",
        "/api/usage/export.csv?by=model",
        "/api/dashboard/",
    ],
)
def test_every_usage_endpoint_answers_an_outsider_naming_the_organization_with_a_404(
    people, acme, calls, path
):
    separator = "&" if "?" in path else "?"

    response = console(people["outsider"]).get(f"{path}{separator}organization={acme.pk}")

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_owners_and_admins_see_the_member_of_each_call(people, acme, calls):
    content = console(people["admin"], acme).get("/logs/").content.decode()

    assert '<th scope="col">Member</th>' in content
    assert '<td class="log-member">member@example.com</td>' in content
    assert '<td class="log-member">owner@example.com</td>' in content
    assert "Calls of every member of Acme, paid from its wallet." in content


def test_a_member_sees_no_member_column(people, acme, calls):
    content = console(people["member"], acme).get("/logs/").content.decode()

    assert '<th scope="col">Member</th>' not in content
    assert 'class="log-member"' not in content
    assert "Your own calls in Acme" in content


def test_the_logs_api_names_the_member_for_owners_and_admins_only(people, acme, calls):
    owner = console(people["owner"]).get("/api/logs/", {"organization": acme.pk}).json()
    member = console(people["member"]).get("/api/logs/", {"organization": acme.pk}).json()
    personal = console(people["owner"]).get("/api/logs/").json()

    assert [row["member_email"] for row in owner["results"]] == [
        "member@example.com", "member@example.com", "admin@example.com", "owner@example.com",
    ]  # fmt: skip
    assert [row["member_email"] for row in member["results"]] == [None, None]
    assert [row["member_email"] for row in personal["results"]] == [None]


@pytest.mark.parametrize(
    ("persona", "scope", "keys"),
    [
        ("owner", "org", ["admin-acme-key", "member-acme-key", "owner-acme-key"]),
        ("admin", "org", ["admin-acme-key", "member-acme-key", "owner-acme-key"]),
        ("member", "org", ["member-acme-key"]),
        ("owner", "personal", ["owner-personal-key"]),
        ("member", "personal", ["member-personal-key"]),
    ],
)
def test_the_key_filter_offers_the_scopes_keys(people, acme, calls, persona, scope, keys):
    response = in_scope(people, acme, persona, scope).get("/logs/")

    assert [name for _, name in response.context["keys"]] == keys


def test_filtering_by_another_members_key_finds_nothing_for_a_member(people, acme, calls):
    admins_key = calls["admin-acme-key"]

    response = console(people["member"], acme).get("/logs/", {"key": admins_key.pk})

    assert list(response.context["logs"]) == []


# --- one call ------------------------------------------------------------------------------------

DETAIL = [
    ("owner", "org", "req-member-org-1", 200),
    ("admin", "org", "req-owner-org", 200),
    ("member", "org", "req-member-org-1", 200),
    ("member", "org", "req-admin-org", 404),
    ("member", "org", "req-member-personal", 404),
    ("owner", "org", "req-owner-personal", 404),
    ("owner", "org", "req-other-org", 404),
    ("owner", "personal", "req-owner-org", 404),
    ("owner", "personal", "req-owner-personal", 200),
    ("member", "personal", "req-member-org-1", 404),
    ("outsider", "personal", "req-member-org-1", 404),
]


@pytest.mark.parametrize(("persona", "scope", "request_id", "status"), DETAIL)
def test_a_call_outside_the_scope_is_a_404_on_its_page(
    people, acme, calls, persona, scope, request_id, status
):
    response = in_scope(people, acme, persona, scope).get(f"/logs/{request_id}/")

    assert response.status_code == status


@pytest.mark.parametrize(("persona", "scope", "request_id", "status"), DETAIL)
def test_a_call_outside_the_scope_is_a_404_in_the_api(
    people, acme, calls, persona, scope, request_id, status
):
    client = console(people[persona])

    response = client.get(f"/api/logs/{request_id}/", api_params(acme, scope))

    assert response.status_code == status
    if status == 200:
        assert response.json()["request_id"] == request_id


def test_an_owner_reads_who_made_a_members_call(people, acme, calls):
    page = console(people["owner"], acme).get("/logs/req-member-org-1/").content.decode()
    api = console(people["owner"]).get("/api/logs/req-member-org-1/", {"organization": acme.pk})

    assert '<dd id="log-member" class="log-member">member@example.com</dd>' in page
    assert api.json()["member_email"] == "member@example.com"


# --- the logs CSV --------------------------------------------------------------------------------


@pytest.mark.parametrize(("persona", "scope"), PERSONAS_IN_SCOPE)
def test_the_logs_csv_has_exactly_the_scopes_calls(people, acme, calls, persona, scope):
    page = csv_rows(in_scope(people, acme, persona, scope).get("/logs/export.csv"))
    api = csv_rows(console(people[persona]).get("/api/logs/export.csv", api_params(acme, scope)))

    assert page == api
    assert [row[1] for row in page[1:]] == LISTED[persona, scope]


def test_the_organizations_csv_adds_the_members_email_last(people, acme, calls):
    rows = csv_rows(console(people["owner"], acme).get("/logs/export.csv"))

    assert rows[0] == [*LOG_CSV_COLUMNS, "member_email"]
    assert [(row[1], row[-1]) for row in rows[1:]] == [
        ("req-member-org-2", "member@example.com"),
        ("req-member-org-1", "member@example.com"),
        ("req-admin-org", "admin@example.com"),
        ("req-owner-org", "owner@example.com"),
    ]
    # The documented columns keep their places.
    assert rows[3][: len(LOG_CSV_COLUMNS)][14:] == ["0.300000", "1"]


def test_a_members_csv_has_their_own_email_and_the_personal_csv_has_no_member_column(
    people, acme, calls
):
    member = csv_rows(console(people["member"], acme).get("/logs/export.csv"))
    personal = csv_rows(console(people["member"]).get("/logs/export.csv"))

    assert member[0] == [*LOG_CSV_COLUMNS, "member_email"]
    assert [row[-1] for row in member[1:]] == ["member@example.com", "member@example.com"]
    assert personal[0] == list(LOG_CSV_COLUMNS)
    assert [row[1] for row in personal[1:]] == ["req-member-personal"]


def test_the_python_csv_writes_the_member_column_like_postgresqls_copy(people, acme, calls):
    from accounts.scope import scope_for
    from usage import selectors

    scope = scope_for(user=people["owner"], organization_id=acme.pk)
    logs = selectors.request_logs_filtered(scope=scope, filters=selectors.LogFilters())
    zone = selectors.user_zone(people["owner"])

    copy, _ = selectors._log_csv_chunk_copy(logs, None, zone, True)
    python, _ = selectors._log_csv_chunk_python(logs, None, zone, True)

    assert copy == python
    assert [line.rsplit(",", 1)[1] for line in copy.splitlines()] == [
        "member@example.com", "member@example.com", "admin@example.com", "owner@example.com",
    ]  # fmt: skip


# --- the usage page, its CSV and its API ---------------------------------------------------------

# (persona, scope) -> requests, errors, cost of 2026-12-01 to 07.
TOTALS = {
    ("owner", "org"): (4, 1, 329_000),
    ("admin", "org"): (4, 1, 329_000),
    ("member", "org"): (2, 1, 9_000),
    ("owner", "personal"): (1, 0, 1_000),
    ("admin", "personal"): (0, 0, 0),
    ("member", "personal"): (1, 0, 7),
    ("outsider", "personal"): (1, 0, 9),
}


@pytest.mark.parametrize(("persona", "scope"), PERSONAS_IN_SCOPE)
def test_the_usage_page_sums_exactly_the_scopes_calls(people, acme, calls, persona, scope):
    response = in_scope(people, acme, persona, scope).get("/usage/", WEEK)

    totals = response.context["totals"]
    assert (totals.requests, totals.errors, totals.cost_micros) == TOTALS[persona, scope]
    by_model = next(t for t in response.context["tables"] if t["by"] == "model")
    assert sum(row.cost_micros for row in by_model["rows"]) == TOTALS[persona, scope][2]


@pytest.mark.parametrize(("persona", "scope"), PERSONAS_IN_SCOPE)
def test_the_usage_api_sums_exactly_the_scopes_calls(people, acme, calls, persona, scope):
    client = console(people[persona])

    summary = client.get("/api/usage/summary/", api_params(acme, scope, **API_WEEK)).json()
    series = client.get("/api/usage/series/", api_params(acme, scope, **API_WEEK)).json()

    totals = summary["totals"]
    assert (totals["requests"], totals["errors"], totals["cost_micros"]) == TOTALS[persona, scope]
    assert sum(series["series"]["total"]["cost_micros"]) == TOTALS[persona, scope][2]


@pytest.mark.parametrize(
    ("persona", "scope", "tables"),
    [
        ("owner", "org", ["model", "key", "group", "member"]),
        ("admin", "org", ["model", "key", "group", "member"]),
        ("member", "org", ["model", "key", "group"]),
        ("owner", "personal", ["model", "key", "group"]),
    ],
)
def test_only_owners_and_admins_get_usage_by_member(people, acme, calls, persona, scope, tables):
    response = in_scope(people, acme, persona, scope).get("/usage/", WEEK)

    assert [table["by"] for table in response.context["tables"]] == tables


def test_usage_by_member_sums_each_members_calls_the_most_spent_first(people, acme, calls):
    response = console(people["owner"], acme).get("/usage/", WEEK)

    table = next(t for t in response.context["tables"] if t["by"] == "member")
    assert [
        (row.label, row.member_email, row.key, row.requests, row.errors, row.tokens,
         row.cost_micros)
        for row in table["rows"]
    ] == [
        ("admin@example.com", "admin@example.com", str(people["admin"].pk), 1, 0, 1_500, 300_000),
        ("owner@example.com", "owner@example.com", str(people["owner"].pk), 1, 0, 300, 20_000),
        ("Mia Member", "member@example.com", str(people["member"].pk), 2, 1, 150, 9_000),
    ]  # fmt: skip
    content = response.content.decode()
    assert '<h2 id="usage-by-member">By member</h2>' in content
    assert (
        '<th scope="row">Mia Member <span class="muted usage-member-email">member@example.com'
        "</span></th>"
    ) in content


def test_the_organization_pages_link_puts_usage_by_member_first(people, acme, calls):
    response = console(people["admin"], acme).get("/usage/", {"by": "member"})

    assert [table["by"] for table in response.context["tables"]] == [
        "member", "model", "key", "group",
    ]  # fmt: skip
    assert "by=member" in response.context["presets"][0]["query"]


def usage_member_csv(people) -> list[list[str]]:
    header = [
        "name", "id", "requests", "errors", "error_rate_percent", "prompt_tokens",
        "completion_tokens", "cached_tokens", "cost_usd", "cost_micros", "avg_duration_ms",
        "member_email",
    ]  # fmt: skip
    return [
        header,
        ["admin@example.com", str(people["admin"].pk), "1", "0", "0.0", "1000", "500", "0",
         "0.300000", "300000", "100", "admin@example.com"],
        ["owner@example.com", str(people["owner"].pk), "1", "0", "0.0", "100", "200", "0",
         "0.020000", "20000", "100", "owner@example.com"],
        ["Mia Member", str(people["member"].pk), "2", "1", "50.0", "90", "60", "0",
         "0.009000", "9000", "100", "member@example.com"],
    ]  # fmt: skip


def test_the_usage_by_member_csv_has_each_members_numbers_and_email(people, acme, calls):
    response = console(people["owner"], acme).get("/usage/export.csv", {**WEEK, "by": "member"})

    assert response.status_code == 200
    assert response["Content-Disposition"] == (
        'attachment; filename="usage-by-member-2026-12-01-to-2026-12-07.csv"'
    )
    assert csv_rows(response) == usage_member_csv(people)


def test_the_api_exports_the_same_usage_by_member_csv(people, acme, calls):
    client = console(people["admin"])

    response = client.get(
        "/api/usage/export.csv", {**API_WEEK, "by": "member", "organization": acme.pk}
    )
    breakdown = client.get(
        "/api/usage/breakdown/", {**API_WEEK, "by": "member", "organization": acme.pk}
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert csv_rows(response) == usage_member_csv(people)
    assert [
        (row["key"], row["label"], row["member_email"], row["cost_micros"])
        for row in breakdown.json()["results"]
    ] == [
        (str(people["admin"].pk), "admin@example.com", "admin@example.com", 300_000),
        (str(people["owner"].pk), "owner@example.com", "owner@example.com", 20_000),
        (str(people["member"].pk), "Mia Member", "member@example.com", 9_000),
    ]


def test_the_usage_csv_by_model_follows_the_scope(people, acme, calls):
    owner = csv_rows(console(people["owner"], acme).get("/usage/export.csv", WEEK))
    member = csv_rows(console(people["member"], acme).get("/usage/export.csv", WEEK))

    assert owner[0][-1] == "avg_duration_ms"
    assert [(row[0], row[2], row[9]) for row in owner[1:]] == [("gpt-4o-mini", "4", "329000")]
    assert [(row[0], row[2], row[9]) for row in member[1:]] == [("gpt-4o-mini", "2", "9000")]


def test_a_member_may_not_break_usage_down_by_member(people, acme, calls):
    page = console(people["member"], acme).get("/usage/export.csv", {**WEEK, "by": "member"})
    api = console(people["member"]).get(
        "/api/usage/breakdown/", {**API_WEEK, "by": "member", "organization": acme.pk}
    )
    api_csv = console(people["member"]).get(
        "/api/usage/export.csv", {**API_WEEK, "by": "member", "organization": acme.pk}
    )

    assert page.status_code == 403
    assert page.content.decode() == "Your role (member) in Acme shows your own usage only."
    assert api.status_code == 403
    assert api.json()["error"]["code"] == "permission_denied"
    assert api_csv.status_code == 403


def test_usage_by_member_is_an_organizations_only(people, acme, calls):
    page = console(people["owner"]).get("/usage/export.csv", {**WEEK, "by": "member"})
    api = console(people["owner"]).get("/api/usage/breakdown/", {**API_WEEK, "by": "member"})

    assert page.status_code == 400
    assert api.status_code == 400
    assert api.json()["error"]["code"] == "invalid_breakdown"
    assert api.json()["error"]["fields"] == {"by": [api.json()["error"]["message"]]}


def test_an_owner_sees_a_members_key_by_name_in_the_organizations_usage(people, acme, calls):
    response = console(people["owner"]).get(
        "/api/usage/breakdown/", {**API_WEEK, "by": "key", "organization": acme.pk}
    )

    assert [(row["label"], row["cost_micros"]) for row in response.json()["results"]] == [
        ("admin-acme-key", 300_000),
        ("owner-acme-key", 20_000),
        ("member-acme-key", 9_000),
    ]


# --- the dashboard -------------------------------------------------------------------------------

# (persona, scope) -> this month's requests and cost, the balance shown, the allowance shown.
DASHBOARD = {
    ("owner", "org"): (4, 329_000, "$50.00", "$0.00"),
    ("admin", "org"): (4, 329_000, "$50.00", "$0.00"),
    ("member", "org"): (2, 9_000, "$50.00", "$0.009 of $10.00"),
    ("owner", "personal"): (1, 1_000, "$2.00", None),
    ("admin", "personal"): (0, 0, "$0.00", None),
    ("member", "personal"): (1, 7, "$0.00", None),
    ("outsider", "personal"): (1, 9, "$0.00", None),
}


@pytest.mark.parametrize(("persona", "scope"), PERSONAS_IN_SCOPE)
def test_the_dashboard_shows_the_scopes_month_balance_and_calls(
    people, acme, calls, persona, scope
):
    response = in_scope(people, acme, persona, scope).get("/dashboard/")

    requests, cost, balance, allowance = DASHBOARD[persona, scope]
    totals = response.context["totals"]
    assert (totals.requests, totals.cost_micros) == (requests, cost)
    assert [log.request_id for log in response.context["recent_logs"]] == LISTED[persona, scope]
    content = response.content.decode()
    assert f'<dd id="stat-balance">{balance}</dd>' in content
    if allowance is None:
        assert 'id="stat-allowance"' not in content
    else:
        assert f'<dd id="stat-allowance">{allowance}</dd>' in content


def test_a_members_dashboard_shows_their_allowance_and_an_admins_no_cap(people, acme, calls):
    member = console(people["member"], acme).get("/dashboard/").content.decode()
    admin = console(people["admin"], acme).get("/dashboard/").content.decode()

    assert ('<dd class="note" id="stat-allowance-note">this month · $9.991 left<meter') in member
    assert '<dd class="note" id="stat-allowance-note">this month · No monthly cap</dd>' in admin


@pytest.mark.parametrize(("persona", "scope"), PERSONAS_IN_SCOPE)
def test_the_dashboard_api_follows_the_scope(people, acme, calls, persona, scope):
    response = console(people[persona]).get("/api/dashboard/", api_params(acme, scope))

    body = response.json()
    requests, cost, balance, _ = DASHBOARD[persona, scope]
    assert (body["month"]["requests"], body["month"]["cost_micros"]) == (requests, cost)
    assert [row["request_id"] for row in body["recent_calls"]] == LISTED[persona, scope]
    expected_balance = {"$50.00": 50_000_000, "$2.00": 2_000_000, "$0.00": 0}[balance]
    assert body["balance_micros"] == expected_balance


def test_the_dashboard_api_gives_the_members_allowance(people, acme, calls):
    member = console(people["member"]).get("/api/dashboard/", {"organization": acme.pk}).json()
    personal = console(people["member"]).get("/api/dashboard/").json()

    assert member["allowance"] == {
        "monthly_micros": 10_000_000,
        "used_micros": 9_000,
        "left_micros": 9_991_000,
        "period_start": "2026-12-01",
    }
    assert personal["allowance"] is None


def test_the_dashboard_shows_the_scopes_alerts(people, acme, calls):
    owner = people["owner"]
    org_wallet = Wallet.objects.get(organization=acme)
    AlertFactory(user=owner, wallet=org_wallet, message="Acme is low")
    AlertFactory(user=owner, wallet=owner.wallet, message="You are low")
    AlertFactory(
        user=people["member"],
        kind="token_quota",
        api_token=calls["member-acme-key"],
        message="member-acme-key at 80 %",
    )

    def alerts(persona: str, scope: str) -> list[str]:
        client = console(people[persona])
        body = client.get("/api/dashboard/", api_params(acme, scope)).json()
        return [alert["message"] for alert in body["alerts"]]

    assert alerts("owner", "personal") == ["You are low"]
    assert sorted(alerts("owner", "org")) == ["Acme is low", "member-acme-key at 80 %"]
    assert sorted(alerts("admin", "org")) == ["Acme is low", "member-acme-key at 80 %"]
    assert alerts("member", "org") == ["member-acme-key at 80 %"]
    assert alerts("member", "personal") == []


# --- the dashboard's live calls ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_live_dashboard_pushes_the_organizations_calls_only(monkeypatch):
    monkeypatch.setattr(DashboardConsumer, "poll_seconds", 0.05)
    owner = UserFactory(email="owner@example.com")
    member = UserFactory(email="member@example.com")
    acme = organization_create(user=owner, name="Acme")
    MembershipFactory(organization=acme, user=member, role=Membership.Role.MEMBER)
    create_log = database_sync_to_async(RequestLogFactory)

    async def scenario():
        socket = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard/")
        socket.scope["user"] = owner
        socket.scope["session"] = {SESSION_KEY: acme.pk}
        assert (await socket.connect())[0]
        await socket.send_json_to({"type": "hello", "known": []})
        await create_log(user=owner, request_id="req-owner-personal")
        quiet = await socket.receive_nothing(timeout=0.5)
        await create_log(user=member, organization=acme, request_id="req-member-org")
        message = await socket.receive_json_from(timeout=3)
        await socket.disconnect()
        return quiet, message

    try:
        quiet, message = asyncio.run(scenario())
    finally:
        asyncio.run(sync_to_async(connections.close_all)())

    assert quiet
    assert [row["request_id"] for row in message["rows"]] == ["req-member-org"]
    assert message["totals"]["balance"] == "$0.00"
