"""The Messages and Responses formats without a server: translations, meters, prices."""

import orjson
import pytest

from billing.holds import CacheWritingPrices, prices_with_cache_writes
from relay.adapters import messages as formats
from relay.http import RelayError
from relay.metering import Usage
from relay.responses import ResponsesMeter
from tokenbyte.money import token_cost_micros


def sse(payload) -> bytes:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


def parse(stream: bytes) -> list[tuple[str, dict]]:
    events = []
    for raw in stream.split(b"\n\n"):
        if not raw:
            continue
        name_line, data_line = raw.split(b"\n")
        events.append((name_line[len(b"event: ") :].decode(), orjson.loads(data_line[6:])))
    return events


def chunk(delta: dict, finish_reason=None, **extra) -> dict:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "c1", "model": "up-model", "choices": [choice], **extra}


def translate(body: bytes, cut: int = 7) -> bytes:
    """Feed the stream cut in pieces of `cut` bytes, as a network would."""
    translator = formats.MessagesStream("gpt-test")
    out = b"".join(translator.feed(body[i : i + cut]) for i in range(0, len(body), cut))
    return out + translator.close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
     (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"),
     (500, "api_error"), (502, "api_error"), (503, "overloaded_error"),
     (405, "invalid_request_error")],
)  # fmt: skip
def test_relay_errors_take_anthropics_shape_and_type(status, kind):
    assert formats.error_body(RelayError(status, "Nope.")) == {
        "type": "error",
        "error": {"type": kind, "message": "Nope."},
    }


def test_a_conversation_with_tools_becomes_an_openai_chat_body():
    body = {
        "model": "gpt-test", "max_tokens": 50,
        "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        "messages": [
            {"role": "user", "content": "What is a cat?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"word": "cat"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [
                    {"type": "text", "text": "a feline"}]},
                {"type": "text", "text": "Thanks."}]},
        ],
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "lookup", "disable_parallel_tool_use": True},
        "top_k": 3,
    }  # fmt: skip

    assert formats.chat_request(body) == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is a cat?"},
            {"role": "assistant", "content": "Looking.", "tool_calls": [
                {"id": "t1", "type": "function",
                 "function": {"name": "lookup", "arguments": '{"word":"cat"}'}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "a feline"},
            {"role": "user", "content": [{"type": "text", "text": "Thanks."}]},
        ],
        "tools": [{"type": "function", "function": {
            "name": "lookup", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "parallel_tool_calls": False,
    }  # fmt: skip


@pytest.mark.parametrize(("choice", "expected"), [("any", "required"), ("auto", "auto"),
                                                   ("none", "none")])  # fmt: skip
def test_tool_choices_map_to_openais(choice, expected):
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}],
            "tools": [{"name": "f"}], "tool_choice": {"type": choice}}  # fmt: skip

    assert formats.chat_request(body)["tool_choice"] == expected


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
        {"messages": [{"role": "user", "content": "Hi"}],
         "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
    ],
)  # fmt: skip
def test_what_only_anthropic_understands_is_a_400_for_other_channels(body):
    with pytest.raises(RelayError) as excinfo:
        formats.chat_request({"model": "m", **body})

    assert excinfo.value.status == 400
    assert "only go to Anthropic channels" in excinfo.value.message


def test_an_openai_answer_becomes_an_anthropic_message_with_cache_reads_apart():
    data = {
        "id": "c1", "model": "up-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": '{"word": "cat"}'}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
                  "prompt_tokens_details": {"cached_tokens": 40}},
    }  # fmt: skip

    message = formats.message_response(data, "gpt-test")

    assert message["id"].startswith("msg_")
    assert {k: v for k, v in message.items() if k != "id"} == {
        "type": "message", "role": "assistant", "model": "up-model",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"word": "cat"}},
        ],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 60, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 40, "output_tokens": 7},
    }  # fmt: skip


def test_an_openai_stream_cut_anywhere_becomes_anthropics_events():
    body = b"".join([
        sse(chunk({"role": "assistant", "content": ""})),
        sse(chunk({"content": "Hello"})),
        sse(chunk({"content": " world"})),
        sse(chunk({}, "length")),
        sse({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}),
        b"data: [DONE]\n\n",
    ])  # fmt: skip

    events = parse(translate(body))

    assert [name for name, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[0][1]["message"]["model"] == "up-model"
    assert events[2][1] == {"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}}  # fmt: skip
    assert [e[1]["delta"]["text"] for e in events[3:5]] == ["Hello", " world"]
    assert events[6][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"input_tokens": 9, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 2},
    }  # fmt: skip


def test_streamed_tool_calls_become_tool_use_blocks_with_json_deltas():
    body = b"".join([
        sse(chunk({"content": "Sure."})),
        sse(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "lookup", "arguments": ""}}]})),
        sse(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"w":'}}]})),
        sse(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"cat"}'}}]})),
        sse(chunk({}, "tool_calls")),
        b"data: [DONE]\n\n",
    ])  # fmt: skip

    events = parse(translate(body, cut=5))

    starts = [e for name, e in events if name == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"]
    assert starts[1] == {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "call_1", "name": "lookup", "input": {}}}  # fmt: skip
    json_parts = [e["delta"]["partial_json"] for name, e in events
                  if name == "content_block_delta" and e["index"] == 1]  # fmt: skip
    assert json_parts == ['{"w":', '"cat"}']
    assert [e["index"] for name, e in events if name == "content_block_stop"] == [0, 1]
    [delta] = [e for name, e in events if name == "message_delta"]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert "usage" not in delta  # none came: the meter fills in its own count


def test_a_stream_without_done_has_no_message_stop_and_an_error_chunk_is_an_error_event():
    cut_short = translate(sse(chunk({"content": "Hel"})))
    failed = translate(sse({"error": {"message": "Overloaded.", "type": "overloaded"}}))

    assert [name for name, _ in parse(cut_short)][-1] == "content_block_delta"
    assert parse(failed) == [("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded."}})]  # fmt: skip


def meter() -> formats.MessagesMeter:
    return formats.MessagesMeter(
        cost_for=lambda usage: usage.prompt_tokens / 1000,
        local_usage=lambda tokens: Usage(prompt_tokens=5, completion_tokens=tokens),
    )


def named(name: str, payload: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def test_the_meter_merges_anthropics_usage_and_adds_the_cost_to_message_delta():
    m = meter()
    start_usage = {"input_tokens": 10, "cache_read_input_tokens": 30,
                   "cache_creation_input_tokens": 20, "output_tokens": 1}  # fmt: skip
    stream = b"".join([
        named("message_start", {"type": "message_start", "message": {"usage": start_usage}}),
        named("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": "Hi"}}),
        named("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                "usage": {"output_tokens": 4}}),
        named("message_stop", {"type": "message_stop"}),
    ])  # fmt: skip

    out = m.feed(stream[:50]) + m.feed(stream[50:])

    assert m.usage == Usage(prompt_tokens=60, completion_tokens=4, cached_tokens=30,
                            cache_write_tokens=20, reported=True)  # fmt: skip
    assert (m.done, m.first_content_seen, m.response_excerpt()) == (True, True, "Hi")
    assert parse(out[2])[0][1]["usage"] == {
        "input_tokens": 10, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 30,
        "output_tokens": 4, "cost": 0.06,
    }  # fmt: skip


def test_the_meter_fills_in_its_own_count_when_no_usage_came_and_stops_at_an_error():
    m = meter()

    out = m.feed(
        named("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": "Hello world"}})
        + named("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}})
        + named("error", {"type": "error", "error": {"type": "api_error", "message": "Boom."}})
    )  # fmt: skip

    assert m.usage is None
    assert parse(out[1])[0][1]["usage"]["output_tokens"] == 2
    assert (m.error, m.done) == (("Boom.", "api_error"), True)


def test_a_garbled_event_marks_the_stream_malformed():
    m = meter()

    m.feed(b"event: content_block_delta\ndata: {not json\n\n")

    assert m.malformed


def test_cache_writes_cost_their_own_price_and_are_part_of_the_prompt():
    cost = token_cost_micros(
        prompt_tokens=103, completion_tokens=16, cached_tokens=51, cache_write_tokens=26,
        input_price_micros_per_mtok=2_500_000, output_price_micros_per_mtok=10_000_000,
        cached_input_price_micros_per_mtok=1_250_000, cache_write_price_micros_per_mtok=3_125_000,
    )  # fmt: skip

    # 26 × 2.5 + 51 × 1.25 + 26 × 3.125 + 16 × 10 = 370 micro-USD.
    assert cost == 370


def test_a_call_that_may_write_the_cache_holds_its_prompt_at_the_dearer_price():
    class Prices:
        input_price, output_price, cache_write_price = 2_500_000, 10_000_000, 3_125_000

    cheap = Prices()
    cheap.cache_write_price = 1_000_000

    assert prices_with_cache_writes(Prices()) == CacheWritingPrices(3_125_000, 10_000_000)
    assert prices_with_cache_writes(cheap) is cheap


def test_the_prompt_estimate_counts_system_messages_images_and_tools():
    plain = {"messages": [{"role": "user", "content": "Hello there"}]}
    richer = {
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hello there"},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]}],
        "tools": [{"name": "lookup"}],
    }  # fmt: skip

    assert formats.prompt_tokens(plain) == 3 + 4 + 2
    assert formats.prompt_tokens(richer) > formats.prompt_tokens(plain) + 1600


def test_the_responses_meter_adds_the_cost_to_the_terminal_event_and_reads_failures():
    m = ResponsesMeter(cost_for=lambda usage: 0.5, local_usage=lambda tokens: Usage())
    usage = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 2}
    out = m.feed(
        named("response.output_text.delta", {"type": "response.output_text.delta",
                                             "sequence_number": 3, "delta": "Hi"})
        + named("response.completed", {"type": "response.completed", "sequence_number": 4,
                                       "response": {"usage": usage}})
    )  # fmt: skip
    failed = ResponsesMeter(cost_for=lambda usage: 0.0, local_usage=lambda tokens: Usage())
    failed.feed(named("response.failed", {"type": "response.failed", "response": {
        "error": {"code": "server_error", "message": "Failed."}, "usage": None}}))  # fmt: skip

    assert m.usage == Usage(prompt_tokens=9, completion_tokens=2, cached_tokens=4, reported=True)
    assert parse(out[1])[0][1]["response"]["usage"]["cost"] == 0.5
    assert parse(m.error_event("Broke.", "upstream_stream_interrupted"))[0][1] == {
        "type": "error", "code": "upstream_stream_interrupted", "message": "Broke.",
        "param": None, "sequence_number": 5,
    }  # fmt: skip
    assert (failed.error, failed.done) == (("Failed.", "server_error"), True)
