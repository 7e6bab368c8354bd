"""The wallet in a real browser, without payments: a top-up paid earlier (built in the database
as the webhook leaves it), the ledger and its filters, the top-up form's checks, the alert
threshold, the result pages and the receipt with its PDF; only the owner sees any of it."""

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from allauth.account.models import EmailAddress
from django.utils import timezone
from playwright.sync_api import expect

from billing.models import LedgerEntry, TopUp
from billing.services import credit_grant, ledger_post, wallet_get_or_create
from tests.e2e.helpers import PASSWORD, shoot
from tests.factories import PaidTopUpFactory, TopUpFactory, UserFactory

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def owner(transactional_db):
    """A verified customer in Berlin: a $20 top-up paid (credited in the ledger, as the
    webhook does), a grant, two calls' usage, a pending and an expired top-up."""
    user = UserFactory(email="wallet.owner@example.com", time_zone="Europe/Berlin")
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    wallet = wallet_get_or_create(user=user)
    credit_grant(wallet=wallet, amount_micros=1_000_000, reason="Welcome credit")
    paid = PaidTopUpFactory(
        wallet=wallet,
        amount_micros=20_000_000,
        receipt_number="TB-202612-000101",
        stripe_checkout_session_id="cs_test_e2e_paid",
        stripe_payment_intent_id="pi_test_e2e_paid",
    )
    entry, _ = ledger_post(
        wallet=wallet,
        kind=LedgerEntry.Kind.TOPUP,
        amount_micros=20_000_000,
        idempotency_key="stripe:checkout:cs_test_e2e_paid",
        reference="cs_test_e2e_paid",
        description="Top-up, receipt TB-202612-000101",
    )
    TopUp.objects.filter(pk=paid.pk).update(ledger_entry=entry)
    for n, cost in enumerate([1_234, 56_789]):
        ledger_post(
            wallet=wallet,
            kind=LedgerEntry.Kind.USAGE,
            amount_micros=-cost,
            idempotency_key=f"e2e-usage-{n}",
            reference=f"req_e2e_{n}",
        )
    TopUpFactory(
        wallet=wallet,
        amount_micros=50_000_000,
        stripe_checkout_session_id="cs_test_e2e_open",
        checkout_url="https://checkout.example/c/pay/cs_test_e2e_open",
        created_at=timezone.now() - timedelta(minutes=5),
    )
    expired = TopUpFactory(
        wallet=wallet,
        amount_micros=10_000_000,
        status=TopUp.Status.EXPIRED,
        stripe_checkout_session_id="cs_test_e2e_expired",
        status_detail="Cancelled at checkout; nothing was charged.",
        created_at=timezone.now() - timedelta(days=1),
    )
    return {"user": user, "email": user.email, "paid": paid, "expired": expired}


@pytest.fixture
def outsider(transactional_db):
    user = UserFactory(email="wallet.outsider@example.com")
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    credit_grant(wallet=wallet_get_or_create(user=user), amount_micros=3_000_000, reason="Other")
    return {"user": user, "email": user.email}


def sign_in(page, site: str, email: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{site}/dashboard/")


def test_the_wallet_shows_the_balance_top_ups_and_ledger_and_filters_it(page, site, owner):
    sign_in(page, site, owner["email"])
    page.goto("/wallet/")

    # $1 + $20 - $0.001234 - $0.056789
    expect(page.locator("#wallet-balance")).to_have_text("$20.941977")
    expect(page.locator("#wallet-available")).to_have_text("$20.941977")
    topups = page.locator("#topups tbody tr")
    expect(topups).to_have_count(3)
    expect(topups.nth(0)).to_contain_text("Paid")
    expect(
        topups.nth(0).get_by_role("link", name="Receipt TB-202612-000101", exact=True)
    ).to_be_visible()
    expect(
        topups.nth(0).get_by_role("link", name="Receipt TB-202612-000101 as PDF")
    ).to_be_visible()
    expect(topups.nth(1)).to_contain_text("$50.00")
    expect(topups.nth(1).get_by_role("link", name="Continue payment")).to_have_attribute(
        "href", "https://checkout.example/c/pay/cs_test_e2e_open"
    )
    expect(topups.nth(2)).to_contain_text("Expired")
    expect(topups.nth(2)).to_contain_text("Cancelled at checkout; nothing was charged.")
    ledger = page.locator("#ledger tbody tr")
    expect(ledger).to_have_count(4)
    expect(ledger.nth(0)).to_contain_text("-$0.056789")
    expect(ledger.nth(2)).to_contain_text("+$20.00")
    expect(ledger.nth(2)).to_contain_text("Top-up, receipt TB-202612-000101")
    shoot(page, "wallet")

    page.get_by_label("Kind").select_option("topup")
    page.get_by_role("button", name="Apply filters").click()

    expect(page).to_have_url(f"{site}/wallet/?kind=topup&from=&to=#ledger-title")
    expect(ledger).to_have_count(1)
    expect(ledger.nth(0)).to_contain_text("+$20.00")
    expect(page.get_by_role("link", name="Download CSV")).to_have_attribute(
        "href", "/wallet/ledger.csv?kind=topup"
    )

    today = timezone.now().astimezone(ZoneInfo("Europe/Berlin")).date()
    page.get_by_label("From").fill((today + timedelta(days=1)).isoformat())
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_text("No entries match these filters.")).to_be_visible()
    page.get_by_role("link", name="Clear").click()
    expect(ledger).to_have_count(4)


def test_the_top_up_form_explains_a_wrong_amount(page, site, owner):
    sign_in(page, site, owner["email"])
    page.goto("/wallet/")
    expect(page.get_by_role("button", name="Top up $20.00")).to_be_visible()

    page.get_by_label("Amount (USD)").fill("4.99")
    page.get_by_role("button", name="Continue to payment").click()

    expect(page.locator("#top-up .errorlist")).to_have_text("The smallest top-up is $5.00.")
    expect(page.get_by_label("Amount (USD)")).to_have_value("4.99")
    assert TopUp.objects.count() == 3
    shoot(page, "wallet-topup-error")


def test_the_alert_threshold_is_set_and_turned_off(page, site, owner):
    sign_in(page, site, owner["email"])
    page.goto("/wallet/")
    expect(page.locator("#threshold-state")).to_contain_text("Off: no alert")

    page.get_by_label("Alert me below (USD)").fill("7.5")
    page.get_by_role("button", name="Save alert").click()

    expect(page).to_have_url(f"{site}/wallet/#alert-threshold")
    expect(page.get_by_role("status")).to_contain_text(
        "You will be alerted when your balance drops below $7.50."
    )
    expect(page.locator("#threshold-state")).to_contain_text("below $7.50")
    expect(page.get_by_label("Alert me below (USD)")).to_have_value("7.50")
    owner["user"].wallet.refresh_from_db()
    assert owner["user"].wallet.low_balance_threshold_micros == 7_500_000

    page.get_by_label("Alert me below (USD)").fill("")
    page.get_by_role("button", name="Save alert").click()

    expect(page.get_by_role("status")).to_contain_text("The low-balance alert is off.")
    owner["user"].wallet.refresh_from_db()
    assert owner["user"].wallet.low_balance_threshold_micros is None


def test_the_receipt_opens_prints_and_downloads_for_the_owner_only(page, site, owner, outsider):
    sign_in(page, site, owner["email"])
    page.goto("/wallet/")
    page.get_by_role("link", name="Receipt TB-202612-000101", exact=True).click()

    paid = owner["paid"]
    expect(page).to_have_url(f"{site}/wallet/receipts/{paid.pk}/")
    expect(page.locator("#receipt-number")).to_have_text("TB-202612-000101")
    expect(page.locator("#receipt-billed-to")).to_have_text("wallet.owner@example.com")
    expect(page.locator("#receipt-paid-at")).to_contain_text("(Europe/Berlin)")
    expect(page.locator("#receipt-lines")).to_contain_text("Account credit")
    expect(page.locator("#receipt-lines")).to_contain_text("$20.00")
    expect(page.get_by_text("Prepaid credit; does not expire.")).to_be_visible()
    # Shown by wallet.js: the button works only with JavaScript.
    expect(page.get_by_role("button", name="Print")).to_be_visible()
    shoot(page, "wallet-receipt")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download PDF").click()
    assert download.value.suggested_filename == "receipt-TB-202612-000101.pdf"
    with open(download.value.path(), "rb") as pdf:
        assert pdf.read(5) == b"%PDF-"

    page.get_by_role("button", name="Print").click()  # the print dialog is a no-op headless

    page.context.clear_cookies()
    sign_in(page, site, outsider["email"])
    assert page.goto(f"/wallet/receipts/{paid.pk}/").status == 404
    assert page.goto(f"/wallet/receipts/{paid.pk}.pdf").status == 404
    assert page.goto("/wallet/topup/success/?session_id=cs_test_e2e_paid").status == 404
    page.goto("/wallet/")
    expect(page.get_by_role("main")).not_to_contain_text("TB-202612-000101")


def test_the_result_pages_say_what_happened(page, site, owner):
    sign_in(page, site, owner["email"])

    page.goto("/wallet/topup/success/?session_id=cs_test_e2e_paid")
    expect(page.locator("#topup-state")).to_have_text("$20.00 added to your balance")
    expect(page.locator("#topup-balance")).to_have_text("$20.941977")
    expect(page.get_by_role("link", name="TB-202612-000101")).to_be_visible()
    shoot(page, "wallet-topup-success")

    page.goto(f"/wallet/topup/cancel/?topup={owner['expired'].pk}")
    expect(page.locator("#topup-state")).to_have_text("Top-up cancelled; nothing was charged.")
    shoot(page, "wallet-topup-cancel")
    page.get_by_role("link", name="Back to the wallet").click()
    expect(page).to_have_url(f"{site}/wallet/")
