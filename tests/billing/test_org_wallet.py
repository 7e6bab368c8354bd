"""The wallet in an organization's scope (issue 14), console and /api/: owners and admins see the
organization's wallet (balance, debt, ledger, CSV, top-ups with who paid) and top it up through
the fake Stripe; a member sees the balance and their own allowance, and the ledger, top-ups and
receipts are a 404 for them; personal scope never shows an organization's top-up."""

import csv
import io
from datetime import date

import pytest
from django.core import mail

from accounts.models import Membership, Organization, User
from accounts.services import organization_create
from billing.models import LedgerEntry, TopUp, Wallet
from billing.receipts import topup_receipt
from billing.selectors import wallet_ledger_sum_micros
from billing.services import ledger_post, wallet_get_or_create
from tests.accounts.test_org_tokens import api
from tests.billing.test_wallet_page import (  # noqa: F401
    deliver_events,
    eager_tasks,
    fake_server,
    fake_stripe,
)
from tests.factories import PaidTopUpFactory, TopUpFactory
from tests.organizations import console

pytestmark = pytest.mark.django_db

ROLES = ("owner", "admin", "member", "outsider")


@pytest.fixture
def org(owner) -> Organization:
    return organization_create(user=owner, name="Acme", time_zone="UTC")


@pytest.fixture
def people(owner, admin, member, outsider) -> dict[str, User]:
    return {"owner": owner, "admin": admin, "member": member, "outsider": outsider}


@pytest.fixture
def org_wallet(org) -> Wallet:
    """The organization's wallet with $30 in it: a $25 top-up paid by the admin and a $5 grant."""
    wallet = Wallet.objects.get(organization=org)
    ledger_post(wallet=wallet, kind="grant", amount_micros=5_000_000, idempotency_key="org-grant",
                description="Welcome credit")  # fmt: skip
    return wallet


@pytest.fixture
def org_topup(org_wallet, admin) -> TopUp:
    entry, _ = ledger_post(wallet=org_wallet, kind="topup", amount_micros=25_000_000,
                           idempotency_key="org-topup", description="Top-up")  # fmt: skip
    return PaidTopUpFactory(
        wallet=org_wallet,
        user=admin,
        amount_micros=25_000_000,
        receipt_number="TB-202612-000777",
        ledger_entry=entry,
    )


# --- the console page ----------------------------------------------------------------------------


def test_an_owner_sees_the_organizations_wallet_ledger_and_who_paid_each_top_up(
    owner, org, org_topup
):
    personal = wallet_get_or_create(user=owner)
    ledger_post(wallet=personal, kind="grant", amount_micros=1_000_000, idempotency_key="mine")

    response = console(owner, org).get("/wallet/")

    assert response.status_code == 200
    content = response.content.decode()
    assert response.context["wallet"].organization == org
    assert '<dd id="wallet-balance">$30.00</dd>' in content
    assert [e.amount_micros for e in response.context["entries"]] == [25_000_000, 5_000_000]
    assert response.context["topups"] == [org_topup]
    assert '<td class="topup-payer">admin@example.com</td>' in content
    assert "TB-202612-000777" in content
    assert 'id="top-up"' in content and 'id="alert-threshold"' in content
    assert "Acme" in content


def test_a_member_sees_the_balance_and_their_allowance_only(member, org, org_topup):
    Membership.objects.filter(user=member).update(
        monthly_allowance_micros=10_000_000, allowance_used_micros=1_500_000
    )

    response = console(member, org).get("/wallet/")

    assert response.status_code == 200
    content = response.content.decode()
    assert '<dd id="wallet-balance">$30.00</dd>' in content
    assert (
        '<p class="allowance-figure" id="allowance-spent">Spent <strong>$1.50</strong> of '
        "<strong>$10.00</strong> this month</p>"
    ) in content
    assert "$8.50 left (15% used)" in content
    assert response.context["entries"] == [] and response.context["topups"] == []
    for absent in ['id="ledger"', 'id="topups"', 'id="top-up"', 'id="alert-threshold"',
                   "TB-202612-000777", "/wallet/ledger.csv"]:  # fmt: skip
        assert absent not in content, absent
    assert "Top-ups, the ledger and receipts are for its owners and admins." in content


def test_a_member_without_a_cap_reads_what_they_spent(member, org, org_wallet):
    Membership.objects.filter(user=member).update(allowance_used_micros=2_000_000)

    content = console(member, org).get("/wallet/").content.decode()

    assert "Spent <strong>$2.00</strong> this month" in content
    assert "no monthly cap" in content


def test_the_allowance_starts_on_the_first_of_the_month(member, org, org_wallet):
    Membership.objects.filter(user=member).update(
        monthly_allowance_micros=0, allowance_period_start=date(2026, 12, 1)
    )

    response = console(member, org).get("/wallet/")

    assert response.context["allowance"].percent == 100
    assert "since 2026-12-01" in response.content.decode()


def test_personal_scope_never_shows_an_organizations_top_up(admin, org, org_topup):
    mine = PaidTopUpFactory(wallet=wallet_get_or_create(user=admin), receipt_number="TB-MINE")

    response = console(admin).get("/wallet/")

    assert response.context["topups"] == [mine]
    assert "TB-202612-000777" not in response.content.decode()
    assert response.context["wallet"].user == admin


# The console's permission matrix over the wallet's pages in the organization's scope.
PAGES = {
    "wallet": ("get", "/wallet/", {}),
    "ledger csv": ("get", "/wallet/ledger.csv", {}),
    "top up": ("post", "/wallet/topup/", {"amount_usd": "20.00"}),
    "threshold": ("post", "/wallet/threshold/", {"threshold_usd": "7"}),
    "receipt": ("get", "/wallet/receipts/{pk}/", {}),
    "receipt pdf": ("get", "/wallet/receipts/{pk}.pdf", {}),
    "success": ("get", "/wallet/topup/success/?session_id={session}", {}),
    "cancel": ("get", "/wallet/topup/cancel/?topup={pk}", {}),
}
PAGE_EXPECTED = {
    # page:         owner, admin, member, outsider
    "wallet":       (200, 200, 200, 200),
    "ledger csv":   (200, 200, 404, 200),
    "top up":       (303, 303, 403, 303),
    "threshold":    (303, 303, 403, 303),
    "receipt":      (200, 200, 404, 404),
    "receipt pdf":  (200, 200, 404, 404),
    "success":      (200, 200, 404, 404),
    "cancel":       (200, 200, 404, 404),
}  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("page", list(PAGES))
@pytest.mark.usefixtures("fake_stripe")
def test_the_permission_matrix_of_the_wallet_pages(people, org, org_topup, role, page):
    method, path, data = PAGES[page]
    url = path.format(pk=org_topup.pk, session=org_topup.stripe_checkout_session_id)
    client = console(people[role], org)
    threshold_before = Wallet.objects.get(organization=org).low_balance_threshold_micros

    response = getattr(client, method)(url, data)

    assert response.status_code == PAGE_EXPECTED[page][ROLES.index(role)]
    org_wallet = Wallet.objects.get(organization=org)
    if role == "member":
        # Refused: nothing of the organization's changed.
        assert TopUp.objects.filter(wallet=org_wallet).count() == 1
        assert org_wallet.low_balance_threshold_micros == threshold_before
    if role == "outsider" and method == "post":
        # The outsider's scope is their own: what they did is theirs, not the organization's.
        assert TopUp.objects.filter(wallet=org_wallet).count() == 1
        assert org_wallet.low_balance_threshold_micros is None


def test_receipts_of_the_organization_open_for_its_admins_in_any_scope(owner, org, org_topup):
    response = console(owner).get(f"/wallet/receipts/{org_topup.pk}/")

    assert response.status_code == 200
    content = response.content.decode()
    assert '<dd id="receipt-organization">Acme</dd>' in content
    assert "admin@example.com" in content
    assert "<dt>Paid by</dt>" in content


def test_a_receipt_names_the_organization_and_the_payer(org_topup):
    receipt = topup_receipt(topup=org_topup)

    assert (receipt.organization_name, receipt.billed_to_email) == ("Acme", "admin@example.com")


def test_the_organizations_ledger_csv_is_its_own(admin, org, org_topup):
    response = console(admin, org).get("/wallet/ledger.csv")

    assert response["Content-Disposition"].startswith(
        'attachment; filename="tokenbyte-acme-ledger-'
    )
    body = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(body)))
    assert [(row[1], row[4]) for row in rows[1:]] == [("topup", "25.000000"), ("grant", "5.000000")]


def test_an_admin_sets_the_organizations_alert_threshold(admin, org, org_wallet):
    response = console(admin, org).post(
        "/wallet/threshold/", {"threshold_usd": "12.5"}, follow=True
    )

    org_wallet.refresh_from_db()
    assert org_wallet.low_balance_threshold_micros == 12_500_000
    assert not Wallet.objects.filter(user=admin).exists()
    [message] = [str(m) for m in response.context["messages"]]
    assert message == "You will be alerted when the balance of Acme drops below $12.50."


# --- a top-up through the fake Stripe ------------------------------------------------------------


@pytest.mark.usefixtures("eager_tasks")
def test_an_org_top_up_through_stripe_credits_the_organizations_wallet(
    admin, org, request, django_capture_on_commit_callbacks
):
    fake = request.getfixturevalue("fake_stripe")
    client = console(admin, org)
    wallet = Wallet.objects.get(organization=org)

    started = client.post("/wallet/topup/", {"amount_usd": "40.00"})
    topup = TopUp.objects.get()
    session = fake.session(topup.stripe_checkout_session_id)
    fake.pay(topup.stripe_checkout_session_id)
    with django_capture_on_commit_callbacks(execute=True):
        deliver_events(client, fake, "checkout.session.completed")

    assert started.status_code == 303 and started["Location"] == topup.checkout_url
    assert (topup.wallet, topup.user) == (wallet, admin)
    assert session["metadata"] == {
        "topup_id": str(topup.pk),
        "user_id": str(admin.pk),
        "organization_id": str(org.pk),
    }
    assert session["customer_email"] == "admin@example.com"
    wallet.refresh_from_db()
    assert wallet.balance_micros == 40_000_000 == wallet_ledger_sum_micros(wallet=wallet)
    assert LedgerEntry.objects.get(wallet=wallet).kind == "topup"
    assert not Wallet.objects.filter(user=admin).exists()
    # The payer gets the receipt, which bills the organization.
    [email] = mail.outbox
    assert email.to == ["admin@example.com"]
    assert "was added to the TokenByte balance of Acme." in email.body
    assert "Billed to: Acme\nPaid by: admin@example.com" in email.body
    success = client.get(f"/wallet/topup/success/?session_id={topup.stripe_checkout_session_id}")
    assert success.status_code == 200
    assert "$40.00 added to Acme's balance</h2>" in success.content.decode()


def test_a_member_cannot_start_a_top_up_of_the_organization(member, org, request):
    fake = request.getfixturevalue("fake_stripe")
    response = console(member, org).post("/wallet/topup/", {"amount_usd": "40.00"})

    assert response.status_code == 403
    assert (
        "Your role (member) in Acme does not allow this: its owners and admins top up its wallet "
        "and set its alert."
    ) in response.content.decode()
    assert not TopUp.objects.exists()
    assert fake.events() == []


# --- /api/ with ?organization= -------------------------------------------------------------------

API_CALLS = {
    "wallet": ("get", "/api/wallet/", None),
    "threshold": ("patch", "/api/wallet/", {"low_balance_threshold_micros": 7_000_000}),
    "ledger": ("get", "/api/wallet/ledger/", None),
    "top-ups": ("get", "/api/topups/", None),
    "top-up": ("get", "/api/topups/{pk}/", None),
    "start": ("post", "/api/topups/", {"amount_usd": "20.00"}),
}
API_EXPECTED = {
    # call:       owner, admin, member, outsider
    "wallet":     (200, 200, 200, 404),
    "threshold":  (200, 200, 403, 404),
    "ledger":     (200, 200, 404, 404),
    "top-ups":    (200, 200, 404, 404),
    "top-up":     (200, 200, 404, 404),
    "start":      (201, 201, 403, 404),
}  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("call", list(API_CALLS))
@pytest.mark.usefixtures("fake_stripe")
def test_the_api_permission_matrix_of_the_organizations_wallet(people, org, org_topup, role, call):
    method, path, body = API_CALLS[call]
    url = path.format(pk=org_topup.pk) + f"?organization={org.pk}"
    client = api(people[role])

    if body is None:
        response = getattr(client, method)(url)
    else:
        response = getattr(client, method)(url, body, content_type="application/json")

    assert response.status_code == API_EXPECTED[call][ROLES.index(role)], response.content
    if response.status_code in (403, 404):
        wallet = Wallet.objects.get(organization=org)
        assert (wallet.low_balance_threshold_micros, wallet.topups.count()) == (None, 1)
        if response.status_code == 403:
            assert response.json()["error"]["code"] == "permission_denied"


def test_the_api_wallet_of_an_organization_tells_the_callers_allowance(member, org, org_wallet):
    Membership.objects.filter(user=member).update(
        monthly_allowance_micros=10_000_000,
        allowance_used_micros=2_500_000,
        allowance_period_start=date(2026, 12, 1),
    )

    body = api(member).get(f"/api/wallet/?organization={org.pk}").json()

    assert body == {
        "balance_micros": 5_000_000,
        "held_micros": 0,
        "available_micros": 5_000_000,
        "low_balance_threshold_micros": None,
        "balance_usd": "5.000000",
        "held_usd": "0.000000",
        "available_usd": "5.000000",
        "low_balance_threshold_usd": None,
        "organization": org.pk,
        "allowance": {
            "monthly_allowance_micros": 10_000_000,
            "allowance_used_micros": 2_500_000,
            "allowance_period_start": "2026-12-01",
            "monthly_allowance_usd": "10.000000",
            "allowance_used_usd": "2.500000",
        },
    }


def test_the_api_lists_every_top_up_of_the_organization_and_none_in_personal_scope(
    owner, admin, org, org_topup
):
    other = TopUpFactory(wallet=org_topup.wallet, user=owner)

    in_org = api(owner).get(f"/api/topups/?organization={org.pk}").json()
    personal = api(admin).get("/api/topups/").json()

    assert [t["id"] for t in in_org["results"]] == [other.pk, org_topup.pk]
    assert personal["results"] == []
    assert api(admin).get(f"/api/topups/{org_topup.pk}/").status_code == 404


@pytest.mark.usefixtures("fake_stripe")
def test_the_api_starts_a_top_up_of_the_organizations_wallet(owner, org):
    response = api(owner).post(
        f"/api/topups/?organization={org.pk}", {"amount_usd": "20.00"},
        content_type="application/json",
    )  # fmt: skip

    assert response.status_code == 201, response.content
    topup = TopUp.objects.get(pk=response.json()["id"])
    assert (topup.wallet.organization, topup.user) == (org, owner)


@pytest.mark.parametrize("value", ["999999", "acme"])
def test_an_organization_that_is_not_the_callers_is_a_404(owner, value):
    response = api(owner).get(f"/api/wallet/?organization={value}")

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
