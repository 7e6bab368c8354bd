from django.core.management.base import CommandError

from catalog.models import Channel
from catalog.services import channel_create
from tokenbyte.commands import OperatorCommand, comma_list


def mapping(value: str) -> dict[str, str]:
    pairs = {}
    for item in comma_list(value):
        public, sep, upstream = item.partition("=")
        if not sep or not public.strip() or not upstream.strip():
            raise CommandError(f"--map entries look like public=upstream, not {item!r}")
        pairs[public.strip()] = upstream.strip()
    return pairs


class Command(OperatorCommand):
    help = "Add an upstream channel that serves some models."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--type", required=True, choices=Channel.Type.values)
        parser.add_argument("--base-url", required=True, help="e.g. https://api.openai.com/v1")
        parser.add_argument("--api-key", default="", help="upstream key, stored encrypted")
        parser.add_argument("--models", required=True, type=comma_list, help="a,b,c")
        parser.add_argument("--map", default="", help="public=upstream,… for renamed models")
        parser.add_argument("--priority", type=int, default=0)
        parser.add_argument("--weight", type=int, default=1)

    def handle(self, *args, **options):
        channel = channel_create(
            name=options["name"],
            type=options["type"],
            base_url=options["base_url"],
            api_key=options["api_key"],
            model_ids=options["models"],
            model_mapping=mapping(options["map"]),
            priority=options["priority"],
            weight=options["weight"],
        )
        served = ", ".join(sorted(m.model_id for m in channel.served_models.all()))
        self.stdout.write(f"Added channel {channel.name!r} (id {channel.pk}) serving {served}.")
