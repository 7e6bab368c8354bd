"""Hostile bodies: none may make the relay fail (a 500) or leave its books wrong.

Four bodies that were 500s are checked over HTTP. The others are generated, of four kinds: any
JSON value; objects of the known field names with any values; well-formed bodies with fields
swapped for wrong-typed or out-of-range values; and well-formed bodies. They go through
relay/validation.py and what reads a body after it (metering, the request log, every adapter)
in process, and over HTTP to a real relay process.
"""

import copy
import itertools
import json

import httpx
import orjson
import pytest
from django.db.models import Sum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import Hold
from relay import calls
from relay.adapters.anthropic import ANTHROPIC
from relay.adapters.gemini import GEMINI
from relay.adapters.openai import OPENAI
from relay.http import RelayError
from relay.routing import Route
from relay.validation import validate_body
from tests.factories import ModelFactory
from tests.relay.conftest import add_channel, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ENDPOINTS = {
    "chat.completions": ("/v1/chat/completions", calls.CHAT),
    "completions": ("/v1/completions", calls.COMPLETIONS),
    "embeddings": ("/v1/embeddings", calls.EMBEDDINGS),
}
MODELS = {"chat.completions": "gpt-test", "completions": "gpt-test", "embeddings": "embed-test"}
UPSTREAM_ERRORS = {502, 503}
HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hello there"}]}


# --- strategies ---------------------------------------------------------------------------------

# Well-formed text has no NUL character (a hostile value may).
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=12,
)


def nested(levels: int, leaf: object = 1) -> object:
    for _ in range(levels):
        leaf = [leaf]
    return leaf


hostile = st.sampled_from([
    9223372036854775807, 4611686018427387904, 2**31, 2**64 + 1, 10**30, -1, 0, 129, 1e300,
    -1e300, 2.5, True, False, "", "x", "\x00", "a\\u0000b", [], {}, [1], ["a"], [[1]], [None],
    [{"function": 5}], {"a": 1}, {"include_usage": "yes"}, None, "m" * 300, nested(130),
    nested(300), {"type": "function", "function": {"name": 5}},
]) | json_values | st.text(max_size=12)  # fmt: skip

schemas = st.fixed_dictionaries(
    {"type": st.just("object")},
    optional={
        "properties": st.dictionaries(texts, json_values, max_size=2),
        "$defs": st.dictionaries(st.sampled_from(["a", "b"]), st.dictionaries(texts, json_values)),
        "$ref": st.sampled_from(["#/$defs/a", "#/$defs/b", "#/$defs/"]),
        "required": st.lists(texts, max_size=2),
    },
)
functions = st.fixed_dictionaries(
    {"name": texts.filter(bool)}, optional={"description": texts, "parameters": schemas}
)
tools = st.fixed_dictionaries({"type": st.just("function"), "function": functions}) | (
    st.fixed_dictionaries({"type": texts})
)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries({"type": st.just("refusal"), "refusal": texts}),
    st.fixed_dictionaries({
        "type": st.just("image_url"),
        "image_url": st.fixed_dictionaries({"url": st.sampled_from(
            ["https://x.test/a.png", "data:image/png;base64,AAAA", "ftp://x", ""]
        )}),
    }),
    st.fixed_dictionaries({
        "type": st.just("input_audio"),
        "input_audio": st.fixed_dictionaries({"data": texts, "format": st.sampled_from(["wav"])}),
    }),
    st.fixed_dictionaries({"type": texts}),
)  # fmt: skip
tool_calls = st.fixed_dictionaries({
    "id": texts,
    "type": st.just("function"),
    "function": st.fixed_dictionaries(
        {"name": texts, "arguments": texts | json_values.map(json.dumps)}
    ),
})  # fmt: skip
messages = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | texts,
        "content": st.none() | texts | st.lists(parts, max_size=3),
    },
    optional={
        "name": texts,
        "tool_call_id": texts,
        "tool_calls": st.lists(tool_calls, max_size=2),
        "extra": json_values,
    },
)
token_ids = st.lists(st.integers(0, 100_000), min_size=1, max_size=5)
texts_or_tokens = (
    texts.filter(bool)
    | st.lists(texts.filter(bool), min_size=1, max_size=3)
    | token_ids
    | st.lists(token_ids, min_size=1, max_size=3)
)
CONTENT = {
    "chat.completions": ("messages", st.lists(messages, min_size=1, max_size=4)),
    "completions": ("prompt", texts_or_tokens),
    "embeddings": ("input", texts_or_tokens),
}
stream_options = st.fixed_dictionaries({}, optional={"include_usage": st.booleans()})
response_formats = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json_object", "json_schema"])},
    optional={"json_schema": st.fixed_dictionaries({"name": texts}, optional={"schema": schemas})},
)
# Well-formed values of the optional fields; max_tokens and n mostly small, so calls succeed.
FIELDS = {
    "stream": st.none() | st.booleans(),
    "stream_options": st.none() | stream_options,
    "max_tokens": st.integers(1, 20) | st.integers(1, 2**31 - 1),
    "max_completion_tokens": st.integers(1, 20),
    "n": st.integers(1, 3) | st.integers(1, 128),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "stop": st.none() | texts | st.lists(texts, max_size=4),
    "logit_bias": st.dictionaries(texts, st.integers(-100, 100) | st.floats(-100, 100), max_size=2),
    "user": texts,
    "tools": st.lists(tools, max_size=2),
    "functions": st.lists(functions, max_size=2),
    "tool_choice": st.sampled_from(["none", "auto", "required"]) | st.fixed_dictionaries(
        {"type": st.just("function"), "function": st.fixed_dictionaries({"name": texts})}
    ),
    "parallel_tool_calls": st.booleans(),
    "response_format": response_formats,
    "dimensions": st.integers(1, 64),
    "metadata": json_values,  # a field the relay does not know
}  # fmt: skip
NAMES = ["model", "messages", "prompt", "input", *FIELDS]
# Where a hostile value may land in a well-formed body (created when missing).
PATHS = [
    *[(name,) for name in NAMES],
    ("messages", 0, "role"), ("messages", 0, "content"), ("messages", 0, "tool_calls"),
    ("messages", 0, "content", 0), ("messages", 0, "tool_calls", 0, "function"),
    ("tools", 0), ("tools", 0, "function"), ("tools", 0, "function", "name"),
    ("tools", 0, "function", "parameters"), ("tools", 0, "function", "parameters", "$defs"),
    ("stream_options", "include_usage"), ("response_format", "json_schema"),
    ("tool_choice", "function"), ("prompt", 0), ("input", 0),
]  # fmt: skip


def well_formed(endpoint: str) -> st.SearchStrategy[dict]:
    field, content = CONTENT[endpoint]
    # Whether to stream is always drawn, so that streams are common.
    required = {"model": st.just(MODELS[endpoint]), field: content, "stream": FIELDS["stream"]}
    optional = {name: values for name, values in FIELDS.items() if name != "stream"}
    return st.fixed_dictionaries(required, optional=optional)


def put(body: dict, path: tuple, value: object) -> None:
    """Set `value` at `path` in `body`, making the containers on the way as needed."""
    container: object = body
    for step, next_step in itertools.pairwise(path):
        empty = [] if isinstance(next_step, int) else {}
        if isinstance(container, dict):
            if not isinstance(container.get(step), list | dict):
                container[step] = empty
            container = container[step]
        else:
            if not container:
                container.append(empty)
            elif not isinstance(container[0], list | dict):
                container[0] = empty
            container = container[0]
    if isinstance(container, dict):
        container[path[-1]] = value
    elif container:
        container[0] = value
    else:
        container.append(value)


@st.composite
def mutated(draw, endpoint: str) -> dict:
    body = draw(well_formed(endpoint))
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3)):
        # A copy: the sampled hostile values are shared objects, and a later path may lead
        # through one (put() fills containers), which would change it for every later example
        # or put a list inside itself.
        put(body, path, copy.deepcopy(draw(hostile)))
    return body


def bodies(endpoint: str) -> st.SearchStrategy[object]:
    return st.one_of(
        json_values,
        st.dictionaries(st.sampled_from(NAMES) | texts, hostile, max_size=5),
        mutated(endpoint),
        well_formed(endpoint),
    )


cases = st.sampled_from(list(ENDPOINTS)).flatmap(
    lambda endpoint: st.tuples(st.just(endpoint), bodies(endpoint))
)


def as_relay_reads_it(body: object) -> object:
    """The body after a trip through JSON, as orjson parses it (integers past 64 bits become
    floats)."""
    return orjson.loads(json.dumps(body))


# --- in process: whatever passes validation, metering, the log and the adapters can take --------


def route(type: str) -> Route:
    return Route(
        channel_id=1, name=type, type=type, base_url="http://upstream.test/v1", api_key="k",
        model_mapping={}, priority=0, weight=1, connect_timeout=5.0, read_timeout=60.0,
        cooldown_until=0.0, had_failures=False,
    )  # fmt: skip


def strings_in(value: object):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def upstream_body(body: dict, stream: bool) -> dict:
    """The body as relay.calls.Call.upstream_request hands it to an adapter."""
    body = {**body, "model": "upstream-model", "max_tokens": 16}
    if stream:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


@settings(max_examples=500, deadline=None, database=None)
@given(case=cases)
def test_a_body_that_passes_validation_cannot_make_metering_the_log_or_an_adapter_raise(case):
    endpoint_name, raw = case
    body = as_relay_reads_it(raw)
    if not isinstance(body, dict):
        return  # answered 400 before validation
    try:
        validate_body(body, endpoint_name)
    except RelayError as error:
        assert error.status == 400
        assert error.code in ("invalid_type", "invalid_value", "missing_required_parameter")
        return

    endpoint = ENDPOINTS[endpoint_name][1]
    endpoint.count_prompt(body)
    params = calls.loggable_params(body)
    # The log row goes to PostgreSQL as jsonb, one level under the row.
    orjson.dumps({"request_params": params})
    assert not any("\x00" in text for text in strings_in(params))
    stream = bool(body.get("stream")) and endpoint.has_output
    for adapter, type in ((OPENAI, "openai"), (ANTHROPIC, "anthropic"), (GEMINI, "gemini")):
        try:
            adapter.request(route(type), endpoint_name, upstream_body(body, stream), stream)
        except RelayError as error:
            assert error.status in (400, 501)


# --- over HTTP: a real relay process ------------------------------------------------------------


def assert_answered_properly(response: httpx.Response, stream: bool) -> None:
    status = response.status_code
    assert status < 500 or status in UPSTREAM_ERRORS, response.text
    if status == 200 and response.headers["content-type"].startswith("text/event-stream"):
        assert stream
        assert response.content.endswith(b"data: [DONE]\n\n")
        return
    data = response.json()
    assert isinstance(data, dict)
    if status == 200:
        assert "error" not in data
        assert isinstance(data.get("choices") or data.get("data"), list)
        return
    assert set(data) == {"error"}
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["param"] is None or isinstance(error["param"], str)


@pytest.mark.parametrize(
    ("path", "body", "code", "param"),
    [
        ("/v1/chat/completions", {**HELLO, "max_tokens": 9223372036854775807}, "invalid_value",
         "max_tokens"),
        ("/v1/completions", {"model": "gpt-test", "prompt": "Hi", "n": 4611686018427387904},
         "invalid_value", "n"),
        ("/v1/chat/completions", {**HELLO, "stream": True, "stream_options": "x"},
         "invalid_type", "stream_options"),
        ("/v1/chat/completions", {**HELLO, "tools": [1, {"function": 5}]}, "invalid_type",
         "tools[0]"),
    ],
)  # fmt: skip
def test_bodies_that_were_500s_are_400s_naming_the_field_and_change_nothing(
    make_account, relay, path, body, code, param
):
    account = make_account("1")

    response = httpx.post(
        f"{relay.url}{path}", json=body, headers={"authorization": f"Bearer {account.key}"}
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    account.wallet.refresh_from_db()
    assert (account.wallet.balance_micros, account.wallet.held_micros) == (1_000_000, 0)
    assert not Hold.objects.filter(wallet=account.wallet).exists()
    assert not account.logs().exists()


def test_no_body_makes_the_relay_fail_or_leaves_its_books_wrong(make_account, relay, mock):
    ModelFactory(model_id="embed-test", call_type="embedding", input_price_micros_per_mtok=20_000)
    add_channel(mock, "embeddings", "embed-test")
    account = make_account("10")
    answered: dict[str, int] = {}  # request id -> status

    with httpx.Client(
        base_url=relay.url, headers={"authorization": f"Bearer {account.key}"}, timeout=30
    ) as client:

        @settings(
            max_examples=400, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )  # fmt: skip
        @given(case=cases)
        def post(case):
            endpoint, body = case
            response = client.post(
                ENDPOINTS[endpoint][0], content=json.dumps(body),
                headers={"content-type": "application/json"},
            )  # fmt: skip
            stream = isinstance(body, dict) and body.get("stream") is True
            assert_answered_properly(response, stream)
            answered[response.headers["x-request-id"]] = response.status_code

        post()

    wait_for(
        lambda: not Hold.objects.filter(wallet=account.wallet, status="open").exists(),
        timeout=10, message="every hold closed",
    )  # fmt: skip
    account.wallet.refresh_from_db()
    ledger = account.wallet.ledger_entries.aggregate(total=Sum("amount_micros"))["total"]
    assert account.wallet.balance_micros == ledger
    assert account.wallet.held_micros == 0
    # Every call answered 200 was logged, and every logged call with the status its client got.
    logged = dict(account.logs().values_list("request_id", "status_code"))
    assert logged == {
        request_id: status
        for request_id, status in answered.items()
        if request_id in logged or status == 200
    }
    assert 200 in answered.values()
