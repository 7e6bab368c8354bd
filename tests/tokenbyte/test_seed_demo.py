import re

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from accounts.models import ApiToken, Organization, User
from accounts.services import api_key_digest
from billing.models import LedgerEntry
from billing.selectors import wallet_ledger_sum_micros
from catalog.models import Channel, Model
from catalog.selectors import default_catalog

pytestmark = pytest.mark.django_db


def seed(capsys) -> tuple[str, str]:
    call_command("seed_demo")
    out = capsys.readouterr().out
    password = re.search(r"password: (\S+)", out).group(1)
    key = re.search(r"Demo API key:\s+(sk-\S+)", out).group(1)
    return password, key


def test_it_seeds_a_working_demo(capsys):
    password, key = seed(capsys)

    user = User.objects.get(email="demo@example.com")
    assert authenticate(email="demo@example.com", password=password) == user
    assert user.wallet.balance_micros == 10_000_000
    token = ApiToken.objects.get(owner=user, status="enabled")
    assert token.digest == api_key_digest(key)
    channel = Channel.objects.get(name="Demo mock upstream")
    assert channel.type == "mock"
    assert {m.model_id for m in channel.served_models.all()} == {
        "demo-chat", "demo-embedding", "demo-image", "demo-tts", "demo-whisper", "demo-moderation",
    }  # fmt: skip
    catalog_ids = {m["id"] for m in default_catalog()["models"]}
    assert catalog_ids <= set(Model.objects.values_list("model_id", flat=True))
    # The local operator can open the staff admin with the printed TOTP entry.
    assert user.is_staff
    assert user.totpdevice_set.filter(confirmed=True).count() == 1


def test_running_it_twice_is_safe(capsys):
    _, first_key = seed(capsys)
    Model.objects.filter(model_id="gpt-4o").update(input_price_micros_per_mtok=1)

    password, second_key = seed(capsys)

    user = User.objects.get(email="demo@example.com")
    assert authenticate(email="demo@example.com", password=password) == user
    assert user.wallet.balance_micros == 10_000_000
    assert LedgerEntry.objects.filter(wallet=user.wallet).count() == 1
    assert Channel.objects.count() == 1
    assert user.totpdevice_set.count() == 1
    # Staff edits to prices survive; the old key is revoked, the new one works.
    assert Model.objects.get(model_id="gpt-4o").input_price_micros_per_mtok == 1
    assert ApiToken.objects.get(digest=api_key_digest(first_key)).status == "revoked"
    assert ApiToken.objects.get(digest=api_key_digest(second_key)).status == "enabled"
    # One demo organization, owned by the demo user, with its own credit granted once.
    org = Organization.objects.get()
    assert (org.name, org.memberships.get().user, org.memberships.get().role) == (
        "Demo Team", user, "owner"
    )  # fmt: skip
    assert org.wallet.balance_micros == 10_000_000 == wallet_ledger_sum_micros(wallet=org.wallet)


def test_a_demo_seeded_before_the_media_models_gets_them_on_its_channel(capsys):
    seed(capsys)
    channel = Channel.objects.get(name="Demo mock upstream")
    channel.served_models.remove(*Model.objects.filter(model_id__in=["demo-image", "demo-tts"]))

    seed(capsys)

    served = set(channel.served_models.values_list("model_id", flat=True))
    assert {"demo-image", "demo-tts", "demo-chat"} <= served
