"""Type and range checks of a /v1 request body, before the relay reads any of it.

Every field that the relay, its hold planner, its request log or an adapter reads is checked
here, so that no body can make them raise (a 500) or overflow a bigint column. A bad field is a
400 in OpenAI's shape whose `param` names it as OpenAI does ("messages[0].content[1].type").
Fields the relay does not read pass through untouched (providers add new ones); the body as a
whole is only held to what every JSON the relay writes needs: at most MAX_DEPTH levels of
nesting, and no NUL character (PostgreSQL stores it neither in text nor in jsonb, and request
fields are logged).

This runs on every call: plain isinstance checks, each message, part and tool visited once,
a param formatted only for an error, and strings searched in C (orjson, a bytes search), never
walked in Python.
"""

from collections.abc import Callable

import orjson

from relay.adapters.anthropic import text_of
from relay.http import RelayError

# Output tokens per choice, and choices per call: the hold (prompt + max_tokens × n tokens)
# then stays far inside PostgreSQL's bigint whatever the model's price.
MAX_OUTPUT_TOKENS = 2**31 - 1
MAX_CHOICES = 128
MAX_STOP_SEQUENCES = 4
MAX_MODEL_LENGTH = 256
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# How deeply objects and arrays may nest, the body itself being level 1. orjson refuses to
# encode more than ORJSON_MAX_DEPTH levels, and request values end up deeper than in the body:
# one level in the request log, seven for parsed tool arguments and results in Anthropic and
# Gemini bodies, up to 67 for Gemini's translation of a JSON Schema (it inlines $refs, 33 deep).
# Real bodies nest a dozen levels (OpenAI allows 10 in a structured-output schema).
MAX_DEPTH = 128
ORJSON_MAX_DEPTH = 254
TOO_DEEP = f"objects and arrays may nest at most {MAX_DEPTH} levels deep"
HAS_NUL = "text must not contain NUL characters (\\u0000)"

Check = Callable[[str, object], None]


# --- errors -------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def invalid_type(param: str, expected: str, value: object) -> RelayError:
    return RelayError(
        400, f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        code="invalid_type", param=param,
    )  # fmt: skip


def invalid_value(param: str, expected: str, got: str) -> RelayError:
    return RelayError(
        400, f"Invalid value for '{param}': expected {expected}, but got {got} instead.",
        code="invalid_value", param=param,
    )  # fmt: skip


def missing(param: str) -> RelayError:
    return RelayError(
        400, f"Missing required parameter: '{param}'.", code="missing_required_parameter",
        param=param,
    )  # fmt: skip


def _required(param: str, expected: str, value: object) -> RelayError:
    """The error of a required field that is `value` instead of `expected`."""
    return missing(param) if value is None else invalid_type(param, expected, value)


def _refused(param: str | None, problem: str) -> RelayError:
    where = f"Invalid value for '{param}'" if param else "Invalid request body"
    return RelayError(400, f"{where}: {problem}.", code="invalid_value", param=param)


# --- scalars ------------------------------------------------------------------------------------


def _integer_between(low: int, high: int) -> Check:
    def check(param: str, value: object) -> None:
        if type(value) is not int:  # not isinstance: True is not a number of tokens
            raise invalid_type(param, "an integer", value)
        if not low <= value <= high:
            raise invalid_value(param, f"an integer between {low} and {high}", str(value))

    return check


def _number_between(low: float, high: float) -> Check:
    def check(param: str, value: object) -> None:
        if type(value) is not float and type(value) is not int:
            raise invalid_type(param, "a number", value)
        if not low <= value <= high:
            raise invalid_value(param, f"a number between {low} and {high}", str(value))

    return check


def _boolean(param: str, value: object) -> None:
    if not isinstance(value, bool):
        raise invalid_type(param, "a boolean", value)


def _string(param: str, value: object) -> None:
    if not isinstance(value, str):
        raise invalid_type(param, "a string", value)


def _model(value: object) -> None:
    if value is None or value == "":
        raise RelayError(
            400, "You must provide a model parameter.", code="missing_required_parameter",
            param="model",
        )  # fmt: skip
    if not isinstance(value, str):
        raise invalid_type("model", "a string", value)
    if len(value) > MAX_MODEL_LENGTH:
        raise invalid_value(
            "model", f"a string of at most {MAX_MODEL_LENGTH} characters",
            f"{len(value)} characters",
        )  # fmt: skip


# --- chat messages ------------------------------------------------------------------------------


def _messages(param: str, messages: object) -> None:
    if not isinstance(messages, list):
        raise invalid_type(param, "an array of messages", messages)
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_type(f"{param}[{index}]", "an object", message)
        role = message.get("role")
        content = message.get("content")
        # Most messages are a role and a text: nothing else to check (but a tool result's text).
        plain = len(message) == 2 and isinstance(role, str) and isinstance(content, str)
        if plain and role != "tool":
            continue
        _message(f"{param}[{index}]", message, role, content)


def _message(param: str, message: dict, role: object, content: object) -> None:
    if not isinstance(role, str):
        raise _required(f"{param}.role", "a string", role)
    if content is not None and not isinstance(content, str):
        _content_parts(f"{param}.content", content)
    for key in ("name", "tool_call_id"):
        value = message.get(key)
        if value is not None and not isinstance(value, str):
            raise invalid_type(f"{param}.{key}", "a string", value)
    calls = message.get("tool_calls")
    if calls is not None:
        _tool_calls(f"{param}.tool_calls", calls)
    if role == "tool" and content:
        # Gemini channels parse a tool result as JSON and nest it in their own body.
        _parsed_depth(f"{param}.content", content if isinstance(content, str) else text_of(content))


def _content_parts(param: str, parts: object) -> None:
    if not isinstance(parts, list):
        raise invalid_type(param, "a string, an array of content parts or null", parts)
    for index, part in enumerate(parts):
        if not isinstance(part, dict):
            raise invalid_type(f"{param}[{index}]", "an object", part)
        kind = part.get("type")
        if not isinstance(kind, str):
            raise _required(f"{param}[{index}].type", "a string", kind)
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _required(f"{param}[{index}].text", "a string", text)
        elif kind == "refusal":
            refusal = part.get("refusal")
            if refusal is not None and not isinstance(refusal, str):
                raise invalid_type(f"{param}[{index}].refusal", "a string", refusal)
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict | str):
                raise _required(f"{param}[{index}].image_url", "an object with a 'url'", image)
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict):
                raise _required(f"{param}[{index}].input_audio", "an object", audio)


def _tool_calls(param: str, calls: object) -> None:
    if not isinstance(calls, list):
        raise invalid_type(param, "an array of tool calls", calls)
    for index, call in enumerate(calls):
        if not isinstance(call, dict):
            raise invalid_type(f"{param}[{index}]", "an object", call)
        function = call.get("function")
        if function is None:
            continue
        if not isinstance(function, dict):
            raise invalid_type(f"{param}[{index}].function", "an object", function)
        name = function.get("name")
        if name is not None and not isinstance(name, str):
            raise invalid_type(f"{param}[{index}].function.name", "a string", name)
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            # Anthropic and Gemini channels parse the arguments and nest them in their body.
            _parsed_depth(f"{param}[{index}].function.arguments", arguments)


# --- completions prompts and embeddings inputs --------------------------------------------------

TEXTS_OR_TOKENS = "a string, an array of strings, or an array of token ids or of token id arrays"


def _token_ids(param: str, ids: list) -> None:
    if set(map(type, ids)) <= {int}:  # the common case, at C speed (bool is not int here)
        return
    for index, token in enumerate(ids):
        if type(token) is not int:
            raise invalid_type(f"{param}[{index}]", "an integer (a token id)", token)


def _texts_or_tokens(param: str, value: object, *, empty_allowed: bool) -> None:
    """A string, an array of strings, an array of token ids or an array of token id arrays
    (not mixed); the caller has refused an empty string or array."""
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise invalid_type(param, TEXTS_OR_TOKENS, value)
    first = value[0]
    if type(first) is int:
        _token_ids(param, value)
        return
    if not isinstance(first, str | list):
        raise invalid_type(f"{param}[0]", "a string, a token id or an array of token ids", first)
    if isinstance(first, str):
        kind, expected, got_empty = str, "string", "an empty string"
    else:
        kind, expected, got_empty = list, "array of token ids", "an empty array"
    for index, item in enumerate(value):
        if not isinstance(item, kind):
            raise invalid_type(
                f"{param}[{index}]", f"{'a' if kind is str else 'an'} {expected}", item
            )
        if not item and not empty_allowed:
            raise invalid_value(f"{param}[{index}]", f"a non-empty {expected}", got_empty)
        if kind is list:
            _token_ids(f"{param}[{index}]", item)


def _prompt(param: str, value: object) -> None:
    _texts_or_tokens(param, value, empty_allowed=True)


def _input(param: str, value: object) -> None:
    # OpenAI refuses empty texts and token arrays to embed.
    _texts_or_tokens(param, value, empty_allowed=False)


# --- tools, formats and the other generation fields ---------------------------------------------


def _schema(param: str, schema: object) -> None:
    """A JSON Schema object whose definitions are objects: Gemini channels inline them."""
    if not isinstance(schema, dict):
        raise invalid_type(param, "an object (a JSON Schema)", schema)
    for key in ("definitions", "$defs"):
        definitions = schema.get(key)
        if definitions is None:
            continue
        if not isinstance(definitions, dict):
            raise invalid_type(f"{param}.{key}", "an object", definitions)
        for name, definition in definitions.items():
            if not isinstance(definition, dict):
                raise invalid_type(f"{param}.{key}.{name}", "an object", definition)


def _function(param: str, function: object) -> None:
    if not isinstance(function, dict):
        raise invalid_type(param, "an object", function)
    name = function.get("name")
    if not isinstance(name, str):
        raise _required(f"{param}.name", "a string", name)
    if not name:
        raise invalid_value(f"{param}.name", "a non-empty string", "an empty string")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid_type(f"{param}.description", "a string", description)
    parameters = function.get("parameters")
    if parameters is not None:
        _schema(f"{param}.parameters", parameters)


def _tools(param: str, tools: object) -> None:
    if not isinstance(tools, list):
        raise invalid_type(param, "an array of tools", tools)
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise invalid_type(f"{param}[{index}]", "an object", tool)
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise _required(f"{param}[{index}].type", "a string", kind)
        function = tool.get("function")
        if function is None:
            if kind == "function":
                raise missing(f"{param}[{index}].function")
            continue
        # Checked whatever the type: the request log reads the names of all tools.
        _function(f"{param}[{index}].function", function)


def _functions(param: str, functions: object) -> None:
    if not isinstance(functions, list):
        raise invalid_type(param, "an array of functions", functions)
    for index, function in enumerate(functions):
        _function(f"{param}[{index}]", function)


def _tool_choice(param: str, choice: object) -> None:
    if isinstance(choice, str):
        return
    if not isinstance(choice, dict):
        raise invalid_type(param, "a string or an object", choice)
    kind = choice.get("type")
    if kind is not None and not isinstance(kind, str):
        raise invalid_type(f"{param}.type", "a string", kind)
    function = choice.get("function")
    if function is None:
        return
    if not isinstance(function, dict):
        raise invalid_type(f"{param}.function", "an object", function)
    name = function.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid_type(f"{param}.function.name", "a string", name)


def _response_format(param: str, value: object) -> None:
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    kind = value.get("type")
    if not isinstance(kind, str):
        raise _required(f"{param}.type", "a string", kind)
    json_schema = value.get("json_schema")
    if json_schema is None:
        return
    if not isinstance(json_schema, dict):
        raise invalid_type(f"{param}.json_schema", "an object", json_schema)
    if json_schema.get("schema") is not None:
        _schema(f"{param}.json_schema.schema", json_schema["schema"])


def _stream_options(param: str, value: object) -> None:
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    include_usage = value.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise invalid_type(f"{param}.include_usage", "a boolean", include_usage)


def _stop(param: str, value: object) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise invalid_type(param, "a string or an array of strings", value)
    for index, sequence in enumerate(value):
        if not isinstance(sequence, str):
            raise invalid_type(f"{param}[{index}]", "a string", sequence)
    if len(value) > MAX_STOP_SEQUENCES:
        raise invalid_value(
            param, f"at most {MAX_STOP_SEQUENCES} stop sequences", f"{len(value)} sequences"
        )


def _logit_bias(param: str, value: object) -> None:
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    for token, bias in value.items():
        if type(bias) is not float and type(bias) is not int:
            raise invalid_type(f"{param}.{token}", "a number", bias)


_output_tokens = _integer_between(1, MAX_OUTPUT_TOKENS)

# The fields every endpoint checks when they are present and not null (null reads as absent).
FIELDS: dict[str, Check] = {
    "stream": _boolean,
    "stream_options": _stream_options,
    "max_tokens": _output_tokens,
    "max_completion_tokens": _output_tokens,
    "n": _integer_between(1, MAX_CHOICES),
    "temperature": _number_between(0, 2),
    "top_p": _number_between(0, 1),
    "presence_penalty": _number_between(-2, 2),
    "frequency_penalty": _number_between(-2, 2),
    "seed": _integer_between(INT64_MIN, INT64_MAX),
    "stop": _stop,
    "logit_bias": _logit_bias,
    "user": _string,
    "tools": _tools,
    "functions": _functions,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _boolean,
    "response_format": _response_format,
}
# Per endpoint: its required field with the check of its value, and the fields it checks.
ENDPOINTS: dict[str, tuple[str, Check, dict[str, Check]]] = {
    "chat.completions": ("messages", _messages, FIELDS),
    "completions": ("prompt", _prompt, FIELDS),
    "embeddings": ("input", _input, {**FIELDS, "dimensions": _output_tokens}),
}


# --- Anthropic's Messages and OpenAI's Responses bodies -----------------------------------------


def _objects(param: str, value: object, what: str) -> list[dict]:
    if not isinstance(value, list):
        raise invalid_type(param, f"an array of {what}", value)
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid_type(f"{param}[{index}]", "an object", item)
    return value


def _blocks(param: str, content: object) -> None:
    """Anthropic content: a string or an array of typed blocks."""
    if isinstance(content, str):
        return
    for index, block in enumerate(_objects(param, content, "content blocks")):
        kind = block.get("type")
        if not isinstance(kind, str):
            raise _required(f"{param}[{index}].type", "a string", kind)
        if kind == "text" and not isinstance(block.get("text"), str):
            raise _required(f"{param}[{index}].text", "a string", block.get("text"))
        if kind == "tool_result" and block.get("content") is not None:
            _blocks(f"{param}[{index}].content", block["content"])


def _anthropic_messages(param: str, messages: object) -> None:
    for index, message in enumerate(_objects(param, messages, "messages")):
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise invalid_value(f"{param}[{index}].role", "'user' or 'assistant'", repr(role))
        content = message.get("content")
        if content is None:
            raise missing(f"{param}[{index}].content")
        _blocks(f"{param}[{index}].content", content)


def _anthropic_tools(param: str, tools: object) -> None:
    for index, tool in enumerate(_objects(param, tools, "tools")):
        if not isinstance(tool.get("name"), str):
            raise _required(f"{param}[{index}].name", "a string", tool.get("name"))
        schema = tool.get("input_schema")
        if schema is not None:
            _schema(f"{param}[{index}].input_schema", schema)


def _anthropic_tool_choice(param: str, choice: object) -> None:
    if not isinstance(choice, dict):
        raise invalid_type(param, "an object", choice)
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise invalid_value(f"{param}.type", "'auto', 'any', 'tool' or 'none'", repr(kind))
    if kind == "tool" and not isinstance(choice.get("name"), str):
        raise _required(f"{param}.name", "a string", choice.get("name"))


def _strings(param: str, value: object) -> None:
    if not isinstance(value, list):
        raise invalid_type(param, "an array of strings", value)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid_type(f"{param}[{index}]", "a string", item)


def _object(param: str, value: object) -> None:
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)


def _responses_input(param: str, value: object) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise invalid_type(param, "a string or an array of input items", value)
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid_type(f"{param}[{index}]", "an object", item)
        content = item.get("content")
        if content is not None and not isinstance(content, str):
            _objects(f"{param}[{index}].content", content, "content parts")


def _not_background(param: str, value: object) -> None:
    _boolean(param, value)
    if value:
        # A background response is fetched later with GET /v1/responses/{id}: this relay keeps
        # no responses, so it cannot be polled through it.
        raise invalid_value(param, "false (this relay does not keep responses)", "true")


ENDPOINTS["messages"] = ("messages", _anthropic_messages, {
    "stream": _boolean,
    "max_tokens": _output_tokens,
    "temperature": _number_between(0, 1),
    "top_p": _number_between(0, 1),
    "top_k": _integer_between(0, MAX_OUTPUT_TOKENS),
    "stop_sequences": _strings,
    "system": _blocks,
    "tools": _anthropic_tools,
    "tool_choice": _anthropic_tool_choice,
    "metadata": _object,
})  # fmt: skip
ENDPOINTS["responses"] = ("input", _responses_input, {
    "stream": _boolean,
    "background": _not_background,
    "max_output_tokens": _output_tokens,
    "temperature": _number_between(0, 2),
    "top_p": _number_between(0, 1),
    "instructions": _string,
    "tools": lambda param, tools: _objects(param, tools, "tools"),
    "parallel_tool_calls": _boolean,
    "user": _string,
})  # fmt: skip


# --- nesting and NUL characters -----------------------------------------------------------------


class _Hole:
    """Where _DEPTH_PROBE takes the value it measures, through orjson's `default`."""


def _depth_probe(levels: int) -> list | _Hole:
    probe: list | _Hole = _Hole()
    for _ in range(levels):
        probe = [probe]
    return probe


# The value to measure goes at the bottom of ORJSON_MAX_DEPTH - MAX_DEPTH one-item arrays, so
# orjson's own refusal to encode deeper is the check, at C speed.
_DEPTH_PROBE = _depth_probe(ORJSON_MAX_DEPTH - MAX_DEPTH)


def _encoded_within_depth(value: object) -> bytes | None:
    """The value as JSON (inside the probe's brackets), or None when it nests too deeply."""
    try:
        return orjson.dumps(_DEPTH_PROBE, default=lambda _hole: value)
    except orjson.JSONEncodeError:
        return None


def _nul_param(body: dict) -> str | None:
    """The param of the first string with a NUL in it ("" for a key of the body itself), or
    None. A key with a NUL is named by its object."""
    stack: list[tuple[str, object]] = [("", body)]  # not recursion: MAX_DEPTH levels deep
    while stack:
        param, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return param
        elif isinstance(value, dict):
            if any("\x00" in key for key in value):
                return param
            prefix = f"{param}." if param else ""
            stack.extend((f"{prefix}{key}", item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{param}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def _check_nesting_and_nul(body: dict) -> None:
    encoded = _encoded_within_depth(body)
    if encoded is None:
        field = next(
            (key for key, value in body.items() if _encoded_within_depth({key: value}) is None),
            None,
        )
        raise _refused(field, TOO_DEEP)
    # orjson writes a NUL as \u0000. A literal backslash before "u0000" matches too: the walk
    # then finds no NUL.
    if b"\\u0000" in encoded:
        param = _nul_param(body)
        if param is not None:
            raise _refused(param or None, HAS_NUL)


def _parsed_depth(param: str, text: str) -> None:
    """JSON text that an adapter parses and nests in its body must not nest deeper either."""
    if text.count("{") + text.count("[") <= MAX_DEPTH:
        return  # each level opens a bracket: the common, cheap case
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return  # not JSON: the adapters pass it on as text, or refuse it
    if _encoded_within_depth(value) is None:
        raise _refused(param, f"its JSON {TOO_DEEP}")


# --- the body -----------------------------------------------------------------------------------


def validate_body(body: dict, endpoint: str) -> None:
    """Refuse a body sent to `endpoint` ("chat.completions", "completions" or "embeddings")
    with a 400 naming its first bad field; return when it is fit to relay."""
    required, check_required, fields = ENDPOINTS[endpoint]
    _model(body.get("model"))
    content = body.get(required)
    if content is None or content == "" or content == []:
        raise missing(required)
    check_required(required, content)
    for name, value in body.items():
        check = fields.get(name)
        if check is not None and value is not None:
            check(name, value)
    _check_nesting_and_nul(body)
