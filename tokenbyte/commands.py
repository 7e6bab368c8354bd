"""The base of the operator commands: one-line errors, exit status 1, and nothing half-written."""

import argparse
import sys
from datetime import UTC, datetime

from django.core.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    handle_default_options,
)
from django.db import transaction

from tokenbyte.errors import ApplicationError
from tokenbyte.money import MoneyError, usd_to_micros


class OperatorCommand(BaseCommand):
    """A command that runs in one transaction; any bad input is one line on stderr and exit 1.

    argparse would exit with status 2 and a usage block; operators and scripts get the same
    `error: …` line and status 1 whether the arguments or the data are wrong.
    """

    def create_parser(self, prog_name: str, subcommand: str, **kwargs) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.called_from_command_line = False  # parse errors raise CommandError
        return parser

    def run_from_argv(self, argv: list[str]) -> None:
        # BaseCommand's version lets argparse errors escape its handler; this one catches both.
        self._called_from_command_line = True
        parser = self.create_parser(argv[0], argv[1])
        try:
            options = vars(parser.parse_args(argv[2:]))
            args = options.pop("args", ())
            handle_default_options(argparse.Namespace(**options))
            self.execute(*args, **options)
        except CommandError as exc:
            self.stderr.write(f"error: {str(exc).removeprefix('Error: ')}")
            sys.exit(1)

    def execute(self, *args, **options):
        try:
            with transaction.atomic():
                return super().execute(*args, **options)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc


def usd(value: str) -> int:
    """argparse type: a USD amount as micro-USD."""
    try:
        micros = usd_to_micros(value)
    except MoneyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if micros < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return micros


def non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from exc
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return number


def iso_datetime(value: str) -> datetime:
    """argparse type: ISO-8601 date or datetime; without an offset it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 date or time: {value!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]
