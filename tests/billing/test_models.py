import pytest
from django.db import IntegrityError, connection, transaction

from billing.models import LedgerEntry, Wallet
from billing.services import credit_grant, ledger_post
from tests.factories import UserFactory, WalletFactory
from tokenbyte.errors import ApplicationError

pytestmark = pytest.mark.django_db


def test_a_wallet_balance_can_never_be_negative():
    wallet = WalletFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Wallet.objects.filter(pk=wallet.pk).update(balance_micros=-1)


def test_holds_can_never_exceed_the_balance():
    wallet = WalletFactory(balance_micros=5)
    with pytest.raises(IntegrityError), transaction.atomic():
        Wallet.objects.filter(pk=wallet.pk).update(held_micros=6)


def test_a_wallet_has_exactly_one_owner():
    with pytest.raises(IntegrityError), transaction.atomic():
        Wallet.objects.create()


def test_ledger_idempotency_keys_are_unique():
    wallet = WalletFactory()
    LedgerEntry.objects.create(
        wallet=wallet, kind="grant", amount_micros=1, balance_after_micros=1, idempotency_key="k"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        LedgerEntry.objects.create(
            wallet=wallet,
            kind="grant",
            amount_micros=1,
            balance_after_micros=2,
            idempotency_key="k",
        )


def test_a_replayed_post_changes_nothing():
    wallet = WalletFactory(user=UserFactory())

    first, created = ledger_post(
        wallet=wallet, kind="topup", amount_micros=700, idempotency_key="stripe:evt_1"
    )
    again, created_again = ledger_post(
        wallet=wallet, kind="topup", amount_micros=700, idempotency_key="stripe:evt_1"
    )

    assert (created, created_again) == (True, False)
    assert again.pk == first.pk
    wallet.refresh_from_db()
    assert wallet.balance_micros == 700


def test_a_debit_cannot_spend_what_calls_in_flight_hold():
    wallet = WalletFactory()
    credit_grant(wallet=wallet, amount_micros=1000, reason="r")
    Wallet.objects.filter(pk=wallet.pk).update(held_micros=900)

    with pytest.raises(ApplicationError, match="insufficient balance"):
        ledger_post(wallet=wallet, kind="adjustment", amount_micros=-101, idempotency_key="adj")

    wallet.refresh_from_db()
    assert wallet.balance_micros == 1000
    assert wallet.ledger_entries.count() == 1


def test_ledger_entries_cannot_be_changed_or_deleted_even_in_sql():
    wallet = WalletFactory()
    entry = credit_grant(wallet=wallet, amount_micros=5, reason="r")

    with pytest.raises(ValueError, match="append-only"):
        entry.save()
    with pytest.raises(ValueError, match="append-only"):
        entry.delete()
    for statement in (
        "update billing_ledgerentry set amount_micros = 6",
        "delete from billing_ledgerentry",
    ):
        with (
            pytest.raises(IntegrityError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)
    entry.refresh_from_db()
    assert entry.amount_micros == 5
