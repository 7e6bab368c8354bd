import json
from pathlib import Path

DEFAULT_CATALOG_PATH = Path(__file__).with_name("default_catalog.json")


def default_catalog() -> dict:
    return json.loads(DEFAULT_CATALOG_PATH.read_text(encoding="utf-8"))
