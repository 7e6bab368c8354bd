"""The mock upstream driven by real clients over loopback: the openai SDK, httpx, raw sockets."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from mockupstream.server import MODELS, MockUpstream

ROOT = Path(__file__).resolve().parents[2]

# 21 characters -> ceil(21 / 4) = 6 prompt tokens.
PROMPT = "Say hello to the mock"
PROMPT_TOKENS = 6
# 6 fixed words + the 5 prompt words + 5 filler words = the default 16 tokens.
REPLY = "This is a mock reply to: Say hello to the mock lorem ipsum dolor sit amet"
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def mock():
    with MockUpstream(latency_ms=0) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_mock(mock):
    mock.reset()
    mock.latency_ms = 0
    mock.chunk_delay_ms = 0
    yield


@pytest.fixture
def client(mock):
    # No retries: a fault must reach the test exactly once.
    return openai.OpenAI(base_url=mock.base_url, api_key="sk-test", max_retries=0, timeout=10)


@pytest.fixture
def http(mock):
    with httpx.Client(base_url=mock.url, timeout=10) as session:
        yield session


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stream_text(chunks, index: int = 0) -> str:
    return "".join(
        choice.delta.content or ""
        for chunk in chunks
        for choice in chunk.choices
        if choice.index == index
    )


def anthropic_events(raw: str) -> list[tuple[str, dict]]:
    events = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        events.append((name_line[len("event: ") :], json.loads(data_line[len("data: ") :])))
    return events


def gemini_events(raw: str) -> list[dict]:
    assert raw.endswith("\r\n\r\n")
    blocks = raw.split("\r\n\r\n")[:-1]
    assert all(block.startswith("data: ") for block in blocks)
    return [json.loads(block[len("data: ") :]) for block in blocks]


# --- OpenAI chat completions -----------------------------------------------------------------


def test_chat_completion_replies_with_the_fixed_sentence_and_exact_usage(client):
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-mock")
    assert completion.model == "gpt-4o-mini"
    assert len(completion.choices) == 1
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.completion_tokens == 16
    assert completion.usage.total_tokens == 22
    assert completion.usage.prompt_tokens_details.cached_tokens == 0


def test_prompt_tokens_count_every_message_including_the_system_prompt(client):
    messages = [
        {"role": "system", "content": "You are terse."},  # 14 characters
        {"role": "user", "content": [{"type": "text", "text": PROMPT}]},  # 21 characters
    ]
    completion = client.chat.completions.create(model="any-model-name", messages=messages)

    assert completion.usage.prompt_tokens == 9  # ceil(35 / 4)
    assert completion.choices[0].message.content == REPLY


def test_streamed_chat_reassembles_to_the_non_streamed_content_without_usage(client, mock):
    chunks = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    )

    assert stream_text(chunks) == REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) == 18  # role, 16 words, finish
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    stats = mock.stats
    assert stats["streams_started"] == 1
    assert stats["streams_completed"] == 1
    assert stats["streams_cancelled"] == 0


def test_streamed_chat_ends_with_a_usage_only_chunk_when_include_usage_is_set(client):
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert stream_text(chunks) == REPLY
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    assert chunks[-1].usage.completion_tokens == 16
    assert chunks[-1].usage.total_tokens == 22
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_the_stream_uses_openai_sse_framing_and_ends_with_done(http):
    response = http.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES, "stream": True},
        headers={"x-mock-chunks": "1"},
    )

    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["transfer-encoding"] == "chunked"
    blocks = response.text.split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    assert all(block.startswith("data: {") for block in blocks[:-2])
    assert json.loads(blocks[1][len("data: ") :])["choices"][0]["delta"] == {"content": "This"}


def test_n_returns_one_choice_per_n_and_counts_their_tokens(client):
    completion = client.chat.completions.create(model="m", messages=MESSAGES, n=3)

    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert {choice.message.content for choice in completion.choices} == {REPLY}
    assert completion.usage.completion_tokens == 48


def test_a_streamed_n_interleaves_choices_that_each_reassemble(client):
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, n=2, stream=True))

    assert stream_text(chunks, 0) == REPLY
    assert stream_text(chunks, 1) == REPLY


def test_max_tokens_truncates_the_reply_with_finish_reason_length(client):
    completion = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4)

    assert completion.choices[0].message.content == "This is a mock"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 4


def test_max_completion_tokens_truncates_a_stream_too(client):
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            max_completion_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert stream_text(chunks) == "This is"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 2


def test_max_tokens_above_the_reply_length_changes_nothing(client):
    completion = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=100)

    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"


def test_max_tokens_of_zero_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=0)

    assert caught.value.body["param"] == "max_tokens"
    assert caught.value.body["type"] == "invalid_request_error"


def test_x_mock_chunks_sets_the_number_of_stream_chunks_and_completion_tokens(client):
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-chunks": "32"},
        )
    )

    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 32
    assert chunks[-1].usage.completion_tokens == 32
    text = stream_text(chunks)
    assert text.startswith(REPLY + " consectetur adipiscing elit sed do eiusmod tempor lorem")
    assert len(text.split(" ")) == 32


def test_tools_get_a_deterministic_call_to_the_first_tool(client):
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {}}},
    ]
    completion = client.chat.completions.create(model="m", messages=MESSAGES, tools=tools)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    assert choice.message.tool_calls[0].id == "call_mock0"
    assert choice.message.tool_calls[0].type == "function"
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert choice.message.tool_calls[0].function.arguments == "{}"
    assert completion.usage.completion_tokens == 2


def test_a_streamed_tool_call_arrives_as_tool_call_deltas(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    chunks = list(
        client.chat.completions.create(model="m", messages=MESSAGES, tools=tools, stream=True)
    )

    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == "call_mock0"
    assert deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == "{}"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert stream_text(chunks) == ""


def test_a_named_tool_choice_calls_that_tool(client):
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {}}},
    ]
    completion = client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )

    assert completion.choices[0].message.tool_calls[0].function.name == "get_time"


def test_tool_choice_none_answers_with_text(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    completion = client.chat.completions.create(
        model="m", messages=MESSAGES, tools=tools, tool_choice="none"
    )

    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"


# --- OpenAI legacy completions, embeddings, models --------------------------------------------


def test_legacy_completion_replies_with_the_same_sentence(client):
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT)

    assert completion.object == "text_completion"
    assert completion.choices[0].text == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.completion_tokens == 16


def test_streamed_legacy_completion_reassembles_with_usage_only_when_asked(client):
    plain = list(client.completions.create(model="m", prompt=PROMPT, stream=True))
    with_usage = list(
        client.completions.create(
            model="m", prompt=PROMPT, stream=True, stream_options={"include_usage": True}
        )
    )

    assert "".join(c.choices[0].text for c in plain) == REPLY
    assert all(c.usage is None for c in plain)
    assert plain[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].text for c in with_usage if c.choices) == REPLY
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage.completion_tokens == 16


def test_legacy_completion_max_tokens_truncates(client):
    completion = client.completions.create(model="m", prompt=PROMPT, max_tokens=3)

    assert completion.choices[0].text == "This is a"
    assert completion.choices[0].finish_reason == "length"


def test_embeddings_are_deterministic_eight_floats_by_default(client):
    first = client.embeddings.create(model="text-embedding-3-small", input="hello")
    again = client.embeddings.create(
        model="text-embedding-3-small", input="hello", encoding_format="float"
    )

    expected = [
        -0.859375,
        -0.59375,
        -0.9453125,
        -0.296875,
        0.78125,
        0.2578125,
        0.8046875,
        -0.1015625,
    ]
    assert first.data[0].embedding == expected  # the SDK asked for base64 and decoded it
    assert again.data[0].embedding == expected
    assert first.usage.prompt_tokens == 2
    assert first.usage.total_tokens == 2
    assert first.model == "text-embedding-3-small"


def test_embeddings_honour_dimensions_and_list_input(client):
    result = client.embeddings.create(
        model="e", input=["hello", "world"], dimensions=3, encoding_format="float"
    )

    assert [item.index for item in result.data] == [0, 1]
    assert result.data[0].embedding == [-0.859375, -0.59375, -0.9453125]
    assert result.data[1].embedding == [-0.1328125, 0.984375, -0.3359375]
    assert result.usage.prompt_tokens == 3  # ceil(10 / 4)


def test_empty_embedding_input_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="e", input="")

    assert caught.value.body["param"] == "input"


def test_models_lists_the_mock_models_and_retrieves_any_id(client):
    listed = client.models.list()
    retrieved = client.models.retrieve("some-unknown-model")

    assert [model.id for model in listed.data] == list(MODELS)
    assert retrieved.id == "some-unknown-model"
    assert retrieved.owned_by == "tokenbyte-mock"


def test_an_unknown_path_is_a_404_in_openai_error_shape(http):
    response = http.post("/v1/nothing-here", json={})

    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "Invalid URL (POST /v1/nothing-here)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def test_a_body_that_is_not_json_is_a_400(http):
    response = http.post("/v1/chat/completions", content=b"{nope")

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "We could not parse the JSON body of your request."
    )


# --- Faults ------------------------------------------------------------------------------------


def fault_options(how: str, fault: str) -> dict:
    if how == "header":
        return {"model": "gpt-4o-mini", "extra_headers": {"x-mock-fault": fault}}
    return {"model": f"mock-fault-{fault}"}


@pytest.mark.parametrize("how", ["header", "model"])
def test_the_500_fault_answers_500_with_an_openai_error(client, mock, how):
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(messages=MESSAGES, **fault_options(how, "500"))

    assert caught.value.status_code == 500
    assert caught.value.body["type"] == "server_error"
    assert mock.stats["by_fault"] == {"500": 1}


@pytest.mark.parametrize("how", ["header", "model"])
def test_the_429_fault_answers_429_with_retry_after(client, how):
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(messages=MESSAGES, **fault_options(how, "429"))

    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.body["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("how", ["header", "model"])
def test_the_timeout_fault_sends_nothing_until_the_client_gives_up(client, mock, how):
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            messages=MESSAGES, timeout=0.3, **fault_options(how, "timeout")
        )

    assert time.monotonic() - started < 5
    stats = mock.wait_for(lambda s: s["requests_cancelled"] == 1)
    assert stats["streams_started"] == 0


@pytest.mark.parametrize("how", ["header", "model"])
def test_the_malformed_fault_answers_200_with_a_body_that_is_not_json(client, http, how):
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(messages=MESSAGES, **fault_options(how, "malformed"))

    headers = {"x-mock-fault": "malformed"}
    raw = http.post(
        "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, headers=headers
    )
    assert raw.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        raw.json()


def test_the_malformed_fault_puts_a_chunk_that_is_not_json_into_a_stream(client):
    received = []
    with pytest.raises(json.JSONDecodeError):
        for chunk in client.chat.completions.create(
            model="mock-fault-malformed", messages=MESSAGES, stream=True
        ):
            received.append(chunk)

    assert len(received) == 1  # the role chunk came through, then the broken one


@pytest.mark.parametrize("how", ["header", "model"])
def test_the_drop_fault_cuts_a_stream_after_a_few_chunks_without_done(client, mock, how):
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(
            messages=MESSAGES, stream=True, **fault_options(how, "drop")
        ):
            received.append(chunk)

    assert stream_text(received) == "This is"
    stats = mock.stats
    assert stats["streams_dropped"] == 1
    assert stats["streams_completed"] == 0


def test_the_stream_error_faults_end_a_stream_with_the_providers_error_event(http):
    openai_raw = http.post(
        "/v1/chat/completions",
        json={"model": "mock-fault-stream-error", "messages": MESSAGES, "stream": True},
    ).text
    anthropic_raw = http.post(
        "/v1/messages", json=anthropic_body(stream=True), headers={
            **ANTHROPIC_HEADERS, "x-mock-fault": "stream-error"},
    ).text  # fmt: skip
    early_raw = http.post(
        "/v1/messages", json=anthropic_body(stream=True), headers={
            **ANTHROPIC_HEADERS, "x-mock-fault": "early-stream-error"},
    ).text  # fmt: skip

    *content, last = [b for b in openai_raw.split("\n\n") if b]
    assert "[DONE]" not in openai_raw and len(content) >= 2
    assert json.loads(last.removeprefix("data: "))["error"]["code"] == "overloaded"
    events = anthropic_events(anthropic_raw)
    assert "content_block_delta" in [name for name, _ in events]
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {
                "type": "overloaded_error",
                "message": "Overloaded (mock fault stream-error).",
            },
        },
    )
    assert [name for name, _ in anthropic_events(early_raw)] == ["error"]


def test_the_drop_fault_closes_a_non_stream_call_without_a_response(client, http):
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="mock-fault-drop", messages=MESSAGES)

    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/embeddings", json={"model": "mock-fault-drop", "input": "x"})


@pytest.mark.parametrize("how", ["header", "model"])
def test_the_no_usage_fault_never_sends_usage(client, how):
    completion = client.chat.completions.create(messages=MESSAGES, **fault_options(how, "no-usage"))
    chunks = list(
        client.chat.completions.create(
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **fault_options(how, "no-usage"),
        )
    )

    assert completion.usage is None
    assert completion.choices[0].message.content == REPLY
    assert stream_text(chunks) == REPLY
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("how", ["header", "model"])
def test_the_cached_fault_reports_half_the_prompt_as_cached(client, how):
    completion = client.chat.completions.create(messages=MESSAGES, **fault_options(how, "cached"))
    chunks = list(
        client.chat.completions.create(
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **fault_options(how, "cached"),
        )
    )

    assert completion.usage.prompt_tokens == 6
    assert completion.usage.prompt_tokens_details.cached_tokens == 3
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 3


def test_cached_tokens_round_down(client):
    completion = client.chat.completions.create(
        model="mock-fault-cached",
        messages=[{"role": "user", "content": "x" * 20}],  # 5 tokens
    )

    assert completion.usage.prompt_tokens_details.cached_tokens == 2


@pytest.mark.parametrize("how", ["header", "model"])
def test_an_unknown_fault_name_is_a_400(client, how):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(messages=MESSAGES, **fault_options(how, "gremlins"))

    assert caught.value.body["message"].startswith("unknown mock fault 'gremlins'")


def test_faults_apply_to_every_endpoint(client):
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="mock-fault-429", input="x")
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model="mock-fault-500", prompt="x")
    with pytest.raises(openai.InternalServerError):
        client.models.retrieve("mock-fault-500")


def test_the_key_invalid_is_refused_with_401(mock):
    refused = openai.OpenAI(base_url=mock.base_url, api_key="invalid", max_retries=0)

    with pytest.raises(openai.AuthenticationError) as caught:
        refused.chat.completions.create(model="m", messages=MESSAGES)

    assert caught.value.body["code"] == "invalid_api_key"
    assert caught.value.body["type"] == "invalid_request_error"
    assert mock.last_request["json"]["model"] == "m"  # refused calls are recorded too


def test_any_other_key_or_none_is_accepted(http):
    for headers in ({"authorization": "Bearer anything"}, {"x-api-key": "k"}, {}):
        response = http.get("/v1/models", headers=headers)
        assert response.status_code == 200


# --- Latency -----------------------------------------------------------------------------------


def test_the_latency_header_delays_the_response(client):
    started = time.monotonic()
    client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-mock-latency-ms": "200"}
    )

    assert time.monotonic() - started >= 0.2


def test_the_server_latency_applies_when_no_header_overrides_it(client, mock):
    mock.latency_ms = 300
    started = time.monotonic()
    client.models.list()
    slow = time.monotonic() - started
    started = time.monotonic()
    client.models.list(extra_headers={"x-mock-latency-ms": "0"})
    fast = time.monotonic() - started

    assert slow >= 0.3
    assert fast < 0.3


def test_the_chunk_delay_header_spaces_stream_events(client):
    started = time.monotonic()
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-mock-chunks": "4", "x-mock-chunk-delay-ms": "50"},
        )
    )

    assert stream_text(chunks) == "This is a mock"
    assert time.monotonic() - started >= 0.3  # 7 events: role, 4 words, finish, [DONE]


def test_a_latency_header_that_is_not_a_number_is_a_400(http):
    response = http.get("/v1/models", headers={"x-mock-latency-ms": "soon"})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "header x-mock-latency-ms must be an integer, got 'soon'"
    )


# --- Anthropic Messages ------------------------------------------------------------------------

ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


def anthropic_body(**extra) -> dict:
    return {"model": "claude-3-5-haiku-latest", "max_tokens": 1024, "messages": MESSAGES, **extra}


def test_anthropic_messages_reply_in_the_messages_format(http):
    response = http.post("/v1/messages", json=anthropic_body(), headers=ANTHROPIC_HEADERS)

    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("msg_mock")
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == "claude-3-5-haiku-latest"
    assert body["content"] == [{"type": "text", "text": REPLY}]
    assert body["stop_reason"] == "end_turn"
    assert body["stop_sequence"] is None
    assert body["usage"] == {
        "input_tokens": 6,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 16,
    }


def test_anthropic_system_prompt_counts_towards_input_tokens(http):
    body = anthropic_body(system=[{"type": "text", "text": "x" * 15}])
    response = http.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)

    assert response.json()["usage"]["input_tokens"] == 9  # ceil(36 / 4)


def test_anthropic_stream_sends_the_named_events_in_order(http):
    response = http.post(
        "/v1/messages", json=anthropic_body(stream=True), headers=ANTHROPIC_HEADERS
    )

    events = anthropic_events(response.text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 16,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == REPLY
    assert events[0][1]["message"]["usage"]["input_tokens"] == 6
    message_delta = events[-2][1]
    assert message_delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert message_delta["usage"]["output_tokens"] == 16
    assert message_delta["usage"]["cache_read_input_tokens"] == 0


def test_anthropic_max_tokens_truncates_with_stop_reason_max_tokens(http):
    response = http.post(
        "/v1/messages", json=anthropic_body(max_tokens=3), headers=ANTHROPIC_HEADERS
    )

    assert response.json()["content"][0]["text"] == "This is a"
    assert response.json()["stop_reason"] == "max_tokens"
    assert response.json()["usage"]["output_tokens"] == 3


def test_anthropic_without_max_tokens_is_a_400_as_upstream_does(http):
    body = anthropic_body()
    del body["max_tokens"]
    response = http.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)

    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }


def test_anthropic_cached_fault_moves_half_the_input_to_cache_read(http):
    headers = {**ANTHROPIC_HEADERS, "x-mock-fault": "cached"}
    plain = http.post("/v1/messages", json=anthropic_body(), headers=headers)
    streamed = http.post("/v1/messages", json=anthropic_body(stream=True), headers=headers)

    assert plain.json()["usage"]["input_tokens"] == 3
    assert plain.json()["usage"]["cache_read_input_tokens"] == 3
    start = anthropic_events(streamed.text)[0][1]
    assert start["message"]["usage"]["cache_read_input_tokens"] == 3


def test_anthropic_no_usage_fault_leaves_usage_out(http):
    headers = {**ANTHROPIC_HEADERS, "x-mock-fault": "no-usage"}
    plain = http.post("/v1/messages", json=anthropic_body(), headers=headers)
    streamed = http.post("/v1/messages", json=anthropic_body(stream=True), headers=headers)

    assert "usage" not in plain.json()
    events = anthropic_events(streamed.text)
    assert "usage" not in events[0][1]["message"]
    assert "usage" not in events[-2][1]


def test_anthropic_tools_get_a_tool_use_block(http):
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    plain = http.post("/v1/messages", json=anthropic_body(tools=tools), headers=ANTHROPIC_HEADERS)
    streamed = http.post(
        "/v1/messages", json=anthropic_body(tools=tools, stream=True), headers=ANTHROPIC_HEADERS
    )

    body = plain.json()
    assert body["stop_reason"] == "tool_use"
    assert body["content"][0]["type"] == "tool_use"
    assert body["content"][0]["name"] == "get_weather"
    assert body["content"][0]["input"] == {}
    events = anthropic_events(streamed.text)
    assert events[1][1]["content_block"]["type"] == "tool_use"
    assert events[3][1]["delta"] == {"type": "input_json_delta", "partial_json": "{}"}


def test_anthropic_errors_use_the_anthropic_error_shape(http):
    refused = http.post("/v1/messages", json=anthropic_body(), headers={"x-api-key": "invalid"})
    limited = http.post(
        "/v1/messages", json=anthropic_body(model="mock-fault-429"), headers=ANTHROPIC_HEADERS
    )
    failed = http.post(
        "/v1/messages", json=anthropic_body(model="mock-fault-500"), headers=ANTHROPIC_HEADERS
    )

    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert failed.status_code == 500
    assert failed.json()["type"] == "error"
    assert failed.json()["error"]["type"] == "api_error"


def test_anthropic_drop_fault_cuts_the_stream_after_two_deltas(http):
    headers = {**ANTHROPIC_HEADERS, "x-mock-fault": "drop"}
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/v1/messages", json=anthropic_body(stream=True), headers=headers) as r,
    ):
        for piece in r.iter_raw():
            received += piece

    events = anthropic_events(received.decode())
    assert [name for name, _ in events][-2:] == ["content_block_delta", "content_block_delta"]
    assert len(events) == 5


# --- Gemini ------------------------------------------------------------------------------------

GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}


def test_gemini_generate_content_replies_with_usage_metadata(http):
    response = http.post(
        "/v1beta/models/gemini-2.0-flash:generateContent",
        json=GEMINI_BODY,
        headers={"x-goog-api-key": "g-test"},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["candidates"] == [
        {
            "content": {"parts": [{"text": REPLY}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ]
    assert body["usageMetadata"] == {
        "promptTokenCount": 6,
        "candidatesTokenCount": 16,
        "totalTokenCount": 22,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 6}],
    }
    assert body["modelVersion"] == "gemini-2.0-flash"


def test_gemini_sse_stream_reassembles_and_frames_events_with_crlf(http):
    response = http.post(
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        params={"alt": "sse"},
        json=GEMINI_BODY,
    )

    assert response.headers["content-type"] == "text/event-stream"
    events = gemini_events(response.text)
    assert len(events) == 16
    text = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events)
    assert text == REPLY
    assert "finishReason" not in events[0]["candidates"][0]
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 16
    assert events[-1]["usageMetadata"]["totalTokenCount"] == 22


def test_gemini_stream_without_alt_sse_is_a_json_array(http):
    response = http.post(
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        json=GEMINI_BODY,
        headers={"x-mock-chunks": "3"},
    )

    items = response.json()
    assert [item["candidates"][0]["content"]["parts"][0]["text"] for item in items] == [
        "This",
        " is",
        " a",
    ]


def test_gemini_max_output_tokens_truncates_with_max_tokens(http):
    body = {**GEMINI_BODY, "generationConfig": {"maxOutputTokens": 2}}
    response = http.post("/v1beta/models/gemini-2.0-flash:generateContent", json=body)

    candidate = response.json()["candidates"][0]
    assert candidate["content"]["parts"] == [{"text": "This is"}]
    assert candidate["finishReason"] == "MAX_TOKENS"


def test_gemini_cached_fault_sets_cached_content_token_count(http):
    response = http.post(
        "/v1beta/models/mock-fault-cached:generateContent",
        json=GEMINI_BODY,
    )

    usage = response.json()["usageMetadata"]
    assert usage["promptTokenCount"] == 6
    assert usage["cachedContentTokenCount"] == 3


def test_gemini_function_declarations_get_a_function_call(http):
    body = {**GEMINI_BODY, "tools": [{"functionDeclarations": [{"name": "get_weather"}]}]}
    response = http.post("/v1beta/models/gemini-2.0-flash:generateContent", json=body)

    assert response.json()["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {}}}
    ]


def test_gemini_errors_use_the_google_error_shape(http):
    refused = http.post(
        "/v1beta/models/gemini-2.0-flash:generateContent",
        params={"key": "invalid"},
        json=GEMINI_BODY,
    )
    failed = http.post("/v1beta/models/mock-fault-500:generateContent", json=GEMINI_BODY)

    assert refused.status_code == 401
    assert refused.json()["error"]["status"] == "UNAUTHENTICATED"
    assert refused.json()["error"]["code"] == 401
    assert failed.status_code == 500
    assert failed.json()["error"]["status"] == "INTERNAL"


# --- HTTP robustness ---------------------------------------------------------------------------


def test_a_chunked_request_body_is_read_whole(http, mock):
    payload = json.dumps({"model": "m", "messages": MESSAGES}).encode()

    def pieces():
        for start in range(0, len(payload), 7):
            yield payload[start : start + 7]

    response = http.post("/v1/chat/completions", content=pieces())

    assert response.json()["choices"][0]["message"]["content"] == REPLY
    last = mock.last_request
    assert last["headers"]["transfer-encoding"] == "chunked"
    assert last["json"] == {"model": "m", "messages": MESSAGES}


def test_a_large_body_is_counted_exactly(client):
    big = "x" * 5_000_001
    completion = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": big}]
    )

    assert completion.usage.prompt_tokens == 1_250_001


def test_pipelined_requests_on_one_connection_are_answered_in_order(mock):
    chat = json.dumps({"model": "m", "messages": MESSAGES}).encode()
    requests = (
        b"GET /v1/models/first HTTP/1.1\r\nhost: x\r\n\r\n"
        + b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: "
        + str(len(chat)).encode()
        + b"\r\nx-mock-latency-ms: 50\r\n\r\n"
        + chat
        + b"GET /v1/models/third HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", mock.port), timeout=5) as sock:
        sock.sendall(requests)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk

    assert received.count(b"HTTP/1.1 200 OK\r\n") == 3
    first = received.index(b'"id":"first"')
    second = received.index(REPLY.encode())
    third = received.index(b'"id":"third"')
    assert first < second < third


def test_a_garbage_request_gets_a_400_and_the_connection_closes(mock):
    with socket.create_connection(("127.0.0.1", mock.port), timeout=5) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk

    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")


# --- Statistics and the last request -----------------------------------------------------------


def test_stats_count_requests_streams_and_paths(client, http, mock):
    client.chat.completions.create(model="m", messages=MESSAGES)
    list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    client.embeddings.create(model="e", input="x")

    expected = {
        "requests": 3,
        "requests_cancelled": 0,
        "streams_started": 1,
        "streams_completed": 1,
        "streams_cancelled": 0,
        "streams_dropped": 0,
        "stream_events_sent": 19,
        "by_path": {"/v1/chat/completions": 2, "/v1/embeddings": 1},
        "by_fault": {},
    }
    assert mock.stats == expected
    assert http.get("/_mock/stats").json() == expected


def test_reset_zeroes_the_counters_over_http(client, http, mock):
    client.models.list()

    reset = http.post("/_mock/reset")

    assert reset.json()["requests"] == 0
    assert mock.stats["requests"] == 0
    assert mock.stats["by_path"] == {}
    assert http.get("/_mock/last").json() is None


def test_the_last_request_records_body_and_headers_for_relay_tests(client, http, mock):
    client.chat.completions.create(
        model="upstream-name",
        messages=MESSAGES,
        max_tokens=7,
        extra_headers={"x-custom": "yes"},
    )

    last = mock.last_request
    assert last["method"] == "POST"
    assert last["path"] == "/v1/chat/completions"
    assert last["json"]["model"] == "upstream-name"
    assert last["json"]["max_tokens"] == 7
    assert last["headers"]["authorization"] == "Bearer sk-test"
    assert last["headers"]["x-custom"] == "yes"
    assert http.get("/_mock/last").json() == last


def test_control_endpoints_are_not_counted(http, mock):
    http.get("/_mock/stats")
    http.get("/_mock/last")

    assert mock.stats["requests"] == 0


# --- Client disconnects ------------------------------------------------------------------------


def test_a_client_that_leaves_mid_stream_is_counted_and_the_stream_stops(http, mock):
    headers = {"x-mock-chunks": "500", "x-mock-chunk-delay-ms": "20"}
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    # Leaving the block closed the connection before the stream's end.

    stats = mock.wait_for(lambda s: s["streams_cancelled"] == 1, timeout=5)
    time.sleep(0.2)
    after = mock.stats
    assert after["stream_events_sent"] == stats["stream_events_sent"]  # nothing more was sent
    assert after["stream_events_sent"] < 100
    assert after["streams_completed"] == 0
    assert after["streams_started"] == 1


def test_a_client_that_leaves_during_latency_is_counted_as_a_cancelled_request(http, mock):
    with pytest.raises(httpx.ReadTimeout):
        http.get("/v1/models", headers={"x-mock-latency-ms": "5000"}, timeout=0.2)

    stats = mock.wait_for(lambda s: s["requests_cancelled"] == 1)
    assert stats["streams_started"] == 0


# --- MockUpstream itself -----------------------------------------------------------------------


def test_mock_upstream_serves_on_a_free_port_until_stopped():
    with MockUpstream() as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert httpx.get(f"{server.base_url}/models").status_code == 200
        port = server.port

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models")


# --- The management command --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--port=70000"], "argument --port: must be between 1 and 65535: 70000"),
        (["--port=0"], "argument --port: must be between 1 and 65535: 0"),
        (["--port=http"], "argument --port: not a whole number: 'http'"),
        (["--port=8001", "--latency-ms=-5"], "argument --latency-ms: must not be negative: -5"),
        (
            ["--port=8001", "--chunk-delay-ms=-1"],
            "argument --chunk-delay-ms: must not be negative: -1",
        ),
    ],
)
def test_the_command_rejects_bad_arguments(arguments, message):
    with pytest.raises(CommandError) as caught:
        call_command("mock_upstream", *arguments)

    assert str(caught.value).removeprefix("Error: ") == message


def test_the_command_rejects_bad_keyword_arguments():
    with pytest.raises(CommandError) as caught:
        call_command("mock_upstream", port=8001, latency_ms=-3)

    assert str(caught.value) == "argument --latency-ms: must not be negative: -3"


def test_the_command_reports_a_port_in_use(mock):
    with pytest.raises(CommandError) as caught:
        call_command("mock_upstream", port=mock.port)

    assert str(caught.value) == f"cannot listen on 127.0.0.1:{mock.port}: Address already in use"


def run_manage(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_command_serves_until_interrupted():
    port = free_port()
    process = run_manage("mock_upstream", f"--port={port}", "--latency-ms=10")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the mock never answered"
            time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk", max_retries=0)
        completion = client.chat.completions.create(model="m", messages=MESSAGES)
        assert completion.choices[0].message.content == REPLY

        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, stderr
    assert stdout.splitlines() == [
        f"Mock upstream listening on http://127.0.0.1:{port}/v1 "
        "(latency 10 ms, chunk delay 0 ms); Ctrl-C to stop.",
        "Mock upstream stopped.",
    ]
    assert stderr == ""


def test_the_command_exits_1_with_one_line_on_bad_arguments():
    process = run_manage("mock_upstream", "--port=99999")
    stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 1
    assert stdout == ""
    assert stderr == "error: argument --port: must be between 1 and 65535: 99999\n"


# --- Prompt-cache writes and the Responses API (brief I) ----------------------------------------


def test_a_cache_control_breakpoint_reports_half_the_uncached_prompt_as_written(http):
    system = [{"type": "text", "text": "x" * 15, "cache_control": {"type": "ephemeral"}}]
    plain = http.post("/v1/messages", json=anthropic_body(system=system), headers=ANTHROPIC_HEADERS)
    cached = http.post(
        "/v1/messages", json=anthropic_body(system=system, model="mock-fault-cached"),
        headers=ANTHROPIC_HEADERS,
    )  # fmt: skip

    # 9 prompt tokens: 4 written; with the cached fault 4 read, then 2 of the other 5 written.
    assert plain.json()["usage"] == {
        "input_tokens": 5, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 0,
        "output_tokens": 16,
    }  # fmt: skip
    assert cached.json()["usage"] == {
        "input_tokens": 3, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 4,
        "output_tokens": 16,
    }  # fmt: skip


def test_responses_reply_plain_and_streamed_with_the_same_text_and_usage(client):
    plain = client.responses.create(model="gpt-4o-mini", input=PROMPT)
    events = list(client.responses.create(model="gpt-4o-mini", input=PROMPT, stream=True))

    assert plain.output_text == REPLY
    assert (plain.status, plain.usage.input_tokens, plain.usage.output_tokens) == (
        "completed", 6, 16,
    )  # fmt: skip
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added",
    ]  # fmt: skip
    assert types[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY
    assert events[-1].response.usage == plain.usage


def test_responses_honour_max_output_tokens_and_tools(client):
    short = client.responses.create(model="gpt-4o-mini", input=PROMPT, max_output_tokens=3)
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    called = client.responses.create(model="gpt-4o-mini", input=PROMPT, tools=tools)

    assert (short.status, short.output_text) == ("incomplete", "This is a")
    assert short.incomplete_details.reason == "max_output_tokens"
    [item] = called.output
    assert (item.type, item.name, item.arguments) == ("function_call", "lookup", "{}")
