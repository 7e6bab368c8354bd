import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from catalog.models import Channel
from tests.factories import ModelFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def models():
    return [ModelFactory(model_id="gpt-4o"), ModelFactory(model_id="gpt-4o-mini")]


def test_it_adds_a_channel_with_mapping_priority_and_weight(models, capsys):
    call_command(
        "add_channel",
        "--name=openai-main",
        "--type=openai",
        "--base-url=https://api.example.test/v1/",
        "--api-key=sk-upstream-secret",
        "--models=gpt-4o,gpt-4o-mini",
        "--map=gpt-4o=gpt-4o-2024-11-20",
        "--priority=5",
        "--weight=3",
    )

    channel = Channel.objects.get(name="openai-main")
    assert channel.type == "openai"
    assert channel.base_url == "https://api.example.test/v1"
    assert channel.api_key == "sk-upstream-secret"
    assert sorted(m.model_id for m in channel.served_models.all()) == ["gpt-4o", "gpt-4o-mini"]
    assert channel.model_mapping == {"gpt-4o": "gpt-4o-2024-11-20"}
    assert channel.upstream_model("gpt-4o") == "gpt-4o-2024-11-20"
    assert channel.upstream_model("gpt-4o-mini") == "gpt-4o-mini"
    assert (channel.priority, channel.weight, channel.status) == (5, 3, "enabled")
    assert "serving gpt-4o, gpt-4o-mini" in capsys.readouterr().out


def test_it_stores_the_upstream_key_encrypted(models):
    call_command(
        "add_channel",
        "--name=c",
        "--type=openai",
        "--base-url=https://api.example.test/v1",
        "--api-key=sk-upstream-secret",
        "--models=gpt-4o",
    )

    with connection.cursor() as cursor:
        cursor.execute("select api_key from catalog_channel where name = 'c'")
        stored = cursor.fetchone()[0]
    assert "sk-upstream-secret" not in stored
    assert stored.startswith("gAAAAA")  # a Fernet token


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--type=openai", "--models=nope"], "unknown model(s): nope"),
        (["--type=carrier-pigeon", "--models=gpt-4o"], "invalid choice"),
        (["--type=openai", "--models=gpt-4o", "--base-url=ftp://x"], "not an http(s) URL"),
        (["--type=openai", "--models=gpt-4o", "--map=gpt-4o"], "public=upstream"),
        (["--type=openai", "--models=gpt-4o", "--map=other=x"], "does not serve: other"),
        (["--type=openai", "--models=gpt-4o", "--weight=0"], "weight must be at least 1"),
        (["--type=openai", "--models=gpt-4o", "--priority=high"], "invalid int value"),
    ],
)
def test_it_refuses_bad_arguments_and_writes_nothing(models, args, message):
    base = ["--name=c", "--base-url=https://api.example.test/v1"]
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("add_channel", *base, *args)

    assert Channel.objects.count() == 0


def test_it_refuses_a_duplicate_name(models):
    args = ["--name=c", "--type=mock", "--base-url=http://127.0.0.1:8001/v1", "--models=gpt-4o"]
    call_command("add_channel", *args)
    with pytest.raises(CommandError, match="already exists"):
        call_command("add_channel", *args)
    assert Channel.objects.count() == 1


def test_a_bad_type_exits_1_with_one_line_on_stderr(manage):
    result = manage(
        "add_channel", "--name=c", "--type=pigeon", "--base-url=http://x/v1", "--models=a"
    )

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'pigeon'" in result.stderr
    assert Channel.objects.count() == 0
