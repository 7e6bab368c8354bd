"""Anthropic's /v1/messages through the relay, driven by the official Anthropic SDK, against
Anthropic (passed through), OpenAI-compatible and Gemini (translated) channels."""

import re

import anthropic
import httpx
import pytest
from django.core.management import call_command

from catalog.models import Channel, Model
from catalog.services import channel_create
from relay.metering import count_text
from tests.relay.conftest import (
    CACHED_PRICE,
    INPUT_PRICE,
    OUTPUT_PRICE,
    add_channel,
    wait_for,
    wait_for_logs,
)
from tokenbyte.management.commands.seed_demo import DEMO_CHANNEL_NAME
from tokenbyte.money import ceil_div
from usage.models import RequestLog

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]

CHANNEL_TYPES = ["anthropic", "openai", "gemini"]
HELLO = [{"role": "user", "content": "Hello there"}]
TOOLS = [{
    "name": "lookup", "description": "Look a word up.",
    "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}},
}]  # fmt: skip
CACHE_WRITE_PRICE = 3_125_000  # micro-USD per 1M tokens


def channel(mock, kind: str, name: str | None = None, **kwargs) -> Channel:
    if kind == "openai":
        return add_channel(mock, name or "openai", "gpt-test", **kwargs)
    path = "/v1" if kind == "anthropic" else "/v1beta"
    return channel_create(
        name=name or kind, type=kind, base_url=mock.url + path, model_ids=["gpt-test"],
        api_key=f"{kind}-channel-key", **kwargs,
    )  # fmt: skip


def client(relay, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0, timeout=30)


def create(account, relay, **kwargs):
    kwargs.setdefault("model", "gpt-test")
    kwargs.setdefault("max_tokens", 100)
    kwargs.setdefault("messages", HELLO)
    return client(relay, account.key).messages.create(**kwargs)


def expected_cost(prompt: int, completion: int, cached: int = 0, written: int = 0) -> int:
    return ceil_div(
        (prompt - cached - written) * INPUT_PRICE + cached * CACHED_PRICE
        + written * CACHE_WRITE_PRICE + completion * OUTPUT_PRICE,
        1_000_000,
    )  # fmt: skip


@pytest.mark.parametrize("kind", CHANNEL_TYPES)
def test_a_plain_and_a_streamed_message_match_in_text_usage_and_cost(
    make_account, relay, mock, kind
):
    channel(mock, kind)
    account = make_account("10", channel=False)

    plain = create(account, relay)
    with client(relay, account.key).messages.stream(
        model="gpt-test", max_tokens=100, messages=HELLO
    ) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()

    [block] = plain.content
    assert block.type == "text"
    assert block.text.startswith("This is a mock reply to: Hello there")
    assert len(block.text.split()) == 16
    assert (plain.type, plain.role, plain.stop_reason) == ("message", "assistant", "end_turn")
    assert plain.id.startswith("msg_")
    assert streamed_text == block.text
    assert final.content[0].text == block.text
    assert final.stop_reason == "end_turn"
    for usage in (plain.usage, final.usage):
        assert (usage.input_tokens, usage.output_tokens) == (3, 16)
        assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (0, 0)
    assert plain.usage.model_extra["cost"] == 0.000168
    logs = wait_for_logs(account, 2)
    assert [
        (log.call_type, log.endpoint, log.is_stream, log.status_code, log.channel_name)
        for log in logs
    ] == [
        ("chat.completions", "messages", False, 200, kind),
        ("chat.completions", "messages", True, 200, kind),
    ]
    assert [(log.prompt_tokens, log.completion_tokens, log.cost_micros) for log in logs] == [
        (3, 16, 168),
        (3, 16, 168),
    ]
    assert account.balance() == 10_000_000 - 2 * 168


@pytest.mark.parametrize("kind", CHANNEL_TYPES)
def test_a_raw_stream_has_anthropics_events_in_order(make_account, relay, mock, kind):
    channel(mock, kind)
    account = make_account("10", channel=False)

    events = list(create(account, relay, stream=True))

    types = [event.type for event in events]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(types[2:-3]) == {"content_block_delta"}
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn"
    assert (delta.usage.input_tokens, delta.usage.output_tokens) == (3, 16)
    assert delta.usage.model_extra["cost"] == 0.000168


@pytest.mark.parametrize("kind", CHANNEL_TYPES)
def test_a_tool_use_round_trip(make_account, relay, mock, kind):
    channel(mock, kind)
    account = make_account("10", channel=False)
    question = {"role": "user", "content": "What is a cat?"}

    first = create(account, relay, messages=[question], tools=TOOLS, tool_choice={"type": "any"})
    [call] = first.content
    first_sent = mock.last_request["json"]
    answer = create(account, relay, messages=[
        question,
        {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "a small feline"}]},
    ])  # fmt: skip

    assert first.stop_reason == "tool_use"
    assert (call.type, call.name, call.input) == ("tool_use", "lookup", {})
    assert call.id
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text.startswith("This is a mock reply to:")
    sent = mock.last_request["json"]
    if kind == "anthropic":
        assert sent["messages"][1:] == [
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": call.id, "name": "lookup", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "a small feline"}]},
        ]  # fmt: skip
    elif kind == "openai":
        assert sent["messages"][1:] == [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": "lookup", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "a small feline"},
        ]  # fmt: skip
        assert first_sent["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Look a word up.",
                    "parameters": TOOLS[0]["input_schema"],
                },
            }
        ]
        assert first_sent["tool_choice"] == "required"  # fmt: skip
    else:
        assert sent["contents"][1]["parts"][0]["functionCall"]["name"] == "lookup"
    logs = wait_for_logs(account, 2)
    assert logs[0].request_params["tool_names"] == ["lookup"]
    assert all(log.cost_micros == expected_cost(log.prompt_tokens, log.completion_tokens)
               for log in logs)  # fmt: skip


@pytest.mark.parametrize("kind", CHANNEL_TYPES)
def test_a_streamed_tool_use_arrives_as_a_tool_use_block(make_account, relay, mock, kind):
    channel(mock, kind)
    account = make_account("10", channel=False)

    with client(relay, account.key).messages.stream(
        model="gpt-test", max_tokens=100, messages=HELLO, tools=TOOLS,
        tool_choice={"type": "tool", "name": "lookup"},
    ) as stream:  # fmt: skip
        final = stream.get_final_message()

    [call] = final.content
    assert (call.type, call.name, call.input) == ("tool_use", "lookup", {})
    assert final.stop_reason == "tool_use"
    [log] = wait_for_logs(account, 1)
    assert log.completion_tokens == 2


def test_the_anthropic_channel_gets_the_clients_body_and_headers_as_they_came(
    make_account, relay, mock
):
    channel(mock, "anthropic", model_mapping={"gpt-test": "claude-upstream"})
    account = make_account("10", channel=False)
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]

    headers = {"anthropic-beta": "some-beta", "anthropic-version": "2023-06-01"}

    create(account, relay, system=system, stop_sequences=["END"], metadata={"user_id": "u-1"},
           extra_body={"top_k": 5}, extra_headers=headers)  # fmt: skip

    sent = mock.last_request
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == "anthropic-channel-key"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["headers"]["anthropic-beta"] == "some-beta"
    assert sent["json"] == {
        "model": "claude-upstream", "max_tokens": 100, "messages": HELLO, "system": system,
        "top_k": 5, "stop_sequences": ["END"], "metadata": {"user_id": "u-1"},
    }  # fmt: skip


def test_an_openai_channel_gets_the_message_as_a_chat_request(make_account, relay, mock):
    channel(mock, "openai")
    account = make_account("10", channel=False)
    image = {"type": "base64", "media_type": "image/png", "data": "aGVsbG8="}

    create(account, relay, system="Be brief.", extra_body={"temperature": 0.5},
           stop_sequences=["END"], metadata={"user_id": "u-1"},
           messages=[{"role": "user", "content": [
               {"type": "text", "text": "What is this?"}, {"type": "image", "source": image}]}],
           )  # fmt: skip

    assert mock.last_request["json"] == {
        "model": "gpt-test",
        "max_tokens": 100,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]},
        ],
        "temperature": 0.5,
        "stop": ["END"],
        "user": "u-1",
    }  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_cache_reads_and_writes_are_billed_at_their_own_prices(make_account, relay, mock, stream):
    Model.objects.filter(model_id="gpt-test").update(
        cache_write_price_micros_per_mtok=CACHE_WRITE_PRICE
    )
    channel(mock, "anthropic", model_mapping={"gpt-test": "mock-fault-cached"})
    account = make_account("10", channel=False)
    system = [{"type": "text", "text": "x" * 400, "cache_control": {"type": "ephemeral"}}]

    if stream:
        with client(relay, account.key).messages.stream(
            model="gpt-test", max_tokens=100, messages=HELLO, system=system
        ) as events:
            usage = events.get_final_message().usage
    else:
        usage = create(account, relay, system=system).usage

    # The mock's prompt: 411 characters = 103 tokens; half read from the cache, half of the
    # rest written to it.
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (26, 51)
    assert (usage.cache_creation_input_tokens, usage.output_tokens) == (26, 16)
    assert expected_cost(103, 16, cached=51, written=26) == 370
    [log] = wait_for_logs(account, 1)
    assert (log.prompt_tokens, log.cached_tokens, log.cache_write_tokens) == (103, 51, 26)
    assert (log.completion_tokens, log.cost_micros) == (16, 370)
    assert account.balance() == 10_000_000 - 370


def test_a_bad_key_is_an_authentication_error(make_account, relay, mock):
    make_account("10")

    with pytest.raises(anthropic.AuthenticationError) as excinfo:
        client(relay, "sk-nope").messages.create(model="gpt-test", max_tokens=100, messages=HELLO)

    assert excinfo.value.status_code == 401
    assert excinfo.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }


def test_an_empty_wallet_is_a_permission_error_and_charges_nothing(make_account, relay, mock):
    account = make_account("0")

    with pytest.raises(anthropic.PermissionDeniedError) as excinfo:
        create(account, relay)

    assert excinfo.value.body["type"] == "error"
    assert excinfo.value.body["error"]["type"] == "permission_error"
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.endpoint, log.cost_micros) == (403, "messages", 0)
    assert account.balance() == 0


def test_an_unknown_model_is_a_not_found_error(make_account, relay, mock):
    account = make_account("10")

    with pytest.raises(anthropic.NotFoundError) as excinfo:
        create(account, relay, model="no-such-model")

    assert excinfo.value.body["error"] == {
        "type": "not_found_error",
        "message": "The model 'no-such-model' does not exist or you do not have access to it.",
    }


def test_a_missing_max_tokens_is_a_bad_request(make_account, relay, mock):
    account = make_account("10")

    with pytest.raises(anthropic.BadRequestError) as excinfo:
        create(account, relay, max_tokens=anthropic.omit)

    assert excinfo.value.body["error"] == {
        "type": "invalid_request_error", "message": "max_tokens: Field required",
    }  # fmt: skip
    assert account.logs().count() == 0


def test_a_missing_anthropic_version_header_is_a_bad_request(make_account, relay, mock):
    account = make_account("10")

    with pytest.raises(anthropic.BadRequestError) as excinfo:
        create(account, relay, extra_headers={"anthropic-version": anthropic.Omit()})

    assert excinfo.value.body["error"] == {
        "type": "invalid_request_error", "message": "anthropic-version: header is required",
    }  # fmt: skip


def test_a_bearer_key_works_too_and_other_message_endpoints_are_not_implemented(
    make_account, relay, mock
):
    account = make_account("10")
    headers = {"authorization": f"Bearer {account.key}", "anthropic-version": "2023-06-01"}
    body = {"model": "gpt-test", "max_tokens": 10, "messages": HELLO}

    answer = httpx.post(f"{relay.url}/v1/messages", json=body, headers=headers)
    counted = httpx.post(f"{relay.url}/v1/messages/count_tokens", json=body, headers=headers)
    wrong_method = httpx.get(f"{relay.url}/v1/messages", headers=headers)

    assert answer.status_code == 200
    assert answer.json()["usage"]["output_tokens"] == 10
    assert counted.status_code == 501
    assert counted.json()["error"]["type"] == "api_error"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["type"] == "error"


@pytest.mark.parametrize("kind", CHANNEL_TYPES)
def test_an_upstream_dying_mid_stream_ends_with_an_error_event_and_bills_what_was_delivered(
    make_account, relay, mock, kind
):
    channel(mock, kind, model_mapping={"gpt-test": "mock-fault-drop"})
    account = make_account("10", channel=False)

    received = []
    with pytest.raises(anthropic.APIStatusError) as excinfo:
        for event in create(account, relay, stream=True):
            if event.type == "content_block_delta":
                received.append(event.delta.text)

    assert excinfo.value.body["type"] == "error"
    assert excinfo.value.body["error"]["type"] == "api_error"
    assert "broke off" in excinfo.value.body["error"]["message"]
    assert 0 < len("".join(received).split()) < 16
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code) == (502, "upstream_stream_interrupted")
    assert log.completion_tokens == count_text("".join(received)) > 0
    assert log.cost_micros == expected_cost(log.prompt_tokens, log.completion_tokens)
    assert account.balance() == 10_000_000 - log.cost_micros


def test_a_providers_error_event_mid_stream_reaches_the_client_as_it_said(
    make_account, relay, mock
):
    channel(mock, "anthropic", model_mapping={"gpt-test": "mock-fault-stream-error"})
    account = make_account("10", channel=False)

    with pytest.raises(anthropic.APIStatusError) as excinfo:
        list(create(account, relay, stream=True))

    assert excinfo.value.body["error"] == {
        "type": "overloaded_error", "message": "Overloaded (mock fault stream-error).",
    }  # fmt: skip
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code) == (502, "overloaded_error")
    assert log.cost_micros > 0
    assert account.balance() == 10_000_000 - log.cost_micros


def test_a_failing_channel_fails_over_to_another_type(make_account, relay, mock):
    channel(mock, "anthropic", model_mapping={"gpt-test": "mock-fault-500"}, priority=9)
    channel(mock, "gemini")
    account = make_account("10", channel=False)

    message = create(account, relay)

    assert message.content[0].text.startswith("This is a mock reply to: Hello there")
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.attempts, log.channel_name) == (200, 2, "gemini")


@pytest.mark.parametrize("stream", [False, True])
def test_a_key_with_a_credit_limit_is_settled_before_the_answer_ends(
    make_account, relay, mock, stream
):
    account = make_account("10", credit_limit_micros=1_000_000)

    answer = create(account, relay, stream=stream)
    if stream:
        assert [event.type for event in answer][-1] == "message_stop"

    # No waiting: the settlement came before the end of the answer (message_stop waited for it).
    [log] = account.logs()
    assert (log.status_code, log.cost_micros) == (200, 168)
    assert account.balance() == 10_000_000 - 168


def demo_key(mock, capsys) -> str:
    """`make run`'s demo: the seeded key and its mock channel (here on the test's mock)."""
    call_command("seed_demo")
    key = re.search(r"Demo API key:\s+(sk-\S+)", capsys.readouterr().out).group(1)
    Channel.objects.filter(name=DEMO_CHANNEL_NAME).update(base_url=mock.base_url)
    return key


def test_the_demo_key_answers_the_anthropic_sdk_plain_and_streamed(relay, mock, capsys):
    demo = client(relay, demo_key(mock, capsys))

    plain = demo.messages.create(model="demo-chat", max_tokens=64, messages=HELLO)
    with demo.messages.stream(model="demo-chat", max_tokens=64, messages=HELLO) as stream:
        streamed = "".join(stream.text_stream)

    assert plain.content[0].text.startswith("This is a mock reply to: Hello there")
    assert streamed == plain.content[0].text
    wait_for(lambda: RequestLog.objects.filter(endpoint="messages").count() == 2)
    logs = RequestLog.objects.filter(endpoint="messages")
    # 3 prompt tokens at $0.50 and 16 output tokens at $1.50 per 1M: 25.5, rounded up.
    assert {(log.model_id, log.status_code, log.cost_micros) for log in logs} == {
        ("demo-chat", 200, 26)
    }
