"""Tokens, groups and access tokens in a real browser on the whole site (console and relay in one
ASGI process): a key made in the console works with the OpenAI SDK and stops within a second of
being disabled there."""

import time

import httpx
import openai
import pytest
from playwright.sync_api import expect

from accounts.models import ApiToken, TokenGroup
from accounts.services import api_token_create
from billing.services import credit_grant, wallet_get_or_create
from tests.e2e.helpers import PASSWORD, shoot
from tests.factories import ModelFactory
from tests.relay.conftest import add_channel, mock_upstream, wait_for  # noqa: F401
from tokenbyte.money import format_usd, usd_to_micros
from usage.models import RequestLog, UsageRollup

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def customer(verified_user, mock_upstream):  # noqa: F811
    """A verified user with $10 of credit and a model served by the mock upstream."""
    wallet = wallet_get_or_create(user=verified_user)
    credit_grant(wallet=wallet, amount_micros=usd_to_micros("10"), reason="test credit")
    ModelFactory(
        model_id="gpt-test",
        display_name="GPT Test",
        input_price_micros_per_mtok=2_500_000,
        output_price_micros_per_mtok=10_000_000,
        max_output_tokens=1000,
        context_length=16000,
    )
    add_channel(mock_upstream, "mock", "gpt-test")
    return verified_user


def sign_in(page, server, user) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{server.url}/dashboard/")


def sdk(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.relay_url, api_key=key, max_retries=0, timeout=15)


def test_a_key_made_in_the_console_works_with_the_sdk_and_stops_when_disabled(
    asgi_page, asgi_server, customer
):
    page = asgi_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=asgi_server.url)
    sign_in(page, asgi_server, customer)

    page.goto("/tokens/")
    expect(page.get_by_text("No API keys yet.")).to_be_visible()
    page.get_by_role("link", name="New key").click()
    page.get_by_label("Name").fill("production-web")
    page.get_by_label("gpt-test · OpenAI").check()
    page.get_by_label("Credit limit (USD)").fill("5")
    page.get_by_label("Requests per minute (RPM)").fill("60")
    page.get_by_label("Token quota").fill("1000000")
    page.get_by_label("Quota resets").select_option("monthly")
    shoot(page, "token-new")
    page.get_by_role("button", name="Create key").click()

    expect(page.get_by_role("alert")).to_contain_text("This is the only time the key is shown.")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()
    key = page.evaluate("navigator.clipboard.readText()")
    assert key == page.get_by_label("Your API key").input_value()
    assert key.startswith("sk-")
    shoot(page, "token-created")
    token = ApiToken.objects.get(owner=customer)
    assert (token.name, token.rpm, token.credit_limit_micros) == ("production-web", 60, 5_000_000)
    assert token.allowed_models == ["gpt-test"]

    client = sdk(asgi_server, key)
    reply = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "Hello"}]
    )
    assert reply.choices[0].message.content

    wait_for(lambda: UsageRollup.objects.filter(key_id=token.pk).exists(), message="the rollup")
    page.goto("/tokens/")
    row = page.locator(f"#token-{token.pk}")
    expect(row).to_contain_text("production-web")
    expect(row.locator("[data-month-requests]")).to_have_text("1")
    log = RequestLog.objects.get(api_token=token)
    expect(row.locator("[data-month-cost]")).to_have_text(format_usd(log.cost_micros))
    expect(row).to_contain_text("Enabled")
    shoot(page, "tokens")

    row.get_by_role("button", name="Disable production-web").click()
    expect(row).to_contain_text("Disabled")
    disabled_at = time.monotonic()
    while True:
        try:
            client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "Hi"}]
            )
        except openai.AuthenticationError as exc:
            assert exc.status_code == 401
            assert exc.body["code"] == "invalid_api_key"
            break
        assert time.monotonic() - disabled_at < 1.5, "the relay still accepts the disabled key"
        time.sleep(0.05)

    # Enabled again from the console, the same key works again.
    page.locator(f"#token-{token.pk}").get_by_role("button", name="Enable production-web").click()
    expect(page.locator(f"#token-{token.pk}")).to_contain_text("Enabled")
    time.sleep(1.1)
    assert client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "Again"}]
    ).choices


def test_the_owner_edits_batch_revokes_and_groups_keys(asgi_page, asgi_server, customer):
    page = asgi_page
    keys = {}
    for name in ("web", "ci", "staging"):
        token, secret = api_token_create(owner=customer, name=name)
        keys[name] = (token, secret)
    sign_in(page, asgi_server, customer)

    # Edit: a tight rate limit and an IP allowlist that excludes the caller.
    page.goto("/tokens/")
    page.get_by_role("link", name="Edit staging").click()
    page.get_by_label("IP allowlist").fill("198.51.100.0/24")
    shoot(page, "token-edit")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_text("Key staging is saved.")).to_be_visible()
    time.sleep(1.1)
    with pytest.raises(openai.PermissionDeniedError):
        sdk(asgi_server, keys["staging"][1]).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "Hi"}]
        )

    # Batch revoke: select two rows, confirm.
    page.get_by_label("Select web").check()
    page.get_by_label("Select ci").check()
    expect(page.get_by_text("2 keys selected")).to_be_visible()
    page.get_by_role("button", name="Revoke selected").click()
    expect(page.get_by_role("heading", name="Revoke 2 keys?")).to_be_visible()
    shoot(page, "tokens-batch-revoke")
    page.get_by_role("button", name="Revoke 2 keys").click()
    expect(page.get_by_text("2 keys revoked.")).to_be_visible()
    statuses = dict(ApiToken.objects.values_list("name", "status"))
    assert statuses == {"web": "revoked", "ci": "revoked", "staging": "enabled"}
    time.sleep(1.1)
    with pytest.raises(openai.AuthenticationError):
        sdk(asgi_server, keys["web"][1]).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "Hi"}]
        )

    # Groups: create one with a shared quota, move the live key into it.
    page.get_by_role("link", name="Groups").click()
    expect(page.get_by_text("No key groups yet")).to_be_visible()
    page.get_by_role("link", name="New group").click()
    page.get_by_label("Name").fill("team")
    page.get_by_label("Description").fill("The web team")
    page.get_by_label("Shared token quota").fill("100000")
    page.get_by_label("Credit limit (USD)").fill("2.5")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_text("Group team is created.")).to_be_visible()
    page.get_by_label("staging sk-").check()
    page.get_by_label("Move to").select_option(label="team")
    page.get_by_role("button", name="Move keys").click()
    expect(page.get_by_text("1 key moved into team.")).to_be_visible()
    expect(page.locator("#groups")).to_contain_text("The web team")
    shoot(page, "token-groups")
    group = TokenGroup.objects.get(owner=customer)
    assert (group.quota_tokens, group.credit_limit_micros) == (100_000, 2_500_000)
    assert ApiToken.objects.get(name="staging").group == group


def test_an_access_token_made_in_profile_reads_the_keys_api(asgi_page, asgi_server, customer):
    page = asgi_page
    api_token_create(owner=customer, name="web")
    sign_in(page, asgi_server, customer)

    page.goto("/profile/")
    section = page.locator("#access-tokens")
    section.get_by_label("Name").fill("billing-script")
    section.get_by_role("button", name="Create access token").click()
    expect(page.get_by_role("alert")).to_contain_text("this is the only time it is shown")
    secret = page.get_by_label("Your access token").input_value()
    assert secret.startswith("tbp_")
    page.locator("#access-tokens").scroll_into_view_if_needed()
    shoot(page, "profile-access-tokens")

    answer = httpx.get(
        f"{asgi_server.url}/api/keys/", headers={"Authorization": f"Bearer {secret}"}, timeout=5
    )
    assert answer.status_code == 200
    assert [k["name"] for k in answer.json()["results"]] == ["web"]

    page.goto("/profile/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke access token billing-script").click()
    expect(page.get_by_text("Access token billing-script is revoked.")).to_be_visible()
    refused = httpx.get(
        f"{asgi_server.url}/api/keys/", headers={"Authorization": f"Bearer {secret}"}, timeout=5
    )
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
