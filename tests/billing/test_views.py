from datetime import UTC, datetime

import pytest

from billing.models import TopUp
from billing.services import credit_grant, wallet_get_or_create
from tests.factories import TopUpFactory

pytestmark = pytest.mark.django_db


def test_the_wallet_shows_balance_held_and_available(owner_client, owner):
    wallet = wallet_get_or_create(user=owner)
    credit_grant(wallet=wallet, amount_micros=10_000_000, reason="Welcome credit")
    type(wallet).objects.filter(pk=wallet.pk).update(held_micros=1_500_000)

    content = owner_client.get("/wallet/").content.decode()

    assert '<dd id="wallet-balance">$10.00</dd>' in content
    assert '<dd id="wallet-held">$1.50</dd>' in content
    assert '<dd id="wallet-available">$8.50</dd>' in content


def test_the_ledger_lists_entries_newest_first_with_the_running_balance(
    owner_client, owner, outsider
):
    wallet = wallet_get_or_create(user=owner)
    credit_grant(wallet=wallet, amount_micros=5_000_000, reason="Welcome credit")
    credit_grant(wallet=wallet, amount_micros=2_500_000, reason="Compensation")
    credit_grant(
        wallet=wallet_get_or_create(user=outsider), amount_micros=1_000_000, reason="Outsider"
    )

    response = owner_client.get("/wallet/")

    rows = [
        (e.description, e.amount_micros, e.balance_after_micros)
        for e in response.context["entries"]
    ]
    assert rows == [
        ("Compensation", 2_500_000, 7_500_000),
        ("Welcome credit", 5_000_000, 5_000_000),
    ]
    content = response.content.decode()
    assert "$7.50" in content
    assert "Outsider" not in content


def test_the_wallet_lists_the_owners_top_ups(owner_client, owner, outsider):
    wallet = wallet_get_or_create(user=owner)
    TopUpFactory(
        wallet=wallet,
        amount_micros=20_000_000,
        status=TopUp.Status.PAID,
        receipt_number="TB-0001",
        paid_at=datetime(2026, 11, 20, 10, 0, tzinfo=UTC),
    )
    TopUpFactory(wallet=wallet_get_or_create(user=outsider), receipt_number="TB-OUTSIDER")

    response = owner_client.get("/wallet/")

    assert [t.receipt_number for t in response.context["topups"]] == ["TB-0001"]
    content = response.content.decode()
    for text in ["$20.00", "Paid", "TB-0001", "2026-11-20 10:00:00"]:
        assert text in content
    assert "TB-OUTSIDER" not in content


def test_a_user_without_a_wallet_sees_zero_and_empty_lists(owner_client):
    content = owner_client.get("/wallet/").content.decode()

    assert '<dd id="wallet-balance">$0.00</dd>' in content
    assert "No balance changes yet." in content
    assert "No top-ups yet." in content


def test_the_wallet_page_makes_a_bounded_number_of_queries(
    owner_client, owner, django_assert_max_num_queries
):
    wallet = wallet_get_or_create(user=owner)
    for n in range(10):
        credit_grant(wallet=wallet, amount_micros=1_000_000, reason=f"Grant {n}")
    TopUpFactory.create_batch(3, wallet=wallet)

    with django_assert_max_num_queries(6):
        response = owner_client.get("/wallet/")

    assert response.status_code == 200
