import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from billing.models import Hold, LedgerEntry, Wallet
from billing.selectors import wallet_ledger_sum_micros
from billing.services import credit_grant
from tests.factories import HoldFactory, OrganizationFactory, UserFactory, WalletFactory

pytestmark = pytest.mark.django_db

WALLETS = reverse("admin:billing_wallet_changelist")


def url_of(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [m.message for m in get_messages(response.wsgi_request)]


def open_grant_page(client, *wallets, action: str = "grant_credit"):
    return client.post(WALLETS, {"action": action, "_selected_action": [w.pk for w in wallets]})


def submit_grant(client, page, **fields):
    """Submit the grant page's form as a browser would: its hidden fields plus the typed ones."""
    form = page.context["form"]
    data = {
        "action": page.context["action"],
        "select_across": "0",
        "_selected_action": page.context["selected_ids"],
        "grant_id": str(form["grant_id"].value()),
        "apply": "Grant credit",
        **fields,
    }
    return client.post(WALLETS, data)


def test_grant_credit_asks_for_an_amount_and_a_reason_first(staff_client):
    wallet = WalletFactory(user__email="ann@example.com")

    page = open_grant_page(staff_client, wallet)

    assert page.status_code == 200
    html = page.content.decode()
    assert "Wallet of ann@example.com (balance $0.00)" in html
    assert 'name="amount_usd"' in html
    assert 'name="reason"' in html
    assert not LedgerEntry.objects.exists()


def test_grant_credit_posts_one_grant_entry_with_the_exact_amount(staff_client, staff_user):
    wallet = WalletFactory(user__email="ann@example.com")
    page = open_grant_page(staff_client, wallet)

    response = submit_grant(staff_client, page, amount_usd="12.345678", reason="outage credit")

    assert response.status_code == 302
    assert response["Location"] == WALLETS
    assert messages_of(response) == ["Granted $12.345678 to 1 wallet."]
    wallet.refresh_from_db()
    assert wallet.balance_micros == 12_345_678
    entry = LedgerEntry.objects.get()
    assert (entry.wallet_id, entry.kind, entry.amount_micros, entry.balance_after_micros) == (
        wallet.pk,
        "grant",
        12_345_678,
        12_345_678,
    )
    assert (entry.description, entry.created_by) == ("outage credit", staff_user)
    assert wallet_ledger_sum_micros(wallet=wallet) == wallet.balance_micros


def test_grant_credit_credits_each_selected_wallet_once(staff_client):
    user_wallet = WalletFactory()
    org_wallet = Wallet.objects.create(organization=OrganizationFactory())
    untouched = WalletFactory()
    page = open_grant_page(staff_client, user_wallet, org_wallet)

    response = submit_grant(staff_client, page, amount_usd="5", reason="demo")

    assert messages_of(response) == ["Granted $5.00 to 2 wallets."]
    balances = dict(Wallet.objects.values_list("pk", "balance_micros"))
    assert balances == {user_wallet.pk: 5_000_000, org_wallet.pk: 5_000_000, untouched.pk: 0}
    assert sorted(LedgerEntry.objects.values_list("wallet_id", "amount_micros")) == [
        (user_wallet.pk, 5_000_000),
        (org_wallet.pk, 5_000_000),
    ]


def test_a_resubmitted_grant_form_does_not_credit_twice(staff_client):
    wallet = WalletFactory()
    page = open_grant_page(staff_client, wallet)
    submit_grant(staff_client, page, amount_usd="3.50", reason="goodwill")
    staff_client.get(WALLETS)  # the redirect a browser follows, showing the first message

    response = submit_grant(staff_client, page, amount_usd="3.50", reason="goodwill")

    assert messages_of(response) == ["1 wallet already had this grant; nothing was added."]
    wallet.refresh_from_db()
    assert wallet.balance_micros == 3_500_000
    assert LedgerEntry.objects.count() == 1


@pytest.mark.parametrize(
    ("amount", "reason", "error"),
    [
        ("1.0000001", "r", "USD amounts have at most 6 decimals: &#x27;1.0000001&#x27;"),
        ("ten", "r", "not a USD amount: &#x27;ten&#x27;"),
        ("", "r", "This field is required."),
        ("1", "   ", "This field is required."),
    ],
)
def test_grant_credit_shows_the_form_again_on_bad_input_and_writes_nothing(
    staff_client, amount, reason, error
):
    wallet = WalletFactory()
    page = open_grant_page(staff_client, wallet)

    response = submit_grant(staff_client, page, amount_usd=amount, reason=reason)

    assert response.status_code == 200
    assert error in response.content.decode()
    assert not LedgerEntry.objects.exists()
    wallet.refresh_from_db()
    assert wallet.balance_micros == 0


@pytest.mark.parametrize("amount", ["0", "-2"])
def test_a_grant_the_service_refuses_is_an_error_message_not_a_500(staff_client, amount):
    wallet = WalletFactory(user__email="ann@example.com")
    page = open_grant_page(staff_client, wallet)

    response = submit_grant(staff_client, page, amount_usd=amount, reason="oops")

    assert response.status_code == 302
    assert messages_of(response) == ["Wallet of ann@example.com: a grant must be a positive amount"]
    assert not LedgerEntry.objects.exists()
    wallet.refresh_from_db()
    assert wallet.balance_micros == 0


def test_wallet_balances_cannot_be_edited_in_the_change_form(staff_client):
    wallet = WalletFactory()
    credit_grant(wallet=wallet, amount_micros=2_000_000, reason="welcome")

    response = staff_client.post(
        url_of(Wallet, "change", wallet.pk),
        {"balance_micros": "999000000", "held_micros": "5", "low_balance_threshold_micros": "1"},
    )

    assert response.status_code == 302
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.held_micros, wallet.low_balance_threshold_micros) == (
        2_000_000,
        0,
        1,
    )
    html = staff_client.get(url_of(Wallet, "change", wallet.pk)).content.decode()
    assert 'name="balance_micros"' not in html
    assert 'name="held_micros"' not in html
    assert f"?wallet__id__exact={wallet.pk}" in html


def test_wallets_are_not_deleted_in_the_admin(staff_client):
    wallet = WalletFactory()

    response = staff_client.post(url_of(Wallet, "delete", wallet.pk), {"post": "yes"})

    assert response.status_code == 403
    assert Wallet.objects.filter(pk=wallet.pk).exists()


def test_a_wallet_is_added_for_a_user(staff_client):
    user = UserFactory()

    response = staff_client.post(url_of(Wallet, "add"), {"user": user.pk})

    assert response.status_code == 302
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_micros, wallet.held_micros) == (0, 0)


def make_ledger_entry():
    return credit_grant(wallet=WalletFactory(), amount_micros=7_000_000, reason="welcome")


@pytest.mark.parametrize(
    ("make", "field"),
    [(make_ledger_entry, "amount_micros"), (HoldFactory, "amount_micros")],
    ids=["ledger-entry", "hold"],
)
def test_ledger_entries_and_holds_are_read_only(staff_client, make, field):
    obj = make()
    model = type(obj)
    before = model.objects.values().get(pk=obj.pk)

    add = staff_client.get(url_of(model, "add"))
    delete_page = staff_client.get(url_of(model, "delete", obj.pk))
    delete = staff_client.post(url_of(model, "delete", obj.pk), {"post": "yes"})
    change = staff_client.post(url_of(model, "change", obj.pk), {field: "1"})
    view = staff_client.get(url_of(model, "change", obj.pk))

    assert (add.status_code, delete_page.status_code, delete.status_code) == (403, 403, 403)
    assert change.status_code == 403
    assert view.status_code == 200
    html = view.content.decode()
    assert f'name="{field}"' not in html
    assert 'name="_save"' not in html
    assert f'<div class="readonly">{getattr(obj, field)}</div>' in html
    assert model.objects.values().get(pk=obj.pk) == before


@pytest.mark.parametrize("model", [LedgerEntry, Hold], ids=["ledger-entry", "hold"])
def test_the_bulk_delete_action_is_not_offered_on_ledgers_and_holds(staff_client, model):
    html = staff_client.get(url_of(model, "changelist")).content.decode()

    assert "delete_selected" not in html


def test_adjust_balance_moves_it_either_way_under_the_staff_name(staff_client, staff_user):
    wallet = WalletFactory(user__email="ann@example.com")
    credit_grant(wallet=wallet, amount_micros=10_000_000, reason="start")
    page = open_grant_page(staff_client, wallet, action="adjust_balance")
    assert "Wallet of ann@example.com (balance $10.00)" in page.content.decode()

    response = submit_grant(staff_client, page, amount_usd="-2.5", reason="double-billed call")

    assert messages_of(response) == ["Adjusted 1 wallet by -$2.50."]
    entry = LedgerEntry.objects.get(kind="adjustment")
    assert (entry.amount_micros, entry.balance_after_micros) == (-2_500_000, 7_500_000)
    assert (entry.description, entry.created_by) == ("double-billed call", staff_user)
    resubmitted = submit_grant(staff_client, page, amount_usd="-2.5", reason="double-billed call")
    assert resubmitted.status_code == 302
    assert LedgerEntry.objects.filter(kind="adjustment").count() == 1


def test_an_adjustment_cannot_take_what_calls_in_flight_hold(staff_client):
    wallet = WalletFactory(user__email="ann@example.com")
    credit_grant(wallet=wallet, amount_micros=3_000_000, reason="start")
    HoldFactory(wallet=wallet, amount_micros=2_000_000)
    Wallet.objects.filter(pk=wallet.pk).update(held_micros=2_000_000)
    page = open_grant_page(staff_client, wallet, action="adjust_balance")

    response = submit_grant(staff_client, page, amount_usd="-1.5", reason="too much")

    assert messages_of(response) == [
        "Wallet of ann@example.com: insufficient balance for this debit"
    ]
    wallet.refresh_from_db()
    assert wallet.balance_micros == 3_000_000
