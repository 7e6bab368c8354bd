"""A top-up as a customer makes it, in a real browser: the wallet page, the fake Stripe's hosted
checkout page, back to the success page; the webhook credits the wallet and the receipt is
emailed; and the relay's 403 at zero balance (document 004) lifts right after.

The site runs in its own uvicorn process pointed at a fake Stripe on a free port, with Celery in
its eager mode (no broker: the embedded default's) so the receipt email goes out in that process,
to its console backend, and shows in its log.
"""

import re

import openai
import pytest
from allauth.account.models import EmailAddress
from playwright.sync_api import expect

from accounts.services import api_token_create
from billing.models import LedgerEntry, TopUp
from billing.selectors import wallet_for_user, wallet_ledger_sum_micros
from fakestripe.server import FakeStripe
from tests.e2e.conftest import ACTION_TIMEOUT_MS, DESKTOP, SiteServer
from tests.e2e.helpers import shoot
from tests.e2e.test_logs import sign_in
from tests.factories import ModelFactory, ProviderFactory, UserFactory
from tests.relay.conftest import RelayServer, add_channel, mock_upstream, wait_for  # noqa: F401

pytestmark = pytest.mark.timeout(120)

API_KEY = "sk_test_e2e_topup"
SECRET = "whsec_e2e_topup"
MODEL = "e2e-topup-chat"


@pytest.fixture(scope="module")
def fake_stripe():
    with FakeStripe(api_key=API_KEY, webhook_secret=SECRET, retry_delays=(0.5, 1, 2)) as fake:
        yield fake


@pytest.fixture(scope="module")
def site(fake_stripe, relay_role, tmp_path_factory):
    server = RelayServer(
        tmp_path_factory.mktemp("topup-site") / "site.log",
        DEBUG="true",
        REDIS_URL="",
        RELAY_CATALOG_CACHE_SECONDS="0",
        ALLOWED_HOSTS="localhost,127.0.0.1",
        STRIPE_API_BASE=fake_stripe.url,
        STRIPE_SECRET_KEY=API_KEY,
        STRIPE_WEBHOOK_SECRET=SECRET,
    ).start()
    site = SiteServer(server)
    fake_stripe.webhook_url = f"{site.url}/billing/stripe/webhook/"
    yield site
    server.stop()


@pytest.fixture
def browser_page(browser, site, transactional_db):
    context = browser.new_context(viewport=DESKTOP, base_url=site.url, color_scheme="light")
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def customer(browser_page, mock_upstream, fake_stripe):  # noqa: F811
    """A verified customer with no credit at all, one routed model and one key."""
    mock_upstream.reset()
    fake_stripe.reset()
    user = UserFactory(email="payer@example.com")
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    ModelFactory(model_id=MODEL, provider=ProviderFactory(slug="topup-ai"), max_output_tokens=64)
    add_channel(mock_upstream, "mock-topup", MODEL)
    _, secret = api_token_create(owner=user, name="app")
    return user, secret


def chat(site: SiteServer, secret: str):
    client = openai.OpenAI(base_url=site.relay_url, api_key=secret, max_retries=0, timeout=30)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=16
    )


def can_call(site: SiteServer, secret: str) -> bool:
    try:
        chat(site, secret)
    except openai.PermissionDeniedError:
        return False
    return True


def test_a_customer_tops_up_20_dollars_and_the_relay_lets_them_call(
    browser_page, site, customer, fake_stripe
):
    page, (user, secret) = browser_page, customer
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(site, secret)
    assert refused.value.code == "insufficient_quota"

    sign_in(page, site.url, user.email)
    page.goto("/wallet/")
    expect(page.locator("#wallet-balance")).to_have_text("$0.00")
    page.get_by_role("button", name="Top up $20.00").click()

    expect(page).to_have_url(re.compile(rf"{re.escape(fake_stripe.url)}/c/pay/cs_test_\w+"))
    expect(page.get_by_text("$20.00").first).to_be_visible()
    shoot(page, "topup-hosted-page")
    page.get_by_role("button", name="Pay", exact=True).click()

    success = rf"{re.escape(site.url)}/wallet/topup/success/\?session_id=cs_test_\w+"
    expect(page).to_have_url(re.compile(success))
    expect(page.locator("#topup-state")).to_have_text(
        "$20.00 added to your balance", timeout=15_000
    )
    expect(page.locator("#topup-balance")).to_have_text("$20.00")
    shoot(page, "topup-success")

    wallet = wallet_for_user(user=user)
    assert wallet.balance_micros == 20_000_000 == wallet_ledger_sum_micros(wallet=wallet)
    entry = LedgerEntry.objects.get(wallet=wallet)
    assert (entry.kind, entry.amount_micros) == ("topup", 20_000_000)
    topup = TopUp.objects.get(user=user)
    wait_for(lambda: site.server.log_path.read_text().count("Subject: Your TokenByte receipt"), 10,
             "the receipt email")  # fmt: skip
    log = site.server.log_path.read_text()
    assert log.count(f"Subject: Your TokenByte receipt {topup.receipt_number}") == 1
    assert f'filename="receipt-{topup.receipt_number}.pdf"' in log
    # The relay reads keys at most a second old: the 403 lifts right after.
    wait_for(lambda: can_call(site, secret), 5, "the relay to accept the key")

    page.goto("/wallet/")
    expect(page.locator("#topups")).to_contain_text(topup.receipt_number)
    with page.expect_download() as download:
        page.get_by_role("link", name=f"Receipt {topup.receipt_number} as PDF").click()
    assert download.value.suggested_filename == f"receipt-{topup.receipt_number}.pdf"


def test_a_bank_payment_credits_when_it_clears_and_a_cancel_charges_nothing(
    browser_page, site, customer, fake_stripe
):
    page, (user, _) = browser_page, customer
    sign_in(page, site.url, user.email)
    page.goto("/wallet/")
    page.get_by_role("textbox", name="Amount (USD)").fill("12.34")
    page.get_by_role("button", name="Continue to payment").click()
    page.get_by_role("button", name="Pay later (async)").click()

    expect(page.locator("#topup-state")).to_have_text(
        "Your bank payment is processing; we will credit your balance when it clears."
    )
    topup = TopUp.objects.get(user=user)
    wait_for(lambda: fake_stripe.session(topup.stripe_checkout_session_id)["status"] == "complete")
    fake_stripe.async_succeed(topup.stripe_checkout_session_id)
    fake_stripe.wait_for_deliveries("checkout.session.async_payment_succeeded", timeout=10)
    page.reload()
    expect(page.locator("#topup-state")).to_have_text("$12.34 added to your balance")

    page.goto("/wallet/")
    page.get_by_role("button", name="Top up $10.00").click()
    page.get_by_role("link", name="Cancel").click()
    expect(page.get_by_text("nothing was charged")).to_be_visible()
    assert wallet_for_user(user=user).balance_micros == 12_340_000
    assert list(TopUp.objects.filter(user=user).values_list("status", flat=True)) == [
        "expired",
        "paid",
    ]
