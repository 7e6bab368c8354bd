import pytest
from django.core.management import CommandError, call_command

from billing.models import LedgerEntry, Wallet
from billing.selectors import wallet_ledger_sum_micros
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_it_writes_one_ledger_entry_and_moves_the_balance(capsys):
    user = UserFactory(email="a@example.com")

    call_command("grant_credit", "--email=a@example.com", "--amount=2.50", "--reason=welcome")
    call_command("grant_credit", "--email=a@example.com", "--amount=0.000001", "--reason=penny")

    wallet = Wallet.objects.get(user=user)
    assert wallet.balance_micros == 2_500_001
    entries = list(wallet.ledger_entries.order_by("id"))
    assert [(e.kind, e.amount_micros, e.balance_after_micros, e.description) for e in entries] == [
        ("grant", 2_500_000, 2_500_000, "welcome"),
        ("grant", 1, 2_500_001, "penny"),
    ]
    assert wallet_ledger_sum_micros(wallet=wallet) == wallet.balance_micros
    assert "Granted $0.000001 to a@example.com; balance $2.500001." in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--email=nobody@example.com", "--amount=1", "--reason=r"], "no user with email"),
        (["--email=a@example.com", "--amount=0", "--reason=r"], "positive amount"),
        (["--email=a@example.com", "--amount=-3", "--reason=r"], "must not be negative"),
        (["--email=a@example.com", "--amount=1.0000001", "--reason=r"], "at most 6 decimals"),
        (["--email=a@example.com", "--amount=1", "--reason= "], "needs a reason"),
        (["--email=a@example.com", "--amount=1"], "--reason"),
    ],
)
def test_it_refuses_bad_arguments_and_writes_nothing(args, message):
    UserFactory(email="a@example.com")

    with pytest.raises(CommandError, match=message):
        call_command("grant_credit", *args)

    assert not LedgerEntry.objects.exists()
    assert not Wallet.objects.filter(balance_micros__gt=0).exists()


def test_a_bad_amount_exits_1_with_one_line_on_stderr(manage):
    UserFactory(email="a@example.com")

    result = manage("grant_credit", "--email=a@example.com", "--amount=ten", "--reason=r")

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: argument --amount: not a USD amount: 'ten'"
    ]
    assert not LedgerEntry.objects.exists()
