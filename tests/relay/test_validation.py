"""The checks of a /v1 request body (relay/validation.py), on their own."""

import copy

import orjson
import pytest

from relay.adapters import anthropic, gemini
from relay.http import RelayError
from relay.validation import MAX_DEPTH, validate_body

CHAT = "chat.completions"
HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hello there"}]}
PROMPT = {"model": "gpt-test", "prompt": "Say hi"}
EMBED = {"model": "embed-test", "input": "one"}


@pytest.fixture(autouse=True)
def _relay_quiet():
    """Overrides the package's: these tests start no relay and touch no database."""


def refusal(body: dict, endpoint: str = CHAT) -> RelayError:
    with pytest.raises(RelayError) as caught:
        validate_body(body, endpoint)
    return caught.value


def code_and_param(body: dict, endpoint: str = CHAT) -> tuple[int, str, str | None]:
    error = refusal(body, endpoint)
    return error.status, error.code, error.param


def nested(levels: int, leaf: object = 1) -> object:
    """`leaf` inside `levels` arrays."""
    for _ in range(levels):
        leaf = [leaf]
    return leaf


def test_the_bodies_that_were_500s_are_400s_naming_the_field():
    assert code_and_param({**HELLO, "max_tokens": 9223372036854775807}) == (
        400, "invalid_value", "max_tokens",
    )  # fmt: skip
    assert code_and_param({**HELLO, "n": 4611686018427387904}) == (400, "invalid_value", "n")
    assert code_and_param({**HELLO, "stream_options": "x"}) == (
        400, "invalid_type", "stream_options",
    )  # fmt: skip
    assert code_and_param({**HELLO, "tools": [1, {"function": 5}]}) == (
        400, "invalid_type", "tools[0]",
    )  # fmt: skip


def test_a_refusal_has_openais_error_shape_and_says_what_was_expected():
    error = refusal({**HELLO, "max_tokens": 9223372036854775807})

    assert error.body() == {
        "error": {
            "message": "Invalid value for 'max_tokens': expected an integer between 1 and "
            "2147483647, but got 9223372036854775807 instead.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "invalid_value",
        }
    }
    assert refusal({**HELLO, "stream_options": "x"}).message == (
        "Invalid type for 'stream_options': expected an object, but got a string instead."
    )


@pytest.mark.parametrize(
    ("body", "endpoint"),
    [
        (HELLO, CHAT),
        (PROMPT, "completions"),
        (EMBED, "embeddings"),
        (
            {
                "model": "gpt-test",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "name": "ann", "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                        {"type": "input_audio", "input_audio": {"data": "AAA=", "format": "wav"}},
                        {"type": "file", "file": {"file_id": "f-1"}},
                    ]},
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "c1", "type": "function",
                         "function": {"name": "look", "arguments": '{"q": [1, {"a": 2}]}'}},
                    ]},
                    {"role": "tool", "tool_call_id": "c1", "content": '{"found": true}'},
                    {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
                ],
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": 2**31 - 1,
                "max_completion_tokens": 1,
                "n": 128,
                "temperature": 2,
                "top_p": 0.5,
                "presence_penalty": -2,
                "frequency_penalty": 2.0,
                "seed": -(2**63),
                "stop": ["a", "b", "c", "d"],
                "logit_bias": {"50256": -100, "42": 1.5},
                "user": "user-1",
                "tools": [
                    {"type": "function", "function": {
                        "name": "look", "description": "Looks.",
                        "parameters": {"type": "object", "$defs": {"Q": {"type": "string"}}},
                    }},
                    {"type": "web_search"},
                ],
                "functions": [{"name": "legacy"}],
                "tool_choice": {"type": "function", "function": {"name": "look"}},
                "parallel_tool_calls": False,
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "x", "schema": {"type": "object", "definitions": {}},
                }},
            },
            CHAT,
        ),
        ({**PROMPT, "prompt": ["a", ""], "stop": "\n", "seed": 2**63 - 1}, "completions"),
        ({**PROMPT, "prompt": [1, 2, 3]}, "completions"),
        ({**PROMPT, "prompt": [[1, 2], []]}, "completions"),
        ({"model": "embed-test", "input": ["one", "two"], "dimensions": 256}, "embeddings"),
        ({"model": "embed-test", "input": [[1, 2], [3]]}, "embeddings"),
        ({"model": "m" * 256, "input": [0]}, "embeddings"),
    ],
)  # fmt: skip
def test_a_well_formed_body_passes(body, endpoint):
    validate_body(body, endpoint)


def test_null_reads_as_absent_for_every_optional_field():
    names = [
        "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "temperature",
        "top_p", "presence_penalty", "frequency_penalty", "seed", "stop", "logit_bias", "user",
        "tools", "functions", "tool_choice", "parallel_tool_calls", "response_format",
        "dimensions",
    ]  # fmt: skip

    validate_body({**HELLO, **dict.fromkeys(names)}, CHAT)
    validate_body({**EMBED, **dict.fromkeys(names)}, "embeddings")


def test_unknown_fields_pass_through_untouched():
    body = {
        **HELLO,
        "reasoning_effort": "high",
        "metadata": {"k": ["v", 1, None, {"deep": [[[2.5]]]}]},
        "web_search_options": {},
        "store": "not even a boolean",
    }
    before = copy.deepcopy(body)

    validate_body(body, CHAT)

    assert body == before


def test_a_field_of_another_endpoint_is_unknown_there():
    validate_body({**HELLO, "input": 5, "prompt": {}, "dimensions": "x"}, CHAT)
    validate_body({**EMBED, "messages": 5}, "embeddings")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"messages": HELLO["messages"]}, "missing_required_parameter", "model"),
        ({**HELLO, "model": ""}, "missing_required_parameter", "model"),
        ({**HELLO, "model": 5}, "invalid_type", "model"),
        ({**HELLO, "model": ["gpt-test"]}, "invalid_type", "model"),
        ({**HELLO, "model": "m" * 257}, "invalid_value", "model"),
        ({"model": "gpt-test"}, "missing_required_parameter", "messages"),
        ({**HELLO, "messages": []}, "missing_required_parameter", "messages"),
        ({**HELLO, "messages": "Hello"}, "invalid_type", "messages"),
        ({**HELLO, "messages": {"role": "user"}}, "invalid_type", "messages"),
        ({**HELLO, "stream": "true"}, "invalid_type", "stream"),
        ({**HELLO, "stream": 1}, "invalid_type", "stream"),
        ({**HELLO, "stream_options": []}, "invalid_type", "stream_options"),
        ({**HELLO, "stream_options": {"include_usage": "yes"}}, "invalid_type",
         "stream_options.include_usage"),
        ({**HELLO, "max_tokens": 0}, "invalid_value", "max_tokens"),
        ({**HELLO, "max_tokens": -1}, "invalid_value", "max_tokens"),
        ({**HELLO, "max_tokens": 2**31}, "invalid_value", "max_tokens"),
        ({**HELLO, "max_tokens": True}, "invalid_type", "max_tokens"),
        ({**HELLO, "max_tokens": 10.0}, "invalid_type", "max_tokens"),
        ({**HELLO, "max_tokens": "10"}, "invalid_type", "max_tokens"),
        ({**HELLO, "max_completion_tokens": 2**63}, "invalid_value", "max_completion_tokens"),
        ({**HELLO, "max_completion_tokens": 1.8e19}, "invalid_type", "max_completion_tokens"),
        ({**HELLO, "n": 0}, "invalid_value", "n"),
        ({**HELLO, "n": 129}, "invalid_value", "n"),
        ({**HELLO, "n": False}, "invalid_type", "n"),
        ({**HELLO, "temperature": 2.01}, "invalid_value", "temperature"),
        ({**HELLO, "temperature": -0.1}, "invalid_value", "temperature"),
        ({**HELLO, "temperature": 1e308}, "invalid_value", "temperature"),
        ({**HELLO, "temperature": "hot"}, "invalid_type", "temperature"),
        ({**HELLO, "temperature": True}, "invalid_type", "temperature"),
        ({**HELLO, "top_p": 1.5}, "invalid_value", "top_p"),
        ({**HELLO, "presence_penalty": -3}, "invalid_value", "presence_penalty"),
        ({**HELLO, "frequency_penalty": 2.5}, "invalid_value", "frequency_penalty"),
        ({**HELLO, "frequency_penalty": [1]}, "invalid_type", "frequency_penalty"),
        ({**HELLO, "seed": 2**63}, "invalid_value", "seed"),
        ({**HELLO, "seed": -(2**63) - 1}, "invalid_value", "seed"),
        ({**HELLO, "seed": 1.5}, "invalid_type", "seed"),
        ({**HELLO, "stop": 5}, "invalid_type", "stop"),
        ({**HELLO, "stop": ["a", 5]}, "invalid_type", "stop[1]"),
        ({**HELLO, "stop": ["a", "b", "c", "d", "e"]}, "invalid_value", "stop"),
        ({**HELLO, "logit_bias": [1]}, "invalid_type", "logit_bias"),
        ({**HELLO, "logit_bias": {"42": "high"}}, "invalid_type", "logit_bias.42"),
        ({**HELLO, "logit_bias": {"42": True}}, "invalid_type", "logit_bias.42"),
        ({**HELLO, "user": 42}, "invalid_type", "user"),
        ({**HELLO, "parallel_tool_calls": "no"}, "invalid_type", "parallel_tool_calls"),
        ({**HELLO, "tool_choice": 1}, "invalid_type", "tool_choice"),
        ({**HELLO, "tool_choice": {"type": 1}}, "invalid_type", "tool_choice.type"),
        ({**HELLO, "tool_choice": {"function": "look"}}, "invalid_type", "tool_choice.function"),
        ({**HELLO, "tool_choice": {"function": {"name": 1}}}, "invalid_type",
         "tool_choice.function.name"),
        ({**HELLO, "response_format": "json"}, "invalid_type", "response_format"),
        ({**HELLO, "response_format": {}}, "missing_required_parameter", "response_format.type"),
        ({**HELLO, "response_format": {"type": "json_schema", "json_schema": "x"}},
         "invalid_type", "response_format.json_schema"),
        ({**HELLO, "response_format": {"type": "json_schema", "json_schema": {"schema": []}}},
         "invalid_type", "response_format.json_schema.schema"),
    ],
)  # fmt: skip
def test_a_bad_field_is_a_400_naming_it(body, code, param):
    assert code_and_param(body) == (400, code, param)


@pytest.mark.parametrize(
    ("tools", "code", "param"),
    [
        ({"type": "function"}, "invalid_type", "tools"),
        ([1], "invalid_type", "tools[0]"),
        ([{"function": {"name": "f"}}], "missing_required_parameter", "tools[0].type"),
        ([{"type": 1, "function": {"name": "f"}}], "invalid_type", "tools[0].type"),
        ([{"type": "function"}], "missing_required_parameter", "tools[0].function"),
        ([{"type": "function", "function": 5}], "invalid_type", "tools[0].function"),
        ([{"type": "web_search", "function": "x"}], "invalid_type", "tools[0].function"),
        ([{"type": "function", "function": {}}], "missing_required_parameter",
         "tools[0].function.name"),
        ([{"type": "function", "function": {"name": ""}}], "invalid_value",
         "tools[0].function.name"),
        ([{"type": "function", "function": {"name": ["f"]}}], "invalid_type",
         "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "f", "description": 1}}], "invalid_type",
         "tools[0].function.description"),
        ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}], "invalid_type",
         "tools[0].function.parameters"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"$defs": []}}}],
         "invalid_type", "tools[0].function.parameters.$defs"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"definitions": {
            "A": True}}}}], "invalid_type", "tools[0].function.parameters.definitions.A"),
    ],
)  # fmt: skip
def test_a_bad_tool_is_a_400_naming_it(tools, code, param):
    assert code_and_param({**HELLO, "tools": tools}) == (400, code, param)


def test_a_bad_legacy_function_is_a_400_naming_it():
    assert code_and_param({**HELLO, "functions": {}}) == (400, "invalid_type", "functions")
    assert code_and_param({**HELLO, "functions": [{"name": "f"}, {"name": 5}]}) == (
        400, "invalid_type", "functions[1].name",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("message", "code", "param"),
    [
        ("Hello", "invalid_type", "messages[1]"),
        ({"content": "Hello"}, "missing_required_parameter", "messages[1].role"),
        ({"role": 1, "content": "Hello"}, "invalid_type", "messages[1].role"),
        ({"role": ["user"], "content": "Hello"}, "invalid_type", "messages[1].role"),
        ({"role": {"user": 1}, "content": [{"type": "text", "text": "Hello"}]}, "invalid_type",
         "messages[1].role"),
        ({"role": "user", "content": 5}, "invalid_type", "messages[1].content"),
        ({"role": "user", "content": {"type": "text"}}, "invalid_type", "messages[1].content"),
        ({"role": "user", "content": ["Hello"]}, "invalid_type", "messages[1].content[0]"),
        ({"role": "user", "content": [{"text": "Hello"}]}, "missing_required_parameter",
         "messages[1].content[0].type"),
        ({"role": "user", "content": [{"type": ["text"]}]}, "invalid_type",
         "messages[1].content[0].type"),
        ({"role": "user", "content": [{"type": "text"}]}, "missing_required_parameter",
         "messages[1].content[0].text"),
        ({"role": "user", "content": [{"type": "text", "text": {"t": 1}}]}, "invalid_type",
         "messages[1].content[0].text"),
        ({"role": "assistant", "content": [{"type": "refusal", "refusal": 1}]}, "invalid_type",
         "messages[1].content[0].refusal"),
        ({"role": "user", "content": [{"type": "image_url"}]}, "missing_required_parameter",
         "messages[1].content[0].image_url"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": 1}]}, "invalid_type",
         "messages[1].content[0].image_url"),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": "AAA="}]},
         "invalid_type", "messages[1].content[0].input_audio"),
        ({"role": "user", "name": 1, "content": "Hello"}, "invalid_type", "messages[1].name"),
        ({"role": "tool", "tool_call_id": 1, "content": "{}"}, "invalid_type",
         "messages[1].tool_call_id"),
        ({"role": "assistant", "tool_calls": "call"}, "invalid_type", "messages[1].tool_calls"),
        ({"role": "assistant", "tool_calls": [None]}, "invalid_type",
         "messages[1].tool_calls[0]"),
        ({"role": "assistant", "tool_calls": [{"function": "f"}]}, "invalid_type",
         "messages[1].tool_calls[0].function"),
        ({"role": "assistant", "tool_calls": [{"function": {"name": 1}}]}, "invalid_type",
         "messages[1].tool_calls[0].function.name"),
    ],
)  # fmt: skip
def test_a_bad_message_is_a_400_naming_it(message, code, param):
    body = {**HELLO, "messages": [*HELLO["messages"], message]}

    assert code_and_param(body) == (400, code, param)


@pytest.mark.parametrize(
    ("body", "endpoint", "code", "param"),
    [
        ({"model": "gpt-test"}, "completions", "missing_required_parameter", "prompt"),
        ({**PROMPT, "prompt": ""}, "completions", "missing_required_parameter", "prompt"),
        ({**PROMPT, "prompt": 5}, "completions", "invalid_type", "prompt"),
        ({**PROMPT, "prompt": {"text": "hi"}}, "completions", "invalid_type", "prompt"),
        ({**PROMPT, "prompt": [None]}, "completions", "invalid_type", "prompt[0]"),
        ({**PROMPT, "prompt": ["a", 1]}, "completions", "invalid_type", "prompt[1]"),
        ({**PROMPT, "prompt": [1, "a"]}, "completions", "invalid_type", "prompt[1]"),
        ({**PROMPT, "prompt": [1, True]}, "completions", "invalid_type", "prompt[1]"),
        ({**PROMPT, "prompt": [1, 2.0]}, "completions", "invalid_type", "prompt[1]"),
        ({**PROMPT, "prompt": [[1], "a"]}, "completions", "invalid_type", "prompt[1]"),
        ({**PROMPT, "prompt": [[1], [2, [3]]]}, "completions", "invalid_type", "prompt[1][1]"),
        ({"model": "embed-test"}, "embeddings", "missing_required_parameter", "input"),
        ({**EMBED, "input": ""}, "embeddings", "missing_required_parameter", "input"),
        ({**EMBED, "input": []}, "embeddings", "missing_required_parameter", "input"),
        ({**EMBED, "input": ["one", ""]}, "embeddings", "invalid_value", "input[1]"),
        ({**EMBED, "input": [[1], []]}, "embeddings", "invalid_value", "input[1]"),
        ({**EMBED, "input": [{"text": "one"}]}, "embeddings", "invalid_type", "input[0]"),
        ({**EMBED, "dimensions": 0}, "embeddings", "invalid_value", "dimensions"),
        ({**EMBED, "dimensions": "256"}, "embeddings", "invalid_type", "dimensions"),
        ({**EMBED, "n": 2**62}, "embeddings", "invalid_value", "n"),
        ({**EMBED, "tools": [{"function": 5}]}, "embeddings", "missing_required_parameter",
         "tools[0].type"),
    ],
)  # fmt: skip
def test_a_bad_prompt_or_input_is_a_400_naming_it(body, endpoint, code, param):
    assert code_and_param(body, endpoint) == (400, code, param)


def test_the_first_bad_field_in_the_body_is_the_one_named():
    body = {**HELLO, "n": 0, "max_tokens": 0}

    assert refusal(body).param == "n"


def test_the_body_may_nest_max_depth_levels_and_no_more():
    # The body is level 1, its field level 2.
    validate_body({**HELLO, "metadata": nested(MAX_DEPTH - 2, {})}, CHAT)

    assert code_and_param({**HELLO, "metadata": nested(MAX_DEPTH - 1, {})}) == (
        400, "invalid_value", "metadata",
    )  # fmt: skip
    assert code_and_param({**HELLO, "metadata": nested(1000)}) == (
        400, "invalid_value", "metadata",
    )  # fmt: skip
    deep_message = {"role": "user", "content": "x", "extra": nested(MAX_DEPTH)}
    assert refusal({**HELLO, "messages": [deep_message]}).message == (
        "Invalid value for 'messages': objects and arrays may nest at most "
        f"{MAX_DEPTH} levels deep."
    )


def test_tool_arguments_and_tool_results_that_adapters_parse_may_not_nest_deeper():
    deep_json = orjson.dumps(nested(MAX_DEPTH + 1)).decode()
    call = {"id": "c1", "function": {"name": "f", "arguments": deep_json}}
    calling = {**HELLO, "messages": [{"role": "assistant", "tool_calls": [call]}]}
    answering = {**HELLO, "messages": [{"role": "tool", "tool_call_id": "c1", "content": [
        {"type": "text", "text": deep_json[:100]}, {"type": "text", "text": deep_json[100:]},
    ]}]}  # fmt: skip

    assert code_and_param(calling) == (
        400, "invalid_value", "messages[0].tool_calls[0].function.arguments",
    )  # fmt: skip
    assert code_and_param(answering) == (400, "invalid_value", "messages[0].content")


def test_many_brackets_that_are_not_deep_json_pass():
    wide = orjson.dumps([[1]] * 500).decode()
    text = "[" * 500  # not JSON: passed on as text
    call = {"id": "c1", "function": {"name": "f", "arguments": wide}}

    validate_body({**HELLO, "messages": [
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": text},
    ]}, CHAT)  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**HELLO, "user": "ann\x00"}, "user"),
        ({**HELLO, "metadata": {"k": ["ok", "x\x00y"]}}, "metadata.k[1]"),
        ({**HELLO, "metadata": {"k\x00": 1}}, "metadata"),
        ({**HELLO, "messages": [{"role": "user", "content": "\x00"}]}, "messages[0].content"),
        ({**PROMPT, "prompt": ["a", "b\x00"]}, "prompt[1]"),
    ],
)
def test_a_nul_character_anywhere_is_a_400_naming_its_field(body, param):
    endpoint = "completions" if "prompt" in body else CHAT

    assert code_and_param(body, endpoint) == (400, "invalid_value", param)


def test_a_nul_character_in_a_key_of_the_body_names_no_field():
    error = refusal({**HELLO, "x\x00": 1})

    assert (error.code, error.param) == ("invalid_value", None)
    assert error.message == (
        "Invalid request body: text must not contain NUL characters (\\u0000)."
    )


def test_a_backslash_before_u0000_is_not_a_nul_character():
    validate_body({**HELLO, "user": "C:\\u0000\\dir"}, CHAT)


# --- what passes, the adapters can translate and encode -----------------------------------------


def test_a_recursive_schema_at_the_depth_limit_still_encodes_for_gemini():
    # Gemini inlines $refs (33 deep): a recursive definition whose default nests as deep as the
    # body allows must still come out under orjson's limit.
    default = nested(MAX_DEPTH - 9)
    node = {"type": "object", "default": default, "properties": {"next": {"$ref": "#/$defs/N"}}}
    parameters = {"$ref": "#/$defs/N", "$defs": {"N": node}}
    body = {**HELLO, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": parameters,
    }}]}  # fmt: skip
    validate_body(body, CHAT)

    orjson.dumps(gemini.chat_request(body))


def test_tool_arguments_and_results_at_the_depth_limit_still_encode_for_anthropic_and_gemini():
    deep_json = orjson.dumps({"a": nested(MAX_DEPTH - 1)}).decode()
    body = {**HELLO, "messages": [
        {"role": "user", "content": "Look"},
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep_json}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": deep_json},
    ]}  # fmt: skip
    validate_body(body, CHAT)

    orjson.dumps(anthropic.chat_request(body))
    orjson.dumps(gemini.chat_request(body))
