from django.core.management.base import CommandError

from accounts.models import User
from billing.services import credit_grant, wallet_get_or_create
from tokenbyte.commands import OperatorCommand, usd
from tokenbyte.money import format_usd


class Command(OperatorCommand):
    help = "Grant credit to a user's wallet: one ledger entry and the balance, atomically."

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True)
        parser.add_argument("--amount", required=True, type=usd, help="USD, e.g. 10 or 2.50")
        parser.add_argument("--reason", required=True)

    def handle(self, *args, **options):
        user = User.objects.filter(email__iexact=options["email"].strip()).first()
        if user is None:
            raise CommandError(f"no user with email {options['email']!r}")
        wallet = wallet_get_or_create(user=user)
        entry = credit_grant(
            wallet=wallet, amount_micros=options["amount"], reason=options["reason"]
        )
        self.stdout.write(
            f"Granted {format_usd(entry.amount_micros)} to {user.email}; "
            f"balance {format_usd(entry.balance_after_micros)}."
        )
