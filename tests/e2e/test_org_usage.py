"""Usage by member in a real browser (issue 14): an owner switches to the organization and sees
each member's calls, tokens and spend on the Usage page, the Member column on the Logs page,
and the organization's numbers on the dashboard; a member of the same organization sees only
their own calls and their allowance."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import Membership
from accounts.services import organization_create
from billing.models import Wallet
from billing.services import credit_grant
from tests.e2e.helpers import PASSWORD, shoot
from tests.factories import ApiTokenFactory, MembershipFactory, UserFactory
from usage.services import request_log_create, usage_rollup_add

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def acme(verified_user):
    """Acme Labs, owned by the verified user, with an admin and a capped member, $25 in its
    wallet, and a few days of calls by each of them (log rows and rollups as settlement writes
    them), plus a personal call of the owner that the organization never shows."""
    from allauth.account.models import EmailAddress

    owner = verified_user
    org = organization_create(user=owner, name="Acme Labs")
    credit_grant(
        wallet=Wallet.objects.get(organization=org), amount_micros=25_000_000, reason="e2e"
    )
    people = {"owner": owner}
    for role, email, name, allowance in (
        (Membership.Role.ADMIN, "ada@example.com", "Ada Admin", None),
        (Membership.Role.MEMBER, "max@example.com", "Max Member", 5_000_000),
    ):
        user = UserFactory(email=email, name=name)
        EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
        MembershipFactory(
            organization=org,
            user=user,
            role=role,
            monthly_allowance_micros=allowance,
            allowance_used_micros=0 if allowance is None else 1_230_000,
        )
        people[role] = user
    people["member"] = people.pop(Membership.Role.MEMBER)
    people["admin"] = people.pop(Membership.Role.ADMIN)
    now = timezone.now() - timedelta(minutes=1)
    # persona, key, organization?, model, calls, cost each (micro-USD), prompt, completion
    plan = [
        ("owner", "web-app", True, "gpt-5.4-mini", 3, 120_000, 1_200, 300),
        ("admin", "research", True, "claude-sonnet-4.6", 2, 450_000, 4_000, 900),
        ("member", "laptop", True, "gpt-5.4-mini", 4, 205_000, 2_000, 650),
        ("member", "laptop", True, "gemini-2.5-flash", 1, 30_000, 800, 120),
        ("owner", "side-project", False, "gpt-5.4", 1, 999_000, 5_000, 2_000),
    ]
    keys: dict = {}
    n = 0
    for persona, name, in_org, model, count, cost, prompt, completion in plan:
        user = people[persona]
        if name not in keys:
            keys[name] = ApiTokenFactory(
                owner=user, organization=org if in_org else None, name=name
            )
        key = keys[name]
        for i in range(count):
            n += 1
            log = request_log_create(
                request_id=f"req-e2e-{n:03d}",
                created_at=now - timedelta(minutes=n * 7 + i),
                user=user,
                organization=org if in_org else None,
                api_token=key,
                token_name=key.name,
                model_id=model,
                call_type="chat.completions",
                endpoint="chat.completions",
                status_code=200,
                duration_ms=800 + 10 * n,
                ttft_ms=200,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_micros=cost,
            )
            usage_rollup_add(log=log, cost_micros=cost)
    return {"org": org, **people}


def sign_in(page, site: str, email: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{site}/dashboard/")


def switch_to(page, name: str) -> None:
    """The header's scope switcher: open it, choose the organization."""
    page.locator("summary.switcher-current").click()
    page.locator(".switcher-options").get_by_role("button", name=name).click()
    expect(page.locator(".switcher-name")).to_have_text(name)


def test_an_owner_sees_usage_by_member_in_the_organizations_scope(page, site, acme):
    sign_in(page, site, acme["owner"].email)
    switch_to(page, "Acme Labs")

    # The dashboard: the organization's month (3 + 2 + 4 + 1 calls), its wallet.
    page.goto("/dashboard/")
    expect(page.get_by_role("heading", name="Dashboard · Acme Labs")).to_be_visible()
    expect(page.locator("#stat-requests")).to_have_text("10")
    expect(page.locator("#stat-spend")).to_have_text("$2.11")
    expect(page.locator("#stat-balance")).to_have_text("$25.00")
    expect(page.locator("#stat-allowance-note")).to_have_text("this month · No monthly cap")
    shoot(page, "org-dashboard-owner")

    # Usage by member, the most spent first, with each member's email.
    page.goto("/usage/?by=member")
    expect(page.get_by_role("heading", name="Usage · Acme Labs")).to_be_visible()
    expect(page.locator("#usage-spend")).to_have_text("$2.11")
    rows = page.locator("#usage-table-member tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0).locator("th")).to_have_text("Ada Admin ada@example.com")
    expect(rows.nth(0).locator("td").nth(0)).to_have_text("2")
    expect(rows.nth(0).locator("td").nth(5)).to_have_text("$0.90")
    expect(rows.nth(1).locator("th")).to_have_text("Max Member max@example.com")
    expect(rows.nth(1).locator("td").nth(0)).to_have_text("5")
    expect(rows.nth(1).locator("td").nth(5)).to_have_text("$0.85")
    expect(rows.nth(2).locator("th")).to_have_text("owner@example.com")
    expect(rows.nth(2).locator("td").nth(5)).to_have_text("$0.36")
    # ?by=member puts the table first; every table still follows.
    headings = page.locator(".usage-section h2")
    expect(headings).to_have_text(["By member", "By model", "By key", "By group"])
    shoot(page, "org-usage-by-member")

    with page.expect_download() as download:
        page.get_by_role("link", name="CSV of usage by member").click()
    lines = download.value.path().read_text().splitlines()
    assert lines[0].endswith(",avg_duration_ms,member_email")
    assert [line.rsplit(",", 1)[1] for line in lines[1:]] == [
        "ada@example.com",
        "max@example.com",
        "owner@example.com",
    ]

    # The logs name the member of each call; the owner's personal call is not among them.
    page.goto("/logs/")
    expect(page.get_by_role("columnheader", name="Member")).to_be_visible()
    expect(page.locator("#logs tbody tr")).to_have_count(10)
    expect(page.locator("#logs td.log-member").first).to_have_text("owner@example.com")
    expect(page.get_by_text("$0.999")).to_have_count(0)
    shoot(page, "org-logs-owner")


def test_a_member_sees_only_their_own_calls_and_their_allowance(page, site, acme):
    sign_in(page, site, acme["member"].email)
    switch_to(page, "Acme Labs")

    page.goto("/dashboard/")
    expect(page.locator("#stat-requests")).to_have_text("5")
    expect(page.locator("#stat-allowance")).to_have_text("$1.23 of $5.00")
    expect(page.locator("#stat-allowance-note")).to_contain_text("$3.77 left")
    shoot(page, "org-dashboard-member")

    page.goto("/usage/")
    expect(page.locator("#usage-spend")).to_have_text("$0.85")
    expect(page.get_by_role("heading", name="By member")).to_have_count(0)
    expect(page.locator("#scope-note")).to_contain_text("Your own calls in Acme Labs")

    page.goto("/logs/")
    expect(page.locator("#logs tbody tr")).to_have_count(5)
    expect(page.get_by_role("columnheader", name="Member")).to_have_count(0)
    shoot(page, "org-logs-member")
