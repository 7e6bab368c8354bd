"""Issue 14's whole journey, through the real site (console, relay and email in one process):
an owner invites a colleague by email; the colleague opens the emailed link signed out, signs up
on the way and joins; the owner gives them a monthly allowance; the colleague creates a key in
the organization and calls the relay with the OpenAI SDK until the allowance stops them (403
member_allowance_exceeded); the owner sees the usage by member, and one organization bill.

The site runs in its own uvicorn process with Celery eager (no broker: the embedded default),
so the invitation email goes out in that process, to its console backend, and shows in its log.
"""

import re

import openai
import pytest
from allauth.account.models import EmailAddress
from playwright.sync_api import expect

from accounts.models import ApiToken, Membership, User
from accounts.services import organization_create
from billing.models import LedgerEntry, Wallet
from billing.selectors import wallet_ledger_sum_micros
from billing.services import credit_grant
from tests.e2e.conftest import ACTION_TIMEOUT_MS, DESKTOP, SiteServer
from tests.e2e.helpers import shoot
from tests.e2e.test_logs import sign_in
from tests.factories import ModelFactory, UserFactory
from tests.relay.conftest import RelayServer, add_channel, mock_upstream, wait_for  # noqa: F401
from tokenbyte.money import format_usd

pytestmark = pytest.mark.timeout(150)

MODEL = "e2e-team-chat"


@pytest.fixture(scope="module")
def site(relay_role, tmp_path_factory):
    server = RelayServer(
        tmp_path_factory.mktemp("team-site") / "site.log",
        DEBUG="true",
        REDIS_URL="",
        RELAY_CATALOG_CACHE_SECONDS="0",
        ALLOWED_HOSTS="localhost,127.0.0.1",
    )
    server.env["SITE_URL"] = f"http://localhost:{server.port}"
    server.start()
    yield SiteServer(server)
    server.stop()


def new_page(browser, base_url: str):
    context = browser.new_context(viewport=DESKTOP, base_url=base_url, color_scheme="light")
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
    return context.new_page()


def switch_to(page, name: str) -> None:
    page.locator("[data-switcher] summary").click()
    page.locator("[data-switcher]").get_by_role("button", name=re.compile(f"^{name}")).click()
    page.wait_for_load_state()


def test_an_owner_invites_a_colleague_who_calls_until_their_allowance_and_the_owner_sees_it(
    browser,
    site,
    mock_upstream,  # noqa: F811
    transactional_db,
):
    ModelFactory(
        model_id=MODEL, input_price_micros_per_mtok=2_500_000,
        output_price_micros_per_mtok=10_000_000, max_output_tokens=1000,
    )  # fmt: skip
    add_channel(mock_upstream, "team-mock", MODEL)
    owner = UserFactory(email="owner@example.com")
    EmailAddress.objects.create(user=owner, email=owner.email, verified=True, primary=True)
    org = organization_create(user=owner, name="Acme Research")
    wallet = Wallet.objects.get(organization=org)
    credit_grant(wallet=wallet, amount_micros=10_000_000, reason="Team budget")

    owners = new_page(browser, site.url)
    colleague = new_page(browser, site.url)
    try:
        # The owner invites a colleague by email, in the organization's scope.
        sign_in(owners, site.url, owner.email)
        switch_to(owners, "Acme Research")
        owners.goto("/organization/")
        invite = owners.locator("form", has=owners.get_by_role("heading", name="Invite by email"))
        invite.get_by_label("Email address").fill("colleague@example.com")
        invite.get_by_role("button", name="Send invitation").click()
        expect(owners.get_by_role("status")).to_contain_text("colleague@example.com")

        log = site.server.log_path
        wait_for(lambda: "Subject: You are invited to join Acme Research" in log.read_text(), 10)
        (link,) = set(re.findall(rf"{site.url}/organization/invitations/inv_[0-9a-f]+/",
                                 log.read_text()))  # fmt: skip

        # The colleague opens it signed out, signs up on the way and joins.
        colleague.goto(link)
        expect(colleague.get_by_role("heading", name="Join Acme Research")).to_be_visible()
        colleague.get_by_role("link", name="Create an account").click()
        colleague.get_by_label(re.compile(r"^Password:?$")).fill("a long new passphrase")
        colleague.get_by_label("Password (again)").fill("a long new passphrase")
        colleague.get_by_role("button", name="Sign Up").click()
        expect(colleague).to_have_url(link)
        colleague.get_by_role("button", name="Accept and join").click()
        expect(colleague.get_by_role("status")).to_contain_text("Welcome to Acme Research")
        member = User.objects.get(email="colleague@example.com")
        membership = Membership.objects.get(user=member, organization=org)

        # The owner gives them $0.002 a month. A call with max_tokens=100 holds about $0.00107
        # and costs about $0.00016: room for six calls, not seven.
        owners.goto("/organization/")
        owners.get_by_role("link", name="Manage colleague@example.com").click()
        owners.get_by_label("Monthly allowance (USD)").fill("0.002")
        owners.get_by_role("button", name="Save allowance").click()
        expect(owners.locator("[data-spent]")).to_contain_text("of $0.002")
        membership.refresh_from_db()
        assert membership.monthly_allowance_micros == 2_000

        # The colleague creates a key in the organization and calls the relay.
        colleague.goto("/tokens/")
        colleague.get_by_role("link", name="New key").click()
        colleague.get_by_label("Name").fill("notebook")
        colleague.get_by_role("button", name="Create key").click()
        key = colleague.get_by_label("Your API key").input_value()
        token = ApiToken.objects.get(name="notebook")
        assert (token.owner, token.organization) == (member, org)
        client = openai.OpenAI(base_url=site.relay_url, api_key=key, max_retries=0)

        answered = 0
        with pytest.raises(openai.PermissionDeniedError) as refused:
            for _ in range(10):
                client.chat.completions.create(
                    model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
                )
                answered += 1
        assert answered == 6
        assert refused.value.code == "member_allowance_exceeded"
        assert "Monthly allowance exceeded" in refused.value.message
        usage = LedgerEntry.objects.filter(wallet=wallet, kind="usage")
        wait_for(lambda: usage.count() == 6, 10)
        spent = -sum(usage.values_list("amount_micros", flat=True))
        membership.refresh_from_db()
        # The allowance counts exactly what the wallet was charged, within its cap.
        assert membership.allowance_used_micros == spent <= 2_000

        # The owner sees the usage by member, and one bill: the organization's wallet.
        owners.goto("/usage/?by=member")
        row = owners.locator("#usage-table-member tbody tr").first
        expect(row.locator("th")).to_contain_text("colleague@example.com")
        expect(row).to_contain_text(format_usd(spent))
        shoot(owners, "team-usage-by-member")
        owners.goto("/wallet/")
        expect(owners.get_by_text(format_usd(10_000_000 - spent)).first).to_be_visible()
        shoot(owners, "team-wallet")
        wallet.refresh_from_db()
        assert wallet.balance_micros == 10_000_000 - spent
        assert wallet.balance_micros == wallet_ledger_sum_micros(wallet=wallet)
        # Nothing of it reached the colleague's or the owner's personal wallet.
        assert not LedgerEntry.objects.filter(kind="usage").exclude(wallet=wallet).exists()
    finally:
        owners.context.close()
        colleague.context.close()
