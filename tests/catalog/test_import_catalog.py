import json

import pytest
from django.core.management import CommandError, call_command

from catalog.models import Model, Provider
from catalog.selectors import default_catalog

pytestmark = pytest.mark.django_db


def write_catalog(tmp_path, models):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": models}))
    return path


ACME = {
    "id": "acme-large",
    "provider": "openai",
    "display_name": "Acme Large",
    "context_length": 128000,
    "max_output_tokens": 16384,
    "call_type": "chat",
    "input_per_mtok": "2.50",
    "output_per_mtok": "10.00",
    "cached_input_per_mtok": "1.25",
    "capabilities": ["streaming", "tools"],
}


def test_it_loads_models_with_prices_in_micro_usd(tmp_path, capsys):
    call_command("import_catalog", str(write_catalog(tmp_path, [ACME])))

    model = Model.objects.get(model_id="acme-large")
    assert model.display_name == "Acme Large"
    assert model.provider.slug == "openai"
    assert model.context_length == 128000
    assert model.max_output_tokens == 16384
    assert model.call_type == "chat"
    assert model.input_price_micros_per_mtok == 2_500_000
    assert model.output_price_micros_per_mtok == 10_000_000
    assert model.cached_input_price_micros_per_mtok == 1_250_000
    assert model.cache_write_price_micros_per_mtok is None  # not given: the input price
    assert model.capabilities == ["streaming", "tools"]
    assert "1 models created, 0 updated" in capsys.readouterr().out


def test_it_loads_a_cache_write_price(tmp_path):
    claude = {**ACME, "id": "claude-x", "provider": "anthropic", "cache_write_per_mtok": "3.125"}

    call_command("import_catalog", str(write_catalog(tmp_path, [claude])))

    assert Model.objects.get(model_id="claude-x").cache_write_price_micros_per_mtok == 3_125_000


def test_it_updates_models_in_place_on_reimport(tmp_path):
    call_command("import_catalog", str(write_catalog(tmp_path, [ACME])))
    first_pk = Model.objects.get(model_id="acme-large").pk

    call_command("import_catalog", str(write_catalog(tmp_path, [{**ACME, "input_per_mtok": "3"}])))

    model = Model.objects.get(model_id="acme-large")
    assert model.pk == first_pk
    assert model.input_price_micros_per_mtok == 3_000_000
    assert Model.objects.count() == 1


def test_it_loads_the_shipped_catalog_without_a_file():
    call_command("import_catalog")

    ids = set(Model.objects.values_list("model_id", flat=True))
    assert ids == {m["id"] for m in default_catalog()["models"]}
    families = {"gpt-", "claude-", "gemini-", "deepseek-", "qwen", "kimi-"}
    assert all(any(i.startswith(f) for i in ids) for f in families)
    assert set(Provider.objects.values_list("slug", flat=True)) >= {
        "openai",
        "anthropic",
        "google",
        "deepseek",
        "qwen",
        "moonshot",
    }
    image = Model.objects.get(model_id="gpt-image-1")
    assert (image.price_unit, image.unit_price_micros) == ("image", 40_000)


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([{**ACME, "input_per_mtok": "abc"}], "not a USD amount"),
        ([{**ACME, "input_per_mtok": "0.0000001"}], "at most 6 decimals"),
        ([{**ACME, "input_per_mtok": "-1"}], "must not be negative"),
        ([{**ACME, "call_type": "video"}], "call_type must be one of"),
        ([{k: v for k, v in ACME.items() if k != "provider"}], "provider is required"),
        ([{**ACME, "colour": "red"}], "unknown field(s): colour"),
        ([ACME, ACME], "appears twice"),
        ([{**ACME, "context_length": -5}], "context_length must be a non-negative integer"),
    ],
)
def test_it_refuses_a_bad_catalog_and_writes_nothing(tmp_path, models, message):
    good = {**ACME, "id": "good-model"}
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("import_catalog", str(write_catalog(tmp_path, [good, *models])))

    assert Model.objects.count() == 0
    assert Provider.objects.count() == 0


def test_it_refuses_a_missing_file(tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_catalog", str(tmp_path / "nope.json"))


def test_it_refuses_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(CommandError, match="is not valid JSON"):
        call_command("import_catalog", str(path))


def test_a_bad_file_exits_1_with_one_line_on_stderr(manage, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"models": [{"id": "x"}]}')

    result = manage("import_catalog", str(path))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: models[0]: provider is required"]
    assert Model.objects.count() == 0
