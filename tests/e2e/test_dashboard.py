"""The dashboard and the Usage page in a real browser, on the whole site as `make run` serves it:
a call made with the OpenAI SDK appears in the dashboard's recent calls without a reload, and
the Usage page shows its charts with their numbers."""

from datetime import timedelta

import openai
import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.services import api_token_create
from billing.services import credit_grant, wallet_get_or_create
from tests.e2e.helpers import PASSWORD, shoot
from tests.factories import ModelFactory, UsageRollupFactory
from tests.relay.conftest import add_channel, mock_upstream, wait_for  # noqa: F401
from tokenbyte.money import format_usd
from usage.models import RequestLog, UsageRollup
from usage.selectors import usage_month_for_user

pytestmark = pytest.mark.timeout(120)

MODEL = "gpt-e2e-live"


@pytest.fixture
def customer(verified_user, mock_upstream):  # noqa: F811
    """The verified user with $10, a key, a model served by the mock upstream and some earlier
    usage (a week of calls on two other models), so the charts have something to draw."""
    credit_grant(
        wallet=wallet_get_or_create(user=verified_user), amount_micros=10_000_000, reason="e2e"
    )
    ModelFactory(
        model_id=MODEL,
        input_price_micros_per_mtok=2_500_000,
        output_price_micros_per_mtok=10_000_000,
        max_output_tokens=1000,
        context_length=16000,
    )
    mock_upstream.reset()
    add_channel(mock_upstream, "e2e-dashboard", MODEL)
    token, key = api_token_create(owner=verified_user, name="e2e-laptop")
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    for days_ago in range(1, 8):
        for model, cost in (("earlier-model-a", 40_000), ("earlier-model-b", 15_000)):
            UsageRollupFactory(
                user=verified_user,
                hour=hour - timedelta(days=days_ago),
                key_id=token.pk,
                model_id=model,
                requests=days_ago,
                cost_micros=cost * days_ago,
            )
    return {"user": verified_user, "token": token, "key": key}


def sign_in(page, url: str, email: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{url}/dashboard/")


def test_a_relay_call_appears_on_the_dashboard_live_and_in_usage(asgi_page, asgi_server, customer):
    page = asgi_page
    sign_in(page, asgi_server.url, customer["user"].email)
    recent = page.locator("#recent-calls tbody tr")
    expect(page.get_by_text("No calls yet.")).to_be_visible()
    expect(page.locator("[data-live-status]")).to_have_text("Live")
    expect(page.get_by_role("img", name="Spend per day, by model")).to_be_visible()

    client = openai.OpenAI(
        base_url=asgi_server.relay_url, api_key=customer["key"], max_retries=0, timeout=30
    )
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello from the dashboard test"}]
    )
    assert answer.choices[0].message.content
    log = wait_for(
        lambda: RequestLog.objects.filter(user=customer["user"]).first(), 10, "the call's log"
    )

    # No reload: the websocket brings the row and the month's totals.
    expect(recent).to_have_count(1, timeout=15_000)
    expect(recent.first).to_contain_text(MODEL)
    expect(recent.first).to_contain_text("e2e-laptop")
    expect(recent.first).to_contain_text(format_usd(log.cost_micros))
    expect(page.get_by_text("No calls yet.")).to_be_hidden()
    rollup = UsageRollup.objects.get(user=customer["user"], model_id=MODEL)
    assert (rollup.requests, rollup.cost_micros) == (1, log.cost_micros)
    month = usage_month_for_user(user=customer["user"])
    expect(page.locator("#stat-requests")).to_have_text(f"{month.requests:,}")
    expect(page.locator("#stat-spend")).to_have_text(format_usd(month.cost_micros))
    shoot(page, "dashboard-live")

    # A second call lands on top, without a reload either.
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Again"}])
    expect(recent).to_have_count(2, timeout=15_000)

    page.get_by_role("navigation", name="Console").get_by_role("link", name="Usage").click()
    expect(page).to_have_url(f"{asgi_server.url}/usage/")
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    for title in ("Spend per day", "Tokens per day", "Requests per day"):
        expect(page.get_by_role("img", name=title)).to_be_visible()
    # The chart's numbers are in the page: open them and read today's spend of the two calls.
    spend = page.locator("figure.chart").first
    spend.get_by_text("Show numbers").click()
    total_micros = sum(
        RequestLog.objects.filter(user=customer["user"]).values_list("cost_micros", flat=True)
    )
    today = timezone.now().date().isoformat()  # the user's zone is UTC
    today_row = spend.locator("tbody tr", has=page.get_by_role("rowheader", name=today))
    expect(today_row).to_contain_text(format_usd(total_micros))
    by_model = page.locator("#usage-table-model")
    expect(by_model).to_contain_text(MODEL)
    expect(by_model).to_contain_text("earlier-model-a")
    expect(page.locator("#usage-table-key")).to_contain_text("e2e-laptop")

    page.get_by_label("Per", exact=True).select_option("week")
    page.get_by_label("Split by", exact=True).select_option("model")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("img", name="Spend per week, by model")).to_be_visible()
    shoot(page, "usage")
