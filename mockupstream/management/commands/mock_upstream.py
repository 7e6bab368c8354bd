import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from mockupstream import server
from tokenbyte.commands import OperatorCommand, non_negative_int


def port_number(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from exc
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535: {value}")
    return number


class Command(OperatorCommand):
    help = (
        "Serve the mock LLM upstream (OpenAI, Anthropic and Gemini wire formats) on a local "
        "port until interrupted. Standalone equivalent: python -m mockupstream.server."
    )
    requires_system_checks = []  # a server that never touches the database starts at once

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--port", type=port_number, required=True, help="1-65535")
        parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
        parser.add_argument(
            "--latency-ms",
            type=non_negative_int,
            default=0,
            help="delay before each response's headers (header x-mock-latency-ms overrides it)",
        )
        parser.add_argument(
            "--chunk-delay-ms",
            type=non_negative_int,
            default=0,
            help="delay between stream events (header x-mock-chunk-delay-ms overrides it)",
        )

    def execute(self, *args: Any, **options: Any) -> Any:
        # Skip OperatorCommand's transaction: holding one open for the life of a server would
        # pin a database connection for nothing.
        return BaseCommand.execute(self, *args, **options)

    def handle(self, *args: Any, **options: Any) -> None:
        # call_command() hands optional keyword values to handle() unparsed: check them all here.
        checked: dict[str, int] = {}
        for flag, parse in PARSERS.items():
            value = options[flag.removeprefix("--").replace("-", "_")]
            try:
                checked[flag] = parse(str(value))
            except argparse.ArgumentTypeError as exc:
                raise CommandError(f"argument {flag}: {exc}") from exc
        host: str = options["host"]
        port = checked["--port"]

        def announce(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        try:
            server.run(
                host,
                port,
                checked["--latency-ms"],
                checked["--chunk-delay-ms"],
                announce=announce,
            )
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {host}:{port}: {server.describe_os_error(exc)}"
            ) from exc
        self.stdout.write("Mock upstream stopped.")


PARSERS = {
    "--port": port_number,
    "--latency-ms": non_negative_int,
    "--chunk-delay-ms": non_negative_int,
}
