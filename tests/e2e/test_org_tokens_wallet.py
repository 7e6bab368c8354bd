"""Keys and the wallet in an organization's scope, in a real browser (issue 14): a member
switches to the organization and creates a key; the owner sees it with whose it is and disables
it; the owner tops up the organization's wallet on the fake Stripe's hosted page, and a member
sees the balance and their allowance but no ledger."""

import re

import pytest
from allauth.account.models import EmailAddress
from playwright.sync_api import expect

from accounts.models import ApiToken, Membership, Organization, User
from accounts.services import allowance_period_start, organization_create
from billing.models import LedgerEntry, TopUp, Wallet
from billing.selectors import wallet_ledger_sum_micros
from fakestripe.server import FakeStripe
from tests.e2e.conftest import ACTION_TIMEOUT_MS, DESKTOP, SiteServer
from tests.e2e.helpers import shoot
from tests.e2e.test_logs import sign_in
from tests.factories import ModelFactory, UserFactory
from tests.relay.conftest import RelayServer, wait_for

pytestmark = pytest.mark.timeout(150)

API_KEY = "sk_test_e2e_org_wallet"
SECRET = "whsec_e2e_org_wallet"


def verified(email: str) -> User:
    user = UserFactory(email=email)
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


def acme(owner: User, member: User) -> Organization:
    """Acme, made by its owner, with the member in it ($10 a month allowance, $2.50 used)."""
    org = organization_create(user=owner, name="Acme", time_zone="UTC")
    Membership.objects.create(
        organization=org,
        user=member,
        role=Membership.Role.MEMBER,
        monthly_allowance_micros=10_000_000,
        allowance_used_micros=2_500_000,
        allowance_period_start=allowance_period_start(time_zone="UTC"),
    )
    return org


def switch_to(page, org: Organization) -> None:
    """Work in the organization, with the header's switcher (a menu of submit buttons)."""
    page.locator("[data-switcher] summary").click()
    page.locator(f"[data-switcher] button[name='organization'][value='{org.pk}']").click()
    page.wait_for_load_state()


def new_page(browser, base_url: str):
    context = browser.new_context(viewport=DESKTOP, base_url=base_url, color_scheme="light")
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    return context.new_page()


# --- keys ----------------------------------------------------------------------------------------


def test_a_member_creates_an_organization_key_and_the_owner_disables_it(
    browser, page, site, transactional_db
):
    owner, member = verified("owner@example.com"), verified("member@example.com")
    org = acme(owner, member)
    ModelFactory(model_id="gpt-test")

    sign_in(page, site, member.email)
    switch_to(page, org)
    page.goto("/tokens/")
    expect(page.locator("#scope-note")).to_contain_text("Keys of Acme spend from")
    page.get_by_role("link", name="New key").click()
    expect(page.get_by_label("Group")).to_have_count(0)
    page.get_by_label("Name").fill("member-ci")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Key member-ci is created")).to_be_visible()
    expect(page.locator("#scope-note")).to_contain_text("belongs to Acme")
    shoot(page, "org-token-created")
    token = ApiToken.objects.get(name="member-ci")
    assert (token.owner, token.organization) == (member, org)

    page.get_by_role("link", name="I have saved it, back to keys").click()
    expect(page.locator("#tokens")).to_contain_text("member-ci")
    expect(page.locator("#tokens th", has_text="Member")).to_have_count(0)
    shoot(page, "org-tokens-member")

    owners = new_page(browser, site)
    try:
        sign_in(owners, site, owner.email)
        owners.goto("/tokens/")
        expect(owners.locator("#tokens")).to_have_count(0)  # personal: Acme's key is not here
        switch_to(owners, org)
        owners.goto("/tokens/")
        table = owners.locator("#tokens")
        expect(table.locator("th", has_text="Member")).to_be_visible()
        row = table.locator(f"#token-{token.pk}")
        expect(row).to_contain_text("member@example.com")
        expect(row.get_by_role("link", name="Edit member-ci")).to_have_count(0)
        shoot(owners, "org-tokens-owner")
        row.get_by_role("button", name="Disable member-ci").click()
        expect(table.locator(f"#token-{token.pk} .badge").first).to_have_text("Disabled")
        expect(table.locator(f"#token-{token.pk}")).to_contain_text("member@example.com")
    finally:
        owners.context.close()
    token.refresh_from_db()
    assert token.status == ApiToken.Status.DISABLED


# --- the wallet ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stripe_fake():
    with FakeStripe(api_key=API_KEY, webhook_secret=SECRET, retry_delays=(0.5, 1, 2)) as fake:
        yield fake


@pytest.fixture(scope="module")
def pay_site(stripe_fake, relay_role, tmp_path_factory):
    """The whole site in its own process, paying on the fake Stripe (Celery eager: the receipt
    email goes to that process's console backend, its log)."""
    server = RelayServer(
        tmp_path_factory.mktemp("org-wallet-site") / "site.log",
        DEBUG="true",
        REDIS_URL="",
        ALLOWED_HOSTS="localhost,127.0.0.1",
        STRIPE_API_BASE=stripe_fake.url,
        STRIPE_SECRET_KEY=API_KEY,
        STRIPE_WEBHOOK_SECRET=SECRET,
    ).start()
    site = SiteServer(server)
    stripe_fake.webhook_url = f"{site.url}/billing/stripe/webhook/"
    yield site
    server.stop()


def test_the_owner_tops_up_the_organizations_wallet_and_a_member_sees_their_allowance(
    browser, pay_site, stripe_fake, transactional_db
):
    stripe_fake.reset()
    owner, member = verified("owner@example.com"), verified("member@example.com")
    org = acme(owner, member)
    page = new_page(browser, pay_site.url)
    try:
        sign_in(page, pay_site.url, owner.email)
        switch_to(page, org)
        page.goto("/wallet/")
        expect(page.get_by_role("heading", name="Wallet · Acme")).to_be_visible()
        expect(page.locator("#wallet-balance")).to_have_text("$0.00")
        shoot(page, "org-wallet-owner")
        page.get_by_role("button", name="Top up $20.00").click()

        expect(page).to_have_url(re.compile(rf"{re.escape(stripe_fake.url)}/c/pay/cs_test_\w+"))
        page.get_by_role("button", name="Pay", exact=True).click()
        expect(page.locator("#topup-state")).to_have_text(
            "$20.00 added to Acme's balance", timeout=15_000
        )
        expect(page.locator("#topup-payer")).to_have_text("owner@example.com")
        shoot(page, "org-topup-success")

        wallet = Wallet.objects.get(organization=org)
        assert wallet.balance_micros == 20_000_000 == wallet_ledger_sum_micros(wallet=wallet)
        assert LedgerEntry.objects.get(wallet=wallet).kind == "topup"
        topup = TopUp.objects.get()
        assert (topup.wallet, topup.user) == (wallet, owner)
        assert not Wallet.objects.filter(user=owner, topups__isnull=False).exists()
        wait_for(lambda: "Subject: Your TokenByte receipt" in pay_site.server.log_path.read_text(),
                 10, "the receipt email")  # fmt: skip
        log = pay_site.server.log_path.read_text()
        assert "To: owner@example.com" in log
        assert "Billed to: Acme" in log

        page.goto("/wallet/")
        expect(page.locator("#topups")).to_contain_text(topup.receipt_number)
        expect(page.locator("#topups")).to_contain_text("owner@example.com")
        page.get_by_role("link", name=f"Receipt {topup.receipt_number}", exact=True).click()
        expect(page.locator("#receipt-organization")).to_have_text("Acme")
        shoot(page, "org-receipt")
    finally:
        page.context.close()

    members = new_page(browser, pay_site.url)
    try:
        sign_in(members, pay_site.url, member.email)
        switch_to(members, org)
        members.goto("/wallet/")
        expect(members.locator("#wallet-balance")).to_have_text("$20.00")
        expect(members.locator("#allowance-spent")).to_have_text("Spent $2.50 of $10.00 this month")
        expect(members.locator("#ledger")).to_have_count(0)
        expect(members.locator("#topups")).to_have_count(0)
        shoot(members, "org-wallet-member")
        receipt = members.goto(f"/wallet/receipts/{topup.pk}/")
        assert receipt.status == 404
    finally:
        members.context.close()
