import json
from pathlib import Path

from django.core.management.base import CommandError

from catalog.selectors import DEFAULT_CATALOG_PATH
from catalog.services import catalog_import
from tokenbyte.commands import OperatorCommand


class Command(OperatorCommand):
    help = "Load models and prices from a JSON catalog (default: the shipped catalog)."

    def add_arguments(self, parser):
        parser.add_argument("file", nargs="?", help="catalog JSON file; omit for the default")

    def handle(self, *args, file: str | None, **options):
        path = Path(file) if file else DEFAULT_CATALOG_PATH
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path} is not valid JSON: {exc}") from exc
        created, updated = catalog_import(data=data)
        self.stdout.write(f"Imported {path.name}: {created} models created, {updated} updated.")
