from django.core.management.base import CommandError

from accounts.models import ApiToken, TokenGroup, User
from billing.services import quota_reset, quota_reset_for_owner
from tokenbyte.commands import OperatorCommand


class Command(OperatorCommand):
    help = (
        "Reset token quotas now: one key, one group, or every key and group of a user. "
        "Calls in flight keep what they hold; scheduled resets stay as they are."
    )

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--key-id", type=int, help="id of an API key")
        which.add_argument("--group-id", type=int, help="id of a token group")
        which.add_argument("--email", help="every key and group of this user")

    def handle(self, *args, **options):
        if options["email"]:
            email = options["email"].strip()
            owner = User.objects.filter(email__iexact=email).first()
            if owner is None:
                raise CommandError(f"no user with email {email}")
            keys, groups = quota_reset_for_owner(owner=owner)
            self.stdout.write(
                f"Reset the token quota of {keys} key(s) and {groups} group(s) of {owner.email}."
            )
            return
        if options["key_id"] is not None:
            model, pk, noun = ApiToken, options["key_id"], "key"
        else:
            model, pk, noun = TokenGroup, options["group_id"], "group"
        obj = model.objects.filter(pk=pk).first()
        if obj is None:
            raise CommandError(f"no {noun} with id {pk}")
        if obj.quota_tokens is None:
            raise CommandError(f"{noun} {obj.name!r} (id {pk}) has no token quota")
        quota_reset(obj=obj)
        self.stdout.write(f"Reset the token quota of {noun} {obj.name!r} (id {pk}).")
