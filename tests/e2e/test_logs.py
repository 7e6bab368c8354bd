"""Logs and Models in a real browser, on the whole site (console and relay in one ASGI process):
calls made with the OpenAI SDK show up with their exact cost, filter by model and key, open
their details, and download as the same CSV that /api/ answers for the same filters."""

import csv
import io
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import openai
import pytest
from allauth.account.models import EmailAddress
from playwright.sync_api import expect

from accounts.services import api_token_create
from billing.services import credit_grant, wallet_get_or_create
from tests.e2e.helpers import PASSWORD, shoot
from tests.factories import ModelFactory, ProviderFactory, UserFactory
from tests.relay.conftest import add_channel, mock_upstream, wait_for  # noqa: F401
from tokenbyte.money import format_usd, token_cost_micros
from usage.models import RequestLog
from usage.selectors import LOG_CSV_COLUMNS, usd_string

pytestmark = pytest.mark.timeout(120)

# micro-USD per 1M tokens
PRICES = {
    "input_price_micros_per_mtok": 2_500_000,
    "output_price_micros_per_mtok": 10_000_000,
    "cached_input_price_micros_per_mtok": 1_250_000,
}


@pytest.fixture
def customer(asgi_page, mock_upstream):  # noqa: F811
    """A verified customer with credit, two routed models and two keys."""
    mock_upstream.reset()
    user = UserFactory(email="logs.owner@example.com", time_zone="Asia/Tokyo")
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    credit_grant(wallet=wallet_get_or_create(user=user), amount_micros=5_000_000, reason="e2e")
    acme = ProviderFactory(slug="acme", name="Acme AI")
    for model_id, name in [("e2e-logs-fast", "Fast chat"), ("e2e-logs-smart", "Smart chat")]:
        ModelFactory(model_id=model_id, display_name=name, provider=acme, context_length=16_000,
                     max_output_tokens=256, capabilities=["streaming"], **PRICES)  # fmt: skip
        add_channel(mock_upstream, f"mock-{model_id}", model_id)
    keys = {}
    for name in ("laptop", "ci-runner"):
        token, secret = api_token_create(owner=user, name=name)
        keys[name] = (token, secret)
    return {"user": user, "keys": keys}


def call(asgi_server, secret: str, model: str):
    client = openai.OpenAI(
        base_url=asgi_server.relay_url, api_key=secret, max_retries=0, timeout=30
    )
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello"}], max_tokens=20
    )


def sign_in(page, base_url: str, email: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{base_url}/dashboard/")


def test_calls_show_in_logs_filter_open_and_export_the_same_csv_as_the_api(
    asgi_page, asgi_server, customer
):
    page, user = asgi_page, customer["user"]
    laptop, laptop_secret = customer["keys"]["laptop"]
    _, ci_secret = customer["keys"]["ci-runner"]
    answers = [
        call(asgi_server, laptop_secret, "e2e-logs-fast"),
        call(asgi_server, ci_secret, "e2e-logs-fast"),
        call(asgi_server, laptop_secret, "e2e-logs-smart"),
    ]
    wait_for(lambda: RequestLog.objects.filter(user=user).count() == 3, 10, "three logs")
    first = RequestLog.objects.get(user=user, api_token=laptop, model_id="e2e-logs-fast")
    usage = answers[0].usage
    expected_cost = token_cost_micros(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=0,
        **PRICES,
    )
    assert expected_cost > 0
    assert first.cost_micros == expected_cost

    sign_in(page, asgi_server.url, user.email)
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Logs").click()
    expect(page).to_have_url(f"{asgi_server.url}/logs/")
    rows = page.locator("#logs tbody tr")
    expect(rows).to_have_count(3)
    first_row = rows.filter(has_text="laptop").filter(has_text="e2e-logs-fast")
    expect(first_row).to_contain_text(format_usd(expected_cost))
    shoot(page, "logs")

    # Filter by model, then by key too: the filters stay in the URL.
    page.get_by_label("Model").fill("e2e-logs-fast")
    page.get_by_role("button", name="Apply filters").click()
    expect(rows).to_have_count(2)
    page.get_by_label("Key").select_option(label="laptop")
    page.get_by_role("button", name="Apply filters").click()
    expect(rows).to_have_count(1)
    query = parse_qs(urlsplit(page.url).query)
    assert query == {"model": ["e2e-logs-fast"], "key": [str(laptop.pk)]}
    expect(rows.first).to_contain_text(format_usd(expected_cost))
    shoot(page, "logs-filtered")

    # The CSV of the filtered set is what /api/logs/ answers for the same filters.
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename.startswith("tokenbyte-logs-")
    text = Path(download.path()).read_text(encoding="utf-8")
    table = list(csv.reader(io.StringIO(text)))
    api = page.request.get(f"/api/logs/?model=e2e-logs-fast&key={laptop.pk}")
    assert api.ok
    results = api.json()["results"]
    assert table[0] == list(LOG_CSV_COLUMNS)
    assert len(table) == 2 and len(results) == 1
    row = dict(zip(LOG_CSV_COLUMNS, table[1], strict=True))
    assert row["request_id"] == results[0]["request_id"] == first.request_id
    assert row["time"] == results[0]["created_at"]
    assert row["time"].endswith("+09:00")
    assert row["cost_usd"] == results[0]["cost_usd"] == usd_string(expected_cost)
    assert (row["model"], row["key"], row["status_code"]) == ("e2e-logs-fast", "laptop", "200")
    assert int(row["prompt_tokens"]) == results[0]["prompt_tokens"] == usage.prompt_tokens
    assert int(row["completion_tokens"]) == usage.completion_tokens

    # Details of the call.
    page.get_by_role("link", name="Details").click()
    expect(page).to_have_url(f"{asgi_server.url}/logs/{first.request_id}/")
    expect(page.locator("#log-http-status")).to_have_text("200 OK")
    expect(page.locator("#log-cost")).to_have_text(format_usd(expected_cost))
    main = page.get_by_role("main")
    expect(main).to_contain_text("laptop")
    expect(main).to_contain_text('"max_tokens": 20')
    shoot(page, "log-details")


def test_the_models_page_searches_the_catalog(asgi_page, asgi_server, customer):
    page = asgi_page
    sign_in(page, asgi_server.url, customer["user"].email)

    page.goto("/models/")
    table = page.locator("#models tbody tr")
    expect(table.filter(has_text="e2e-logs-fast")).to_have_count(1)
    expect(table.filter(has_text="e2e-logs-smart")).to_have_count(1)
    shoot(page, "models")

    page.get_by_label("Search").fill("smart")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(f"{asgi_server.url}/models/?q=smart&provider=&capability=&call_type=")
    expect(table).to_have_count(1)
    expect(table.first).to_contain_text("e2e-logs-smart")
    expect(table.first).to_contain_text("$2.50")
    expect(table.first).to_contain_text("$10.00")
    expect(page.locator("#model-count")).to_have_text("1 of 2 models")
    copy = page.get_by_role("button", name="Copy the model id e2e-logs-smart")
    expect(copy).to_be_visible()
    shoot(page, "models-search")
