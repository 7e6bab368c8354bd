"""Anthropic and Gemini channels through the relay: OpenAI in, the provider's format upstream."""

import openai
import pytest

from catalog.models import Channel
from catalog.services import channel_create
from relay.metering import count_text
from tests.factories import ModelFactory
from tests.relay.conftest import (
    CACHED_PRICE,
    INPUT_PRICE,
    OUTPUT_PRICE,
    add_channel,
    chat,
    stream_until_error,
    wait_for_logs,
)
from tokenbyte.money import ceil_div

pytestmark = pytest.mark.django_db(transaction=True)

PROVIDERS = ["anthropic", "gemini"]
KEYS = {"anthropic": "sk-ant-channel", "gemini": "goog-channel"}
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a word up.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
}}]  # fmt: skip


def expected_cost(prompt: int, completion: int, cached: int = 0) -> int:
    return ceil_div(
        (prompt - cached) * INPUT_PRICE + cached * CACHED_PRICE + completion * OUTPUT_PRICE,
        1_000_000,
    )


def provider_channel(mock, provider: str, name: str | None = None, **kwargs) -> Channel:
    path = "/v1" if provider == "anthropic" else "/v1beta"
    return channel_create(
        name=name or provider, type=provider, base_url=mock.url + path, model_ids=["gpt-test"],
        api_key=KEYS[provider], **kwargs,
    )  # fmt: skip


def streamed_text(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_plain_and_a_streamed_reply_match_in_text_usage_and_cost(make_account, mock, provider):
    provider_channel(mock, provider)
    account = make_account("10", channel=False)

    plain = chat(account)
    chunks = list(chat(account, stream=True, stream_options={"include_usage": True}))

    assert plain.choices[0].message.content.startswith("This is a mock reply to: Hello there")
    assert plain.choices[0].finish_reason == "stop"
    assert streamed_text(chunks) == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    [usage_chunk] = [c for c in chunks if c.usage is not None]
    assert usage_chunk.choices == []
    for usage in (plain.usage, usage_chunk.usage):
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 16, 19)
        assert usage.model_extra["cost"] == 0.000168
    logs = wait_for_logs(account, 2)
    assert [(log.is_stream, log.status_code, log.channel_name) for log in logs] == [
        (False, 200, provider),
        (True, 200, provider),
    ]
    assert [(log.prompt_tokens, log.completion_tokens, log.cost_micros) for log in logs] == [
        (3, 16, 168),
        (3, 16, 168),
    ]
    assert account.balance() == 10_000_000 - 2 * 168


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_not_asking_for_usage_gets_none_and_is_still_billed_upstreams_numbers(
    make_account, mock, provider
):
    provider_channel(mock, provider)
    account = make_account("10", channel=False)

    chunks = list(chat(account, stream=True))

    assert all(c.usage is None for c in chunks)
    [log] = wait_for_logs(account, 1)
    assert (log.prompt_tokens, log.completion_tokens, log.cost_micros) == (3, 16, 168)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cached_prompt_tokens_are_billed_at_the_cached_price(make_account, mock, provider):
    provider_channel(mock, provider, model_mapping={"gpt-test": "mock-fault-cached"})
    account = make_account("10", channel=False)
    messages = [{"role": "user", "content": "x" * 400}]

    plain = chat(account, messages=messages)
    chunks = list(chat(account, messages=messages, stream=True,
                       stream_options={"include_usage": True}))  # fmt: skip

    assert expected_cost(100, 16, cached=50) == 348
    [streamed_usage] = [c.usage for c in chunks if c.usage is not None]
    for usage in (plain.usage, streamed_usage):
        assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens) == (100, 50)
        assert usage.completion_tokens == 16
        assert usage.model_extra["cost"] == 0.000348
    logs = wait_for_logs(account, 2)
    assert [(log.cached_tokens, log.cost_micros) for log in logs] == [(50, 348), (50, 348)]
    assert {log.upstream_model for log in logs} == {"mock-fault-cached"}


def test_the_anthropic_request_carries_the_system_prompt_max_tokens_and_the_key_header(
    make_account, mock
):
    provider_channel(mock, "anthropic")
    account = make_account("10", channel=False)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]

    chat(account, messages=messages, temperature=0.3, stop="END")
    plain = mock.last_request
    list(chat(account, messages=messages, stream=True))
    streamed = mock.last_request

    assert (plain["method"], plain["path"], plain["query"]) == ("POST", "/v1/messages", {})
    assert plain["headers"]["x-api-key"] == "sk-ant-channel"
    assert plain["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in plain["headers"]
    assert plain["json"] == {
        "model": "gpt-test",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
        "max_tokens": 1000,  # injected by the relay: the model's maximum
        "temperature": 0.3,
        "stop_sequences": ["END"],
    }
    assert streamed["json"]["stream"] is True
    assert "stream_options" not in streamed["json"]


def test_the_gemini_request_carries_the_system_instruction_and_the_key_only_in_a_header(
    make_account, mock
):
    provider_channel(mock, "gemini")
    account = make_account("10", channel=False)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]

    chat(account, messages=messages, temperature=0.3)
    plain = mock.last_request
    list(chat(account, messages=messages, temperature=0.3, stream=True))
    streamed = mock.last_request

    assert (plain["path"], plain["query"]) == ("/v1beta/models/gpt-test:generateContent", {})
    assert (streamed["path"], streamed["query"]) == (
        "/v1beta/models/gpt-test:streamGenerateContent",
        {"alt": "sse"},
    )
    for request in (plain, streamed):
        assert request["headers"]["x-goog-api-key"] == "goog-channel"
        assert "key" not in request["query"]
    assert plain["json"] == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hello there"}]}],
        "generationConfig": {"maxOutputTokens": 1000, "temperature": 0.3},
    }
    assert streamed["json"] == plain["json"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_calls_are_translated_both_ways(make_account, mock, provider):
    provider_channel(mock, provider)
    account = make_account("10", channel=False)
    question = {"role": "user", "content": "What is a cat?"}

    first = chat(account, messages=[question], tools=TOOLS, tool_choice="required")
    [call] = first.choices[0].message.tool_calls
    answer = chat(account, messages=[
        question,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"meaning": "a small feline"}'},
    ])  # fmt: skip

    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.type, call.function.name, call.function.arguments) == ("function", "lookup", "{}")
    assert call.id
    assert answer.choices[0].message.content.startswith("This is a mock reply to:")
    sent = mock.last_request["json"]
    if provider == "anthropic":
        assert sent["messages"][1:] == [
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": call.id, "name": "lookup", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call.id,
                 "content": '{"meaning": "a small feline"}'}]},
        ]  # fmt: skip
    else:
        assert sent["contents"][1:] == [
            {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {
                "name": "lookup", "response": {"meaning": "a small feline"}}}]},
        ]  # fmt: skip
    logs = wait_for_logs(account, 2)
    assert logs[0].request_params["tool_names"] == ["lookup"]
    assert logs[0].completion_tokens == 2  # the mock's count for a tool call


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_streamed_tool_call_arrives_as_openai_tool_call_deltas(make_account, mock, provider):
    provider_channel(mock, provider)
    account = make_account("10", channel=False)

    chunks = list(chat(account, tools=TOOLS, stream=True))

    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].id and deltas[0].type == "function"
    assert {d.index for d in deltas} == {0}
    assert "".join(d.function.name or "" for d in deltas) == "lookup"
    assert "".join(d.function.arguments or "" for d in deltas) == "{}"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.completion_tokens) == (200, 2)
    assert log.cost_micros == expected_cost(log.prompt_tokens, 2)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_upstream_dying_mid_stream_ends_with_an_error_and_bills_what_was_delivered(
    make_account, mock, provider
):
    provider_channel(mock, provider, model_mapping={"gpt-test": "mock-fault-drop"})
    account = make_account("10", channel=False)

    received, error = stream_until_error(account)

    assert "broke off" in str(error)
    assert 0 < len("".join(received).split()) < 16
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code) == (502, "upstream_stream_interrupted")
    # No usage came: our own count of the prompt (9) and of the delivered words.
    assert log.completion_tokens == count_text("".join(received)) > 0
    assert log.cost_micros == expected_cost(9, log.completion_tokens)
    assert account.balance() == 10_000_000 - log.cost_micros


@pytest.mark.parametrize("provider", ["openai", *PROVIDERS])
def test_a_providers_error_event_mid_stream_reaches_the_client_and_the_log_as_it_said(
    make_account, mock, provider
):
    mapping = {"gpt-test": "mock-fault-stream-error"}
    if provider == "openai":
        add_channel(mock, "erring", "gpt-test", model_mapping=mapping)
    else:
        provider_channel(mock, provider, model_mapping=mapping)
    account = make_account("10", channel=False)

    received, error = stream_until_error(account)

    # The provider's message, once: not a second "broke off" error after it.
    assert "Overloaded (mock fault stream-error)." in str(error)
    assert "broke off" not in str(error)
    assert received
    [log] = wait_for_logs(account, 1)
    assert log.status_code == 502
    assert log.error_message == "Overloaded (mock fault stream-error)."
    # The code each provider's error carries (OpenAI's code, Anthropic's type, Gemini's status).
    codes = {"openai": "overloaded", "anthropic": "overloaded_error", "gemini": "UNAVAILABLE"}
    assert log.error_code == codes[provider]
    assert log.completion_tokens == count_text("".join(received)) > 0
    assert account.balance() == 10_000_000 - log.cost_micros


@pytest.mark.parametrize("provider", ["openai", *PROVIDERS])
def test_a_provider_failing_before_any_content_fails_over_to_the_next_channel(
    make_account, mock, provider
):
    mapping = {"gpt-test": "mock-fault-early-stream-error"}
    if provider == "openai":
        add_channel(mock, "erring", "gpt-test", model_mapping=mapping, priority=9)
    else:
        provider_channel(mock, provider, model_mapping=mapping, priority=9)
    account = make_account("10")

    chunks = list(chat(account, stream=True))

    assert chunks[-1].choices[0].finish_reason == "stop"
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.attempts, log.channel_name) == (200, 2, "healthy")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_malformed_event_mid_stream_ends_the_stream_with_an_error_and_a_502_log(
    make_account, mock, provider
):
    # The mock breaks the stream right after its first event: mid-stream if that event reached
    # the client on its own, or before the first byte (a 502 answer) if both came in one read.
    provider_channel(mock, provider, model_mapping={"gpt-test": "mock-fault-malformed"})
    account = make_account("10", channel=False)

    received = []
    with pytest.raises(openai.APIError) as excinfo:
        for chunk in chat(account, stream=True):
            received.append(chunk)

    assert "The upstream provider sent an invalid stream." in str(excinfo.value)
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code) == (502, "invalid_upstream_response")
    # No content reached the client either way (the first event carries none): free, like the
    # plain call's 502. Before the first byte, every attempt failed over.
    assert log.cost_micros == 0
    assert not any(c.choices and c.choices[0].delta.content for c in received)
    if not received:
        assert log.attempts == 3


def test_embeddings_through_an_anthropic_channel_are_refused_as_not_implemented(make_account, mock):
    ModelFactory(model_id="embed-test", call_type="embedding", input_price_micros_per_mtok=20_000)
    channel_create(
        name="claude-embed", type="anthropic", base_url=mock.url + "/v1", model_ids=["embed-test"]
    )
    account = make_account("10", channel=False)

    with pytest.raises(openai.APIStatusError) as excinfo:
        account.client.embeddings.create(model="embed-test", input="one")

    assert excinfo.value.status_code == 501
    assert excinfo.value.body["code"] == "conversion_not_implemented"
    assert excinfo.value.body["message"] == (
        "Anthropic channels do not support embeddings: conversion not implemented."
    )
    assert mock.stats["requests"] == 0
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code, log.cost_micros) == (
        501,
        "conversion_not_implemented",
        0,
    )
    assert account.balance() == 10_000_000
    account.wallet.refresh_from_db()
    assert account.wallet.held_micros == 0


def test_more_than_one_choice_through_an_anthropic_channel_is_a_clear_400(make_account, mock):
    provider_channel(mock, "anthropic")
    account = make_account("10", channel=False)

    with pytest.raises(openai.BadRequestError) as excinfo:
        chat(account, n=2)

    assert excinfo.value.body["message"] == (
        "Anthropic channels return one choice per request: 'n' must be 1."
    )
    assert mock.stats["requests"] == 0
    assert account.balance() == 10_000_000


def test_gemini_answers_several_choices_when_asked(make_account, mock):
    provider_channel(mock, "gemini")
    account = make_account("10", channel=False)

    response = chat(account, n=2)

    assert [c.index for c in response.choices] == [0, 1]
    assert response.choices[0].message.content == response.choices[1].message.content
    assert mock.last_request["json"]["generationConfig"]["candidateCount"] == 2
    assert response.usage.completion_tokens == 32


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_providers_refusal_reaches_the_client_with_its_message(make_account, mock, provider):
    # The mock refuses an unknown fault name with a 400 in the provider's own error shape.
    provider_channel(mock, provider, model_mapping={"gpt-test": "mock-fault-bogus"})
    account = make_account("10", channel=False)

    with pytest.raises(openai.BadRequestError) as excinfo:
        chat(account)

    assert excinfo.value.body["message"].startswith("unknown mock fault 'bogus'")
    assert excinfo.value.body["code"] == "upstream_rejected"
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.cost_micros) == (400, 0)


def test_a_failing_anthropic_channel_fails_over_to_a_gemini_one(make_account, mock):
    provider_channel(mock, "anthropic", model_mapping={"gpt-test": "mock-fault-500"}, priority=9)
    provider_channel(mock, "gemini", priority=1)
    account = make_account("10", channel=False)

    response = chat(account)

    assert response.choices[0].message.content.startswith("This is a mock reply to: Hello there")
    assert response.usage.model_extra["cost"] == 0.000168
    assert mock.stats["by_path"] == {
        "/v1/messages": 1,
        "/v1beta/models/gpt-test:generateContent": 1,
    }
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.attempts, log.channel_name, log.cost_micros) == (
        200,
        2,
        "gemini",
        168,
    )
