from accounts.models import QuotaReset
from accounts.services import token_group_create, user_get_or_create
from tokenbyte.commands import OperatorCommand, non_negative_int, usd


class Command(OperatorCommand):
    help = "Create a token group: keys in it share one token quota and one credit limit."

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True, help="owner; created if missing")
        parser.add_argument("--name", required=True)
        parser.add_argument("--quota-tokens", type=non_negative_int)
        parser.add_argument("--quota-reset", choices=QuotaReset.values, default=QuotaReset.MANUAL)
        parser.add_argument("--credit-limit", type=usd, help="USD")
        parser.add_argument("--rpm", type=non_negative_int)
        parser.add_argument("--tpm", type=non_negative_int)
        parser.add_argument("--rpd", type=non_negative_int)

    def handle(self, *args, **options):
        owner, _ = user_get_or_create(email=options["email"])
        group = token_group_create(
            owner=owner,
            name=options["name"],
            quota_tokens=options["quota_tokens"],
            quota_reset=options["quota_reset"],
            credit_limit_micros=options["credit_limit"],
            rpm=options["rpm"],
            tpm=options["tpm"],
            rpd=options["rpd"],
        )
        self.stdout.write(f"Created group {group.name!r} (id {group.pk}) for {owner.email}.")
