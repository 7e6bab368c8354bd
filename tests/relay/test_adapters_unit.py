"""The Anthropic and Gemini translations on their own: requests, answers and streams."""

import orjson
import pytest

from relay.adapters import adapter_for
from relay.adapters import anthropic as anthropic_module
from relay.adapters.anthropic import ANTHROPIC, AnthropicStream
from relay.adapters.anthropic import chat_request as anthropic_request
from relay.adapters.anthropic import chat_response as anthropic_response
from relay.adapters.gemini import GEMINI, GeminiStream, gemini_schema
from relay.adapters.gemini import chat_request as gemini_request
from relay.adapters.gemini import chat_response as gemini_response
from relay.calls import _loggable
from relay.http import RelayError
from relay.metering import Usage
from relay.routing import Route
from relay.streaming import SSEMeter
from relay.upstream import UpstreamFailure, failure_from_status

NOW = 1_700_000_000


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch):
    monkeypatch.setattr(anthropic_module, "now", lambda: NOW)


def route(type: str, base_url: str, api_key: str = "secret-key") -> Route:
    return Route(
        channel_id=1, name=type, type=type, base_url=base_url, api_key=api_key, model_mapping={},
        priority=0, weight=1, connect_timeout=5.0, read_timeout=60.0, cooldown_until=0.0,
        had_failures=False,
    )  # fmt: skip


def events(data: bytes) -> list:
    """OpenAI SSE bytes as a list of parsed events ("[DONE]" kept as the string)."""
    assert data == b"" or data.endswith(b"\n\n")
    out = []
    for raw in data.split(b"\n\n")[:-1]:
        assert raw.startswith(b"data: ")
        payload = raw[len(b"data: ") :]
        out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


def fed(translator, stream: bytes, step: int) -> bytes:
    pieces = [stream[i : i + step] for i in range(0, len(stream), step)]
    return b"".join(translator.feed(piece) for piece in pieces) + translator.close()


def chunk(id: str, model: str, delta: dict, finish_reason: str | None = None, index: int = 0):
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": NOW,
        "model": model,
        "choices": [
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ],
    }


def usage_chunk(id: str, model: str, usage: dict) -> dict:
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": NOW,
        "model": model,
        "choices": [],
        "usage": usage,
    }


def usage(prompt: int, completion: int, cached: int = 0) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": {
                "type": "object",
                "properties": {"word": {"type": "string"}},
                "required": ["word"],
                "additionalProperties": False,
            },
        },
    }
]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [
        {"type": "text", "text": "What are these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp"}},
    ]},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "lookup", "arguments": '{"word": "cat"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": ""}},
    ]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"meaning": "a small feline"}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "no word given"},
    {"role": "user", "content": "Thanks."},
]  # fmt: skip


# --- both ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adapter", "provider"),
    [(ANTHROPIC, "Anthropic"), (GEMINI, "Gemini")],
    ids=["anthropic", "gemini"],
)
@pytest.mark.parametrize("endpoint", ["completions", "embeddings"])
def test_endpoints_other_than_chat_are_refused_as_not_implemented(adapter, provider, endpoint):
    with pytest.raises(RelayError) as excinfo:
        adapter.request(route("x", "https://x"), endpoint, {"model": "m", "input": "a"}, False)

    error = excinfo.value
    assert (error.status, error.code) == (501, "conversion_not_implemented")
    assert error.message == (
        f"{provider} channels do not support {endpoint}: conversion not implemented."
    )


def test_the_channel_type_picks_the_adapter():
    assert adapter_for(route("anthropic", "https://x")) is ANTHROPIC
    assert adapter_for(route("gemini", "https://x")) is GEMINI


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"type":"error","error":{"type":"invalid_request_error","message":"bad tools"}}',
         "bad tools"),
        (b'{"error":{"code":400,"message":"bad contents","status":"INVALID_ARGUMENT"}}',
         "bad contents"),
    ],
    ids=["anthropic", "gemini"],
)  # fmt: skip
def test_a_refusal_from_either_provider_reaches_the_client_with_its_message(body, message):
    failure = failure_from_status(400, body, retry_after=None)

    assert (failure.status, failure.message, failure.code) == (400, message, "upstream_rejected")
    assert not failure.retryable


# --- Anthropic requests -------------------------------------------------------------------------


def test_an_anthropic_request_moves_the_system_prompt_up_and_keeps_the_parameters():
    body = {
        "model": "claude-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
        ],
        "max_completion_tokens": 300,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "END",
        "user": "user-7",
        "seed": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    assert anthropic_request(body) == {
        "model": "claude-x",
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        "max_tokens": 300,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-7"},
        "stream": True,
    }


def test_an_anthropic_request_carries_images_tool_calls_and_tool_results():
    body = {"model": "claude-x", "messages": CONVERSATION, "max_tokens": 50, "tools": TOOLS}

    assert anthropic_request(body) == {
        "model": "claude-x",
        "system": "Be brief.",
        "max_tokens": 50,
        "tools": [{
            "name": "lookup",
            "description": "Look a word up.",
            "input_schema": TOOLS[0]["function"]["parameters"],
        }],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What are these?"},
                {"type": "image", "source": {
                    "type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {
                    "type": "url", "url": "https://example.com/cat.webp"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"word": "cat"}},
                {"type": "tool_use", "id": "call_2", "name": "lookup", "input": {}},
            ]},
            # Both results and the next user words in the one user turn Anthropic requires.
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1",
                 "content": '{"meaning": "a small feline"}'},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "no word given"},
                {"type": "text", "text": "Thanks."},
            ]},
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "lookup"}}, None,
         {"type": "tool", "name": "lookup"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ],
)  # fmt: skip
def test_tool_choice_becomes_anthropics_tool_choice(tool_choice, parallel, expected):
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "tools": TOOLS}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel

    assert anthropic_request(body).get("tool_choice") == expected


def test_an_anthropic_channel_refuses_more_than_one_choice():
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "n": 2}

    with pytest.raises(RelayError) as excinfo:
        anthropic_request(body)

    assert (excinfo.value.status, excinfo.value.param) == (400, "n")
    assert (
        excinfo.value.message == "Anthropic channels return one choice per request: 'n' must be 1."
    )


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
         "Anthropic channels do not support 'input_audio' content parts."),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]},
         "An image URL must be http(s) or a base64 data: URL."),
        ({"role": "assistant", "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "[1]"}}]},
         "A tool call's 'arguments' must be a JSON object."),
        ({"role": "tool", "content": "x"}, "A 'tool' message needs the 'tool_call_id' it answers."),
    ],
)  # fmt: skip
def test_an_untranslatable_anthropic_message_is_refused_with_a_clear_400(message, error):
    with pytest.raises(RelayError) as excinfo:
        anthropic_request({"model": "m", "messages": [message]})

    assert (excinfo.value.status, excinfo.value.message) == (400, error)


def test_the_anthropic_request_sends_the_key_in_a_header_to_the_messages_url():
    body = {"model": "claude-x", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 9}

    upstream = ANTHROPIC.request(
        route("anthropic", "https://api.anthropic.com/v1"), "chat.completions", body, True
    )

    assert upstream.url == "https://api.anthropic.com/v1/messages"
    assert upstream.headers == {
        "content-type": "application/json",
        "accept-encoding": "identity",
        "anthropic-version": "2023-06-01",
        "x-api-key": "secret-key",
    }
    assert orjson.loads(upstream.content)["stream"] is True


# --- Anthropic answers --------------------------------------------------------------------------


def test_an_anthropic_message_becomes_a_chat_completion_with_cache_reads_counted_in_the_prompt():
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x-2025",
        "content": [
            {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
            {"type": "text", "text": "Hello"},
            {"type": "text", "text": " there"},
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 20,
            "output_tokens": 7,
        },
    }

    assert anthropic_response(message, "claude-x") == {
        "id": "msg_1",
        "object": "chat.completion",
        "created": NOW,
        "model": "claude-x-2025",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there", "reasoning_content": "Hmm."},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": usage(35, 7, cached=20),
    }  # fmt: skip


def test_an_anthropic_tool_use_becomes_tool_calls():
    message = {
        "id": "msg_2",
        "model": "claude-x",
        "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"word": "cat"}}
        ],
        "stop_reason": "tool_use",
    }

    assert anthropic_response(message, "claude-x")["choices"] == [{
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [{
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"word":"cat"}'},
            }],
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }]  # fmt: skip
    assert "usage" not in anthropic_response(message, "claude-x")  # counted locally instead


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
     ("tool_use", "tool_calls"), ("refusal", "content_filter")],
)  # fmt: skip
def test_anthropic_stop_reasons_become_openai_finish_reasons(stop_reason, finish_reason):
    message = {"id": "m", "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}

    assert anthropic_response(message, "m")["choices"][0]["finish_reason"] == finish_reason


def test_an_anthropic_answer_without_content_is_an_invalid_upstream_response():
    with pytest.raises(UpstreamFailure) as excinfo:
        anthropic_response({"type": "message"}, "m")

    assert (excinfo.value.status, excinfo.value.retryable) == (502, True)


# --- Anthropic streams --------------------------------------------------------------------------


def anthropic_event(payload: dict) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


ANTHROPIC_TEXT_STREAM = b"".join([
    anthropic_event({"type": "message_start", "message": {
        "id": "msg_s", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 8, "cache_read_input_tokens": 4,
                                       "cache_creation_input_tokens": 0, "output_tokens": 1}}}),
    anthropic_event({"type": "content_block_start", "index": 0,
                     "content_block": {"type": "text", "text": ""}}),
    anthropic_event({"type": "ping"}),
    anthropic_event({"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": "Héllo"}}),
    anthropic_event({"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": " there"}}),
    anthropic_event({"type": "content_block_stop", "index": 0}),
    anthropic_event({"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                     "usage": {"output_tokens": 2}}),
    anthropic_event({"type": "message_stop"}),
])  # fmt: skip
ANTHROPIC_TEXT_EVENTS = [
    chunk("msg_s", "claude-x", {"role": "assistant", "content": ""}),
    chunk("msg_s", "claude-x", {"content": "Héllo"}),
    chunk("msg_s", "claude-x", {"content": " there"}),
    chunk("msg_s", "claude-x", {}, "length"),
    usage_chunk("msg_s", "claude-x", usage(12, 2, cached=4)),
    "[DONE]",
]


@pytest.mark.parametrize("step", [1, 2, 7, 64, 100_000])
def test_an_anthropic_stream_translates_the_same_however_its_bytes_are_split(step):
    assert events(fed(AnthropicStream("m", True), ANTHROPIC_TEXT_STREAM, step)) == (
        ANTHROPIC_TEXT_EVENTS
    )


def test_an_anthropic_stream_framed_with_crlf_translates_the_same():
    crlf = ANTHROPIC_TEXT_STREAM.replace(b"\n", b"\r\n")

    assert events(fed(AnthropicStream("m", True), crlf, 3)) == ANTHROPIC_TEXT_EVENTS


def test_an_anthropic_stream_leaves_the_usage_chunk_out_when_not_asked():
    out = events(fed(AnthropicStream("m", False), ANTHROPIC_TEXT_STREAM, 100_000))

    assert out == [e for e in ANTHROPIC_TEXT_EVENTS if e == "[DONE]" or e["choices"]]


def test_an_anthropic_streamed_tool_call_becomes_tool_call_deltas():
    stream = b"".join([
        anthropic_event({"type": "message_start", "message": {
            "id": "msg_t", "model": "claude-x", "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        anthropic_event({"type": "content_block_start", "index": 0,
                         "content_block": {"type": "text", "text": ""}}),
        anthropic_event({"type": "content_block_delta", "index": 0,
                         "delta": {"type": "text_delta", "text": "Looking."}}),
        anthropic_event({"type": "content_block_stop", "index": 0}),
        anthropic_event({"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {}}}),
        anthropic_event({"type": "content_block_delta", "index": 1,
                         "delta": {"type": "input_json_delta", "partial_json": ""}}),
        anthropic_event({"type": "content_block_delta", "index": 1,
                         "delta": {"type": "input_json_delta", "partial_json": '{"word": '}}),
        anthropic_event({"type": "content_block_delta", "index": 1,
                         "delta": {"type": "input_json_delta", "partial_json": '"cat"}'}}),
        anthropic_event({"type": "content_block_stop", "index": 1}),
        anthropic_event({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                         "usage": {"output_tokens": 20}}),
        anthropic_event({"type": "message_stop"}),
    ])  # fmt: skip

    assert events(fed(AnthropicStream("m", True), stream, 5)) == [
        chunk("msg_t", "claude-x", {"role": "assistant", "content": ""}),
        chunk("msg_t", "claude-x", {"content": "Looking."}),
        chunk("msg_t", "claude-x", {"tool_calls": [{
            "index": 0, "id": "toolu_9", "type": "function",
            "function": {"name": "lookup", "arguments": ""}}]}),
        chunk("msg_t", "claude-x", {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"word": '}}]}),
        chunk("msg_t", "claude-x", {"tool_calls": [
            {"index": 0, "function": {"arguments": '"cat"}'}}]}),
        chunk("msg_t", "claude-x", {}, "tool_calls"),
        usage_chunk("msg_t", "claude-x", usage(5, 20)),
        "[DONE]",
    ]  # fmt: skip


def test_an_anthropic_stream_cut_before_message_stop_never_says_done():
    cut = ANTHROPIC_TEXT_STREAM[: ANTHROPIC_TEXT_STREAM.index(b"event: message_delta")]

    out = events(fed(AnthropicStream("m", True), cut, 10))

    assert out == ANTHROPIC_TEXT_EVENTS[:3]


def test_an_anthropic_error_event_becomes_an_openai_error_event():
    stream = ANTHROPIC_TEXT_STREAM[: ANTHROPIC_TEXT_STREAM.index(b"event: content_block_stop")]
    stream += anthropic_event(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )

    out = events(fed(AnthropicStream("m", True), stream, 100_000))

    assert out[-1] == {
        "error": {
            "message": "Overloaded",
            "type": "upstream_error",
            "param": None,
            "code": "overloaded_error",
        }
    }
    assert "[DONE]" not in out


def test_a_malformed_anthropic_event_is_handed_on_for_the_meter_to_flag():
    stream = ANTHROPIC_TEXT_STREAM.replace(
        b'data: {"type":"ping"}', b'data: {"type": "content_bl', 1
    )
    translator = AnthropicStream("m", True)
    meter = SSEMeter(show_usage=False, cost_for=lambda usage: 0.0)

    forwarded = meter.feed(fed(translator, stream, 100_000))

    assert meter.malformed
    assert [events(event)[0] for event in forwarded] == ANTHROPIC_TEXT_EVENTS[:1]


# --- Gemini requests ----------------------------------------------------------------------------


def test_a_gemini_request_moves_the_system_prompt_and_puts_the_parameters_in_generation_config():
    body = {
        "model": "gemini-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "user", "content": "Again"},
        ],
        "max_tokens": 300,
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 2,
        "seed": 3,
        "stop": ["END", "STOP"],
        "response_format": {"type": "json_object"},
        "stream": True,
    }

    assert gemini_request(body) == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hello"}]},
            {"role": "model", "parts": [{"text": "Bonjour"}]},
            {"role": "user", "parts": [{"text": "Again"}]},
        ],
        "generationConfig": {
            "maxOutputTokens": 300,
            "temperature": 0.5,
            "topP": 0.9,
            "candidateCount": 2,
            "seed": 3,
            "stopSequences": ["END", "STOP"],
            "responseMimeType": "application/json",
        },
    }


def test_a_gemini_request_carries_images_function_calls_and_function_responses():
    body = {"model": "gemini-x", "messages": CONVERSATION, "max_tokens": 50, "tools": TOOLS}

    assert gemini_request(body) == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [
                {"text": "What are these?"},
                {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
                {"fileData": {"mimeType": "image/webp",
                              "fileUri": "https://example.com/cat.webp"}},
            ]},
            {"role": "model", "parts": [
                {"text": "Let me look."},
                {"functionCall": {"name": "lookup", "args": {"word": "cat"}}},
                {"functionCall": {"name": "lookup", "args": {}}},
            ]},
            # Gemini matches results by function name, looked up from the calls' ids.
            {"role": "user", "parts": [
                {"functionResponse": {"name": "lookup",
                                      "response": {"meaning": "a small feline"}}},
                {"functionResponse": {"name": "lookup",
                                      "response": {"content": "no word given"}}},
                {"text": "Thanks."},
            ]},
        ],
        "tools": [{"functionDeclarations": [{
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": {
                "type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"],
            },
        }]}],
        "generationConfig": {"maxOutputTokens": 50},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        (None, None),
        ("none", {"functionCallingConfig": {"mode": "NONE"}}),
        ("auto", {"functionCallingConfig": {"mode": "AUTO"}}),
        ("required", {"functionCallingConfig": {"mode": "ANY"}}),
        ({"type": "function", "function": {"name": "lookup"}},
         {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}}),
    ],
)  # fmt: skip
def test_tool_choice_becomes_geminis_function_calling_config(tool_choice, expected):
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "tools": TOOLS}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice

    assert gemini_request(body).get("toolConfig") == expected


def test_a_function_without_parameters_is_declared_without_any():
    tools = [{"type": "function", "function": {
        "name": "now", "parameters": {"type": "object", "properties": {}}}}]  # fmt: skip

    request = gemini_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}],
                              "tools": tools})  # fmt: skip

    assert request["tools"] == [{"functionDeclarations": [{"name": "now"}]}]


def test_a_json_schema_response_format_becomes_a_gemini_response_schema():
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "name": {"type": ["string", "null"], "description": "Who."},
            "kind": {"const": "cat"},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
        },
        "required": ["name", "kind", "tags"],
        "additionalProperties": False,
        "$defs": {"tag": {"type": "string", "enum": ["a", "b"], "additionalProperties": False}},
    }
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "pet", "strict": True, "schema": schema}},
    }  # fmt: skip

    assert gemini_request(body)["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "object",
            "properties": {
                "name": {"nullable": True, "type": "string", "description": "Who."},
                "kind": {"enum": ["cat"]},
                "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
            },
            "required": ["name", "kind", "tags"],
        },
    }


def test_a_recursive_schema_is_unrolled_only_so_far():
    schema = {"$ref": "#/$defs/node", "$defs": {"node": {
        "type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}}}  # fmt: skip

    depth, node = 0, gemini_schema(schema)
    while node.get("properties"):
        depth, node = depth + 1, node["properties"]["child"]

    assert 10 < depth < 40


def test_a_tool_result_for_an_unknown_call_is_refused_for_gemini():
    messages = [{"role": "tool", "tool_call_id": "call_x", "content": "42"}]

    with pytest.raises(RelayError) as excinfo:
        gemini_request({"model": "m", "messages": messages})

    assert excinfo.value.message == (
        "A 'tool' message must answer a tool call of an earlier assistant message."
    )


@pytest.mark.parametrize(
    ("stream", "url"),
    [
        (False, "https://generativelanguage.googleapis.com/v1beta/models/gemini-x:generateContent"),
        (True, "https://generativelanguage.googleapis.com/v1beta/models/gemini-x"
               ":streamGenerateContent?alt=sse"),
    ],
)  # fmt: skip
def test_the_gemini_request_sends_the_key_in_a_header_never_in_the_url(stream, url):
    body = {"model": "models/gemini-x", "messages": [{"role": "user", "content": "Hi"}]}
    base_url = "https://generativelanguage.googleapis.com/v1beta"

    upstream = GEMINI.request(route("gemini", base_url), "chat.completions", body, stream)

    assert upstream.url == url
    assert "secret-key" not in upstream.url
    assert upstream.headers == {
        "content-type": "application/json",
        "accept-encoding": "identity",
        "x-goog-api-key": "secret-key",
    }
    assert "model" not in orjson.loads(upstream.content)


# --- Gemini answers -----------------------------------------------------------------------------


def test_a_gemini_answer_becomes_a_chat_completion_with_thoughts_billed_as_output():
    answer = {
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "Thinking…", "thought": True}, {"text": "Hello"}, {"text": " there"}]},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": {
            "promptTokenCount": 30, "candidatesTokenCount": 5, "thoughtsTokenCount": 11,
            "cachedContentTokenCount": 20, "totalTokenCount": 46,
        },
        "modelVersion": "gemini-x-001",
        "responseId": "abc",
    }  # fmt: skip

    assert gemini_response(answer, "gemini-x") == {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": NOW,
        "model": "gemini-x-001",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there",
                        "reasoning_content": "Thinking…"},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": usage(30, 16, cached=20),
    }  # fmt: skip


def test_a_gemini_function_call_becomes_tool_calls_with_ids_of_our_own():
    answer = {
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"functionCall": {"name": "lookup", "args": {"word": "cat"}}},
                {"functionCall": {"name": "lookup", "args": {"word": "dog"}}},
            ]},
            "finishReason": "STOP",
        }],
        "responseId": "abc",
    }  # fmt: skip

    assert gemini_response(answer, "gemini-x")["choices"] == [{
        "index": 0,
        "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc_0", "type": "function",
             "function": {"name": "lookup", "arguments": '{"word":"cat"}'}},
            {"id": "call_abc_1", "type": "function",
             "function": {"name": "lookup", "arguments": '{"word":"dog"}'}},
        ]},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }]  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "finish_reason"),
    [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
     ("RECITATION", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"),
     ("OTHER", "stop")],
)  # fmt: skip
def test_gemini_finish_reasons_become_openai_finish_reasons(reason, finish_reason):
    answer = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}

    assert gemini_response(answer, "m")["choices"][0]["finish_reason"] == finish_reason


def test_a_blocked_gemini_prompt_becomes_an_empty_filtered_choice():
    answer = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "responseId": "abc",
    }

    response = gemini_response(answer, "m")

    assert response["choices"] == [{
        "index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None,
        "finish_reason": "content_filter",
    }]  # fmt: skip
    assert response["usage"] == usage(9, 0)


def test_a_gemini_answer_without_candidates_is_an_invalid_upstream_response():
    with pytest.raises(UpstreamFailure) as excinfo:
        gemini_response({"usageMetadata": {}}, "m")

    assert (excinfo.value.status, excinfo.value.retryable) == (502, True)


# --- Gemini streams -----------------------------------------------------------------------------


def gemini_event(parts: list, finish: str | None = None, produced: int = 0) -> bytes:
    candidate: dict = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    payload = {
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": produced,
                          "cachedContentTokenCount": 4},
        "modelVersion": "gemini-x",
        "responseId": "r1",
    }  # fmt: skip
    # Gemini frames its events with CRLF pairs.
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


GEMINI_TEXT_STREAM = (
    gemini_event([{"text": "Héllo"}], produced=1)
    + gemini_event([{"text": " there"}], produced=2)
    + gemini_event([{"text": "!"}], "MAX_TOKENS", produced=3)
)
GEMINI_TEXT_EVENTS = [
    chunk("chatcmpl-r1", "gemini-x", {"role": "assistant", "content": ""}),
    chunk("chatcmpl-r1", "gemini-x", {"content": "Héllo"}),
    chunk("chatcmpl-r1", "gemini-x", {"content": " there"}),
    chunk("chatcmpl-r1", "gemini-x", {"content": "!"}),
    chunk("chatcmpl-r1", "gemini-x", {}, "length"),
    usage_chunk("chatcmpl-r1", "gemini-x", usage(8, 3, cached=4)),
    "[DONE]",
]


@pytest.mark.parametrize("step", [1, 2, 7, 64, 100_000])
def test_a_gemini_stream_translates_the_same_however_its_bytes_are_split(step):
    assert events(fed(GeminiStream("m", True), GEMINI_TEXT_STREAM, step)) == GEMINI_TEXT_EVENTS


def test_a_gemini_stream_says_done_only_once_it_has_ended():
    translator = GeminiStream("m", True)

    before_end = events(translator.feed(GEMINI_TEXT_STREAM))

    assert before_end == GEMINI_TEXT_EVENTS[:5]
    assert events(translator.close()) == GEMINI_TEXT_EVENTS[5:]


def test_a_gemini_stream_whose_last_event_lacks_its_blank_line_still_ends_properly():
    stream = GEMINI_TEXT_STREAM.removesuffix(b"\r\n\r\n")

    assert events(fed(GeminiStream("m", True), stream, 100_000)) == GEMINI_TEXT_EVENTS


def test_a_gemini_stream_cut_before_a_finish_reason_never_says_done():
    cut = gemini_event([{"text": "Héllo"}], produced=1) + gemini_event([{"text": " there"}])

    assert events(fed(GeminiStream("m", True), cut, 10)) == GEMINI_TEXT_EVENTS[:3]


def test_a_gemini_streamed_function_call_becomes_a_name_then_arguments():
    stream = gemini_event(
        [{"functionCall": {"name": "lookup", "args": {"word": "cat"}}}], "STOP", produced=2
    )

    assert events(fed(GeminiStream("m", True), stream, 100_000)) == [
        chunk("chatcmpl-r1", "gemini-x", {"role": "assistant", "content": ""}),
        chunk("chatcmpl-r1", "gemini-x", {"tool_calls": [{
            "index": 0, "id": "call_r1_0", "type": "function",
            "function": {"name": "lookup", "arguments": ""}}]}),
        chunk("chatcmpl-r1", "gemini-x", {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"word":"cat"}'}}]}),
        chunk("chatcmpl-r1", "gemini-x", {}, "tool_calls"),
        usage_chunk("chatcmpl-r1", "gemini-x", usage(8, 2, cached=4)),
        "[DONE]",
    ]  # fmt: skip


def test_a_gemini_error_event_becomes_an_openai_error_event_and_no_done():
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    stream = gemini_event([{"text": "Héllo"}]) + b"data: " + orjson.dumps(error) + b"\r\n\r\n"

    out = events(fed(GeminiStream("m", True), stream, 100_000))

    assert out[-1] == {
        "error": {
            "message": "The model is overloaded.",
            "type": "upstream_error",
            "param": None,
            "code": "UNAVAILABLE",
        }
    }
    assert "[DONE]" not in out


def test_a_malformed_gemini_event_is_handed_on_and_nothing_after_it():
    stream = (
        gemini_event([{"text": "Héllo"}])
        + b'data: {"candidates": [{"content": \r\n\r\n'
        + gemini_event([{"text": "!"}], "STOP")
    )

    out = fed(GeminiStream("m", True), stream, 4)

    assert out.endswith(b'data: {"candidates": [{"content": \n\n')
    meter = SSEMeter(show_usage=False, cost_for=lambda usage: 0.0)
    assert len(meter.feed(out)) == 2
    assert meter.malformed


def test_absurd_provider_token_counts_are_clamped_to_what_the_log_stores():
    usage = Usage.from_openai(
        {"prompt_tokens": 2**40, "completion_tokens": -5, "prompt_tokens_details": "x"}
    )

    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (2**31 - 1, 0, 0)
    assert Usage.from_openai({"prompt_tokens": float("inf")}) is None


def test_a_nul_character_from_the_upstream_is_dropped_from_the_log():
    assert _loggable("he\x00llo") == "hello"
    assert _loggable("plain") == "plain"
