"""The playground in a real browser, on the whole site (console and relay in one ASGI process),
in front of the mock upstream: streamed chats, comparisons, the code it writes, relay errors."""

import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest
from playwright.sync_api import expect

from accounts.models import ApiToken
from accounts.services import api_token_create
from billing.services import credit_grant, wallet_get_or_create
from tests.e2e.helpers import PASSWORD, shoot
from tests.factories import ModelFactory, ProviderFactory
from tests.relay.conftest import (  # noqa: F401  (fixtures)
    _relay_quiet,
    add_channel,
    mock,
    mock_upstream,
    wait_for,
)
from tokenbyte.money import format_usd
from usage.models import RequestLog

pytestmark = pytest.mark.timeout(120)

# Prices, micro-USD per 1M tokens. The mock answers 16 words (16 completion tokens) and counts
# ceil(characters / 4) prompt tokens.
ALPHA = {"input_price_micros_per_mtok": 2_500_000, "output_price_micros_per_mtok": 10_000_000}
BETA = {"input_price_micros_per_mtok": 1_000_000, "output_price_micros_per_mtok": 4_000_000}


@pytest.fixture
def upstream(mock):  # noqa: F811
    """The mock upstream, serving pg-alpha and pg-beta through a channel each."""
    alpha = ModelFactory(model_id="pg-alpha", display_name="Alpha", max_output_tokens=1000, **ALPHA)
    beta = ModelFactory(model_id="pg-beta", display_name="Beta", max_output_tokens=1000, **BETA)
    add_channel(mock, "pg-alpha-mock", alpha.model_id)
    add_channel(mock, "pg-beta-mock", beta.model_id)
    return mock


@pytest.fixture(autouse=True)
def no_script_errors(asgi_page):
    """Every test here also fails on an uncaught error of the page's script."""
    errors = []
    asgi_page.on("pageerror", lambda error: errors.append(str(error)))
    yield
    assert errors == []


def credit(user, micros: int) -> None:
    wallet = wallet_get_or_create(user=user)
    if micros:
        credit_grant(wallet=wallet, amount_micros=micros, reason="test credit")


def open_playground(page, server, user) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{server.url}/dashboard/")
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Playground").click()
    expect(page).to_have_url(f"{server.url}/playground/")
    expect(page.locator("[data-key-status]")).to_contain_text("playground key valid until")


def send(page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def logs_of(user, count: int) -> list[RequestLog]:
    query = RequestLog.objects.filter(user=user).order_by("created_at", "id")
    wait_for(lambda: query.count() >= count, 10, f"{count} request log(s)")
    return list(query)


def test_a_streamed_chat_shows_the_reply_token_counts_and_the_exact_cost(
    asgi_page, asgi_server, verified_user, upstream
):
    credit(verified_user, 10_000_000)
    open_playground(asgi_page, asgi_server, verified_user)
    expect(asgi_page.get_by_label("Model", exact=True)).to_have_value("pg-alpha")
    expect(asgi_page.locator("[data-model-info]")).to_contain_text(
        "OpenAI · $2.50 in / $10.00 out per 1M tokens"
    )

    send(asgi_page, "Hello there")

    reply = asgi_page.locator(".pg-assistant").first
    expect(reply.locator(".pg-text")).to_contain_text("This is a mock reply to: Hello there")
    # 3 prompt tokens at $2.50 and 16 completion tokens at $10.00 per 1M: 167.5, rounded up.
    stats = reply.locator(".pg-stats")
    expect(stats).to_contain_text("In3 tokens")
    expect(stats).to_contain_text("Out16 tokens")
    expect(stats).to_contain_text("First token")
    expect(stats).to_contain_text("Cost$0.000168")
    [log] = logs_of(verified_user, 1)
    assert (log.model_id, log.status_code, log.cost_micros, log.is_stream) == (
        "pg-alpha", 200, 168, True,
    )  # fmt: skip
    assert (log.prompt_tokens, log.completion_tokens) == (3, 16)
    assert log.token_name == "Playground"
    assert log.api_token.is_playground
    assert log.api_token.owner == verified_user
    expect(reply.get_by_role("link", name="Details in Logs")).to_have_attribute(
        "href", f"/logs/{log.request_id}/"
    )

    # The second turn carries the first as history.
    send(asgi_page, "And once more")
    expect(asgi_page.locator(".pg-assistant").nth(1).locator(".pg-stats")).to_contain_text("Cost$")
    sent = upstream.last_request["json"]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][1]["content"].startswith("This is a mock reply to: Hello there")
    assert sent["stream"] is True
    assert len(logs_of(verified_user, 2)) == 2
    # 29 prompt tokens the second time (the history): $0.000168 + $0.000233.
    expect(asgi_page.locator("[data-pane-total]")).to_have_text("2 replies · $0.000401 in all")
    assert ApiToken.objects.filter(owner=verified_user, is_playground=True).count() == 1
    shoot(asgi_page, "playground-chat")

    # A key revoked under the page (newer tabs replaced it) is renewed on the relay's 401.
    ApiToken.objects.filter(owner=verified_user).update(status="revoked")
    time.sleep(1.1)  # the relay caches a key for RELAY_KEY_CACHE_SECONDS
    send(asgi_page, "Still there")
    expect(asgi_page.locator(".pg-assistant").nth(2).locator(".pg-text")).to_contain_text(
        "This is a mock reply to: Still there"
    )
    assert ApiToken.objects.filter(owner=verified_user, status="enabled").count() == 1
    assert len(logs_of(verified_user, 3)) == 3


def test_two_models_answer_one_prompt_side_by_side_each_with_its_own_cost(
    asgi_page, asgi_server, verified_user, upstream
):
    credit(verified_user, 10_000_000)
    open_playground(asgi_page, asgi_server, verified_user)

    asgi_page.get_by_role("button", name="Compare with another model").click()
    expect(asgi_page.get_by_label("Model 1", exact=True)).to_have_value("pg-alpha")
    expect(asgi_page.get_by_label("Model 2", exact=True)).to_have_value("pg-beta")
    send(asgi_page, "Compare this")

    panes = asgi_page.locator("[data-pane]")
    expect(panes).to_have_count(2)
    for index, cost in ((0, "$0.000168"), (1, "$0.000067")):
        pane = panes.nth(index)
        expect(pane.locator(".pg-assistant .pg-text")).to_contain_text(
            "This is a mock reply to: Compare this"
        )
        expect(pane.locator(".pg-stats")).to_contain_text(f"Cost{cost}")
    logs = logs_of(verified_user, 2)
    assert sorted((log.model_id, log.cost_micros) for log in logs) == [
        ("pg-alpha", 168),
        ("pg-beta", 67),
    ]
    shoot(asgi_page, "playground-compare")

    asgi_page.get_by_role("button", name="Remove model 2").click()
    expect(panes).to_have_count(1)
    expect(asgi_page.get_by_label("Model", exact=True)).to_have_value("pg-alpha")


def test_the_code_box_writes_the_current_settings_and_messages_and_the_code_runs(
    asgi_page, asgi_server, verified_user, upstream, tmp_path
):
    credit(verified_user, 10_000_000)
    open_playground(asgi_page, asgi_server, verified_user)

    asgi_page.get_by_label("Model", exact=True).select_option("pg-beta")
    # Quotes, an apostrophe and a line break: the code must carry them through every language.
    asgi_page.get_by_label("System prompt").fill("Be brief.\nDon't rhyme.")
    asgi_page.get_by_label("Temperature").fill("0.3")
    asgi_page.get_by_label("Max tokens").fill("12")
    asgi_page.get_by_label("Frequency penalty").fill("-0.5")
    asgi_page.get_by_label("Stop sequences").fill("END")
    asgi_page.get_by_label("Message").fill('Write a "haiku" about cats')

    code_box = asgi_page.locator("#pg-code-box")
    python = code_box.inner_text()
    for expected in [
        f'base_url="{asgi_server.relay_url}"',
        'api_key=os.environ["TOKENBYTE_API_KEY"]',
        'model="pg-beta"',
        '{"role": "system", "content": "Be brief.\\nDon\'t rhyme."}',
        '{"role": "user", "content": "Write a \\"haiku\\" about cats"}',
        "temperature=0.3",
        "max_tokens=12",
        "frequency_penalty=-0.5",
        'stop=["END"]',
        "stream=True",
        'stream_options={"include_usage": True}',
    ]:
        assert expected in python, expected
    assert "top_p" not in python
    assert "sk-" not in python

    asgi_page.get_by_role("tab", name="Node.js").click()
    node = code_box.inner_text()
    for expected in [
        f'baseURL: "{asgi_server.relay_url}"',
        "apiKey: process.env.TOKENBYTE_API_KEY",
        'model: "pg-beta"',
        "temperature: 0.3",
        'stop: ["END"]',
    ]:
        assert expected in node, expected
    asgi_page.get_by_role("tab", name="curl").click()
    curl = code_box.inner_text()
    assert f"curl -N {asgi_server.relay_url}/chat/completions" in curl
    assert "Authorization: Bearer $TOKENBYTE_API_KEY" in curl
    assert '"max_tokens": 12' in curl
    asgi_page.get_by_label("Stream the reply token by token").uncheck()
    assert "-N" not in code_box.inner_text()
    assert '"stream"' not in code_box.inner_text()
    shoot(asgi_page, "playground-code")

    # The Python, as copied, runs against the relay with a key of the user's own.
    asgi_page.get_by_label("Stream the reply token by token").check()
    asgi_page.get_by_role("tab", name="Python").click()
    _, key = api_token_create(owner=verified_user, name="script")
    ran = subprocess.run(
        [sys.executable, "-c", code_box.inner_text()],
        env={**os.environ, "TOKENBYTE_API_KEY": key},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    # 12 words at most (max_tokens), the mock's reply to the first words of the prompt.
    assert ran.stdout.startswith('This is a mock reply to: Write a "haiku" about cats')
    # 12 prompt tokens (48 characters) at $1.00 and 12 completion tokens at $4.00 per 1M.
    assert ran.stdout.rstrip().endswith("\n12 in, 12 out, $0.000060")
    sent = upstream.last_request["json"]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief.\nDon't rhyme."},
        {"role": "user", "content": 'Write a "haiku" about cats'},
    ]
    assert (sent["temperature"], sent["stop"], sent["frequency_penalty"]) == (0.3, ["END"], -0.5)

    # So does the curl command (without streaming: one JSON answer), through a shell.
    asgi_page.get_by_label("Stream the reply token by token").uncheck()
    asgi_page.get_by_role("tab", name="curl").click()
    ran = subprocess.run(
        ["bash", "-c", code_box.inner_text()],
        env={**os.environ, "TOKENBYTE_API_KEY": key},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    assert answer["choices"][0]["message"]["content"].startswith(
        'This is a mock reply to: Write a "haiku" about cats'
    )
    assert answer["usage"]["cost"] == 0.00006
    assert upstream.last_request["json"]["messages"] == sent["messages"]

    # The Node.js program parses (running it needs the openai package from npm).
    if shutil.which("node"):
        asgi_page.get_by_role("tab", name="Node.js").click()
        program = tmp_path / "playground.mjs"
        program.write_text(code_box.inner_text())
        checked = subprocess.run(["node", "--check", str(program)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


def test_a_wallet_without_balance_shows_the_relays_403(
    asgi_page, asgi_server, verified_user, upstream
):
    credit(verified_user, 0)
    _, key = api_token_create(owner=verified_user, name="check")
    expected = httpx.post(
        f"{asgi_server.relay_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "pg-alpha",
            "messages": [{"role": "user", "content": "Hello"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=10,
    )
    assert expected.status_code == 403
    error = expected.json()["error"]
    open_playground(asgi_page, asgi_server, verified_user)

    send(asgi_page, "Hello")

    alert = asgi_page.locator(".pg-assistant .pg-error")
    expect(alert).to_contain_text(f"403 · {error['code']}")
    expect(alert).to_contain_text(error["message"])
    expect(alert.get_by_role("link", name="Top up in Wallet")).to_have_attribute("href", "/wallet/")
    expect(asgi_page.locator(".pg-assistant .pg-stats")).to_have_count(0)
    shoot(asgi_page, "playground-error")


def test_a_parameter_out_of_range_is_named_before_anything_is_sent(
    asgi_page, asgi_server, verified_user, upstream
):
    credit(verified_user, 10_000_000)
    open_playground(asgi_page, asgi_server, verified_user)

    asgi_page.get_by_label("Temperature").fill("3")
    send(asgi_page, "Hello")

    expect(asgi_page.locator("[data-settings-error]")).to_have_text(
        "Temperature must be between 0 and 2."
    )
    expect(asgi_page.get_by_label("Temperature")).to_be_focused()
    expect(asgi_page.locator(".pg-msg")).to_have_count(0)
    assert not RequestLog.objects.filter(user=verified_user).exists()


def test_a_reply_without_streaming_shows_its_tokens_and_cost(
    asgi_page, asgi_server, verified_user, upstream
):
    credit(verified_user, 10_000_000)
    open_playground(asgi_page, asgi_server, verified_user)

    asgi_page.get_by_label("Stream the reply token by token").uncheck()
    send(asgi_page, "Hello there")

    reply = asgi_page.locator(".pg-assistant")
    expect(reply.locator(".pg-text")).to_contain_text("This is a mock reply to: Hello there")
    expect(reply.locator(".pg-stats")).to_contain_text("In3 tokens")
    expect(reply.locator(".pg-stats")).to_contain_text("Cost$0.000168")
    expect(reply.locator(".pg-stats")).not_to_contain_text("First token")
    [log] = logs_of(verified_user, 1)
    assert (log.is_stream, log.cost_micros) == (False, 168)
    assert upstream.last_request["json"].get("stream") in (None, False)


def test_stop_cancels_a_reply_in_flight_and_keeps_what_arrived(
    asgi_page, asgi_server, verified_user, upstream
):
    credit(verified_user, 10_000_000)
    upstream.chunk_delay_ms = 300
    open_playground(asgi_page, asgi_server, verified_user)

    send(asgi_page, "Tell me slowly")
    reply = asgi_page.locator(".pg-assistant")
    expect(reply.locator(".pg-text")).to_contain_text("This is")
    asgi_page.get_by_role("button", name="Stop").click()

    expect(reply.locator(".pg-note")).to_contain_text("Stopped.")
    expect(asgi_page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(asgi_page.get_by_role("button", name="Send")).to_be_enabled()
    delivered = reply.locator(".pg-text").inner_text()
    assert delivered.startswith("This is")
    assert len(delivered.split()) < 16
    # What arrived is part of the conversation the code box (and the next turn) carries.
    assert (
        '{"role": "user", "content": "Tell me slowly"}'
        in asgi_page.locator("#pg-code-box").inner_text()
    )
    [log] = logs_of(verified_user, 1)
    assert log.model_id == "pg-alpha"


def test_a_model_failing_mid_stream_shows_its_error_while_the_other_answers(
    asgi_page, asgi_server, verified_user, upstream
):
    credit(verified_user, 10_000_000)
    faults = ProviderFactory(slug="faults", name="Faults")
    faulty = ModelFactory(
        model_id="mock-fault-stream-error", provider=faults, sort_order=10, **ALPHA
    )
    add_channel(upstream, "pg-faulty-mock", faulty.model_id)
    open_playground(asgi_page, asgi_server, verified_user)

    asgi_page.get_by_role("button", name="Compare with another model").click()
    second = asgi_page.get_by_label("Model 2", exact=True)
    # Models of several providers are grouped by provider.
    expect(second.locator("optgroup")).to_have_count(2)
    expect(second.locator('optgroup[label="Faults"] option')).to_have_text(
        ["mock-fault-stream-error"]
    )
    second.select_option("mock-fault-stream-error")
    send(asgi_page, "Compare this")

    healthy, failing = asgi_page.locator("[data-pane]").all()
    expect(healthy.locator(".pg-stats")).to_contain_text("Cost$0.000168")
    expect(healthy.locator(".pg-error")).to_have_count(0)
    error = failing.locator(".pg-error")
    expect(error).to_contain_text("Overloaded (mock fault stream-error).")
    # What arrived before the error stays, with what the relay charged for it.
    expect(failing.locator(".pg-assistant .pg-text")).to_have_text("This is")
    logs = {log.model_id: log for log in logs_of(verified_user, 2)}
    charged = logs["mock-fault-stream-error"].cost_micros
    assert charged > 0
    expect(failing.locator(".pg-stats")).to_contain_text(f"Cost{format_usd(charged)}")
    assert logs["pg-alpha"].cost_micros == 168
    shoot(asgi_page, "playground-compare-error")
