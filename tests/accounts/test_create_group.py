import pytest
from django.core.management import CommandError, call_command

from accounts.models import TokenGroup, User
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_it_creates_a_group_with_shared_limits(capsys):
    call_command(
        "create_group",
        "--email=lead@example.com",
        "--name=team-a",
        "--quota-tokens=100000",
        "--credit-limit=50",
        "--rpm=60",
        "--tpm=90000",
        "--rpd=5000",
    )

    group = TokenGroup.objects.get()
    assert group.owner.email == "lead@example.com"
    assert group.name == "team-a"
    assert group.quota_tokens == 100_000
    assert group.credit_limit_micros == 50_000_000
    assert (group.rpm, group.tpm, group.rpd) == (60, 90_000, 5000)
    assert "Created group 'team-a'" in capsys.readouterr().out


def test_it_refuses_a_second_group_with_the_same_name():
    owner = UserFactory(email="lead@example.com")
    call_command("create_group", "--email=lead@example.com", "--name=team-a")

    with pytest.raises(CommandError, match="already exists"):
        call_command("create_group", "--email=lead@example.com", "--name=team-a")

    assert TokenGroup.objects.filter(owner=owner).count() == 1


@pytest.mark.parametrize(
    "args",
    [["--credit-limit=lots"], ["--tpm=-5"], ["--name=   "], ["--quota-reset=yearly"]],
)
def test_it_refuses_bad_arguments_and_writes_nothing(args):
    with pytest.raises(CommandError):
        call_command("create_group", "--email=lead@example.com", "--name=team-a", *args)

    assert not TokenGroup.objects.exists()
    assert not User.objects.exists()
