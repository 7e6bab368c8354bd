import argparse
from collections.abc import Iterable
from typing import Any

import stripe
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from fakestripe import server
from tokenbyte.commands import OperatorCommand

DEFAULT_WEBHOOK_URL = "http://127.0.0.1:8000/billing/stripe/webhook/"
DEFAULT_RETRY_DELAYS = "1,5,30,120"


def port_number(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from exc
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535: {value}")
    return number


def webhook_url(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value


def retry_delays(value: str | Iterable[float]) -> tuple[float, ...]:
    if isinstance(value, str):
        return server.parse_retry_delays(value)
    return server.parse_retry_delays(",".join(str(delay) for delay in value))


class Command(OperatorCommand):
    help = (
        "Serve the fake Stripe server (Checkout Sessions and refunds API, the hosted checkout "
        "page, signed webhooks with retries) on a local port until interrupted. The test "
        "controls under /_fake/ are described in fakestripe/server.py."
    )
    requires_system_checks = []  # a server that never touches the database starts at once

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
        parser.add_argument(
            "--port", type=port_number, default=server.DEFAULT_PORT, help="default: 12111"
        )
        parser.add_argument(
            "--webhook-url",
            type=webhook_url,
            default=DEFAULT_WEBHOOK_URL,
            help=f'where events are POSTed (default: {DEFAULT_WEBHOOK_URL}; "" sends none)',
        )
        parser.add_argument(
            "--webhook-secret",
            default=None,
            help="signing secret of the events (default: settings.STRIPE_WEBHOOK_SECRET)",
        )
        parser.add_argument(
            "--api-key",
            default=None,
            help="the one secret key the API accepts (default: settings.STRIPE_SECRET_KEY)",
        )
        parser.add_argument(
            "--retry-delays",
            default=DEFAULT_RETRY_DELAYS,
            help="seconds before each retry of a failed delivery, comma separated "
            f"(default: {DEFAULT_RETRY_DELAYS}: one attempt and four retries)",
        )

    def execute(self, *args: Any, **options: Any) -> Any:
        # Skip OperatorCommand's transaction: holding one open for the life of a server would
        # pin a database connection for nothing.
        return BaseCommand.execute(self, *args, **options)

    def handle(self, *args: Any, **options: Any) -> None:
        # call_command() hands keyword values to handle() unparsed: check them all here.
        try:
            port = port_number(str(options["port"]))
            url = webhook_url(options["webhook_url"] or "")
            delays = retry_delays(options["retry_delays"])
        except argparse.ArgumentTypeError as exc:
            raise CommandError(str(exc)) from exc
        host: str = options["host"]
        secret = options["webhook_secret"] or settings.STRIPE_WEBHOOK_SECRET
        api_key = options["api_key"] or settings.STRIPE_SECRET_KEY

        def announce(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        try:
            server.run(
                host,
                port,
                api_key=api_key,
                webhook_url=url or None,
                webhook_secret=secret,
                retry_delays=delays,
                api_version=stripe.api_version,
                announce=announce,
            )
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {host}:{port}: {server.describe_os_error(exc)}"
            ) from exc
        self.stdout.write("Fake Stripe stopped.")
