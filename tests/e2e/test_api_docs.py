"""The /api/ docs page in a real browser, and a personal access token made in Profile calling
the API from a script."""

import httpx
import pytest
from drf_spectacular.generators import SchemaGenerator
from playwright.sync_api import expect

from billing.services import credit_grant
from tests.e2e.helpers import PASSWORD, shoot
from tests.factories import WalletFactory

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def customer(verified_user):
    credit_grant(
        wallet=WalletFactory(user=verified_user), amount_micros=25_000_000, reason="Welcome"
    )
    return verified_user


def sign_in(page, site: str, email: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{site}/dashboard/")


def operation_count() -> int:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    methods = {"get", "post", "put", "patch", "delete"}
    return sum(len(methods & item.keys()) for item in schema["paths"].values())


def test_the_docs_page_lists_every_operation_and_tries_one_with_the_session(page, site, customer):
    sign_in(page, site, customer.email)

    page.goto("/api/docs/")

    expect(page.get_by_role("heading", name="TokenByte API")).to_be_visible()
    expect(page.get_by_role("link", name="TokenByte console")).to_have_attribute(
        "href", "/dashboard/"
    )
    expect(page.locator(".opblock")).to_have_count(operation_count())
    wallet = page.locator(".opblock-get", has=page.locator('[data-path="/api/wallet/"]'))
    expect(wallet).to_have_count(1)
    shoot(page, "api-docs")
    # "Try it out" runs the call from the page, signed in by the session's cookie.
    wallet.locator(".opblock-summary-control").click()
    wallet.get_by_role("button", name="Try it out").click()
    wallet.get_by_role("button", name="Execute").click()
    answer = wallet.locator(".live-responses-table .response .response-col_status")
    expect(answer).to_have_text("200")
    expect(wallet.locator(".live-responses-table")).to_contain_text('"balance_micros": 25000000')
    shoot(page, "api-docs-wallet")


def test_an_access_token_made_in_profile_reads_the_wallet_from_a_script(page, site, customer):
    sign_in(page, site, customer.email)
    page.goto("/profile/")
    section = page.locator("#access-tokens")

    section.get_by_label("Name").fill("wallet-script")
    section.get_by_role("button", name="Create access token").click()
    secret = page.get_by_label("Your access token").input_value()
    expect(page.get_by_role("alert")).to_contain_text("only time it is shown")
    shoot(page, "profile-access-token-created")

    assert secret.startswith("tbp_")
    answer = httpx.get(
        f"{site}/api/wallet/", headers={"Authorization": f"Bearer {secret}"}, timeout=10
    )
    assert answer.status_code == 200
    assert answer.json()["balance_micros"] == 25_000_000
    assert answer.json()["available_usd"] == "25.000000"
    refused = httpx.get(f"{site}/api/wallet/", timeout=10)
    assert refused.status_code == 401
