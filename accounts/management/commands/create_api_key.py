from django.core.management.base import CommandError

from accounts.models import QuotaReset, TokenGroup
from accounts.services import api_token_create, user_get_or_create
from tokenbyte.commands import OperatorCommand, comma_list, iso_datetime, non_negative_int, usd


class Command(OperatorCommand):
    help = "Create an API key (creating the user if missing) and print it once on stdout."

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--models", type=comma_list, default=[], help="allowlist a,b")
        parser.add_argument("--rpm", type=non_negative_int)
        parser.add_argument("--tpm", type=non_negative_int)
        parser.add_argument("--rpd", type=non_negative_int)
        parser.add_argument("--quota-tokens", type=non_negative_int)
        parser.add_argument("--quota-reset", choices=QuotaReset.values, default=QuotaReset.MANUAL)
        parser.add_argument("--max-cost-per-request", type=usd, help="USD")
        parser.add_argument("--credit-limit", type=usd, help="USD")
        parser.add_argument("--expires", type=iso_datetime, help="ISO-8601")
        parser.add_argument("--group", help="name of one of the user's token groups")
        parser.add_argument("--ips", type=comma_list, default=[], help="CIDR allowlist")

    def handle(self, *args, **options):
        owner, created = user_get_or_create(email=options["email"])
        group = None
        if options["group"]:
            group = TokenGroup.objects.filter(owner=owner, name=options["group"]).first()
            if group is None:
                raise CommandError(
                    f"{owner.email} has no group named {options['group']!r} (see create_group)"
                )
        token, key = api_token_create(
            owner=owner,
            name=options["name"],
            group=group,
            allowed_models=options["models"],
            allowed_ips=options["ips"],
            rpm=options["rpm"],
            tpm=options["tpm"],
            rpd=options["rpd"],
            quota_tokens=options["quota_tokens"],
            quota_reset=options["quota_reset"],
            max_cost_per_request_micros=options["max_cost_per_request"],
            credit_limit_micros=options["credit_limit"],
            expires_at=options["expires"],
        )
        who = f"new user {owner.email}" if created else owner.email
        self.stderr.write(
            f"Created key {token.name!r} ({token.prefix}…) for {who}. "
            "It is shown once, below; store it now."
        )
        self.stdout.write(key)
