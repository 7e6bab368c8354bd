from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command

from accounts.models import ApiToken, User
from accounts.services import api_key_digest
from tests.factories import ModelFactory, TokenGroupFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_it_creates_the_user_and_prints_the_key_once(capsys):
    call_command("create_api_key", "--email=New@Example.com", "--name=ci")

    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("sk-")
    assert len(key) == 51
    token = ApiToken.objects.get()
    assert token.owner.email == "new@example.com"
    assert token.digest == api_key_digest(key)
    assert token.prefix == key[:11]
    assert token.status == "enabled"
    assert "shown once" in err
    # Only the digest and the prefix are stored: the key appears in no column.
    assert key not in repr(ApiToken.objects.values().get())


def test_it_sets_every_limit():
    owner = UserFactory(email="ops@example.com")
    TokenGroupFactory(owner=owner, name="team-a")
    ModelFactory(model_id="gpt-4o")
    ModelFactory(model_id="gpt-4o-mini")

    call_command(
        "create_api_key",
        "--email=ops@example.com",
        "--name=prod",
        "--models=gpt-4o,gpt-4o-mini",
        "--rpm=3",
        "--tpm=1000",
        "--rpd=100",
        "--quota-tokens=5000",
        "--quota-reset=daily",
        "--max-cost-per-request=0.25",
        "--credit-limit=12.5",
        "--expires=2099-01-02T03:04:05+00:00",
        "--group=team-a",
        "--ips=10.0.0.0/8,192.168.1.7",
    )

    token = ApiToken.objects.get(name="prod")
    assert token.owner == owner
    assert token.allowed_models == ["gpt-4o", "gpt-4o-mini"]
    assert (token.rpm, token.tpm, token.rpd) == (3, 1000, 100)
    assert (token.quota_tokens, token.quota_reset) == (5000, "daily")
    assert token.max_cost_per_request_micros == 250_000
    assert token.credit_limit_micros == 12_500_000
    assert token.expires_at == datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert token.group.name == "team-a"
    assert token.allowed_ips == ["10.0.0.0/8", "192.168.1.7/32"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models=unknown-model"], "unknown model(s): unknown-model"),
        (["--ips=not-an-ip"], "not an IP address or CIDR range: 'not-an-ip'"),
        (["--rpm=-1"], "must not be negative"),
        (["--rpm=many"], "not a whole number"),
        (["--max-cost-per-request=abc"], "not a USD amount"),
        (["--expires=tomorrow"], "not an ISO-8601 date or time"),
        (["--expires=2001-01-01"], "the expiry must be in the future"),
        (["--quota-reset=hourly"], "invalid choice"),
        (["--group=nope"], "has no group named 'nope'"),
    ],
)
def test_it_refuses_bad_arguments_and_writes_nothing(args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("create_api_key", "--email=fresh@example.com", "--name=k", *args)

    # Not even the user it would have created.
    assert not User.objects.exists()
    assert not ApiToken.objects.exists()


def test_a_bad_argument_exits_1_with_one_line_on_stderr_and_nothing_on_stdout(manage):
    result = manage("create_api_key", "--email=x@example.com", "--name=k", "--models=nope")

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == ["error: unknown model(s): nope"]
    assert not User.objects.exists()


def test_the_printed_key_is_the_only_stdout(manage):
    result = manage("create_api_key", "--email=x@example.com", "--name=k")

    assert result.returncode == 0
    key = result.stdout.strip()
    assert ApiToken.objects.get().digest == api_key_digest(key)
