"""Streams pass through chunk by chunk, with usage shown only when asked and billed as delivered."""

import time

import httpx
import openai
import pytest

from relay.metering import count_text
from tests.relay.conftest import (
    add_channel,
    both_paths,
    chat,
    stream_until_error,
    wait_for_logs,
)
from tokenbyte.money import ceil_div

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["sql", "orm"])
def relay(request):
    return both_paths(request)


def cost(prompt: int, completion: int) -> int:
    return ceil_div(prompt * 2_500_000 + completion * 10_000_000, 1_000_000)


def test_a_stream_reassembles_to_the_same_reply_as_a_plain_call(make_account, mock):
    account = make_account("10")

    plain = chat(account).choices[0].message.content
    chunks = list(chat(account, stream=True))

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert len([c for c in chunks if c.choices]) > 16  # one event per word, not one blob
    # Not asked for: the usage chunk is hidden (the relay asked upstream for it anyway).
    assert all(c.usage is None for c in chunks)
    assert mock.last_request["json"]["stream_options"] == {"include_usage": True}
    logs = wait_for_logs(account, 2)
    assert [(log.is_stream, log.completion_tokens, log.cost_micros) for log in logs] == [
        (False, 16, 168),
        (True, 16, 168),
    ]


def test_the_usage_chunk_is_shown_with_its_cost_when_asked(make_account, mock):
    account = make_account("10")

    chunks = list(chat(account, stream=True, stream_options={"include_usage": True}))

    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    usage = usage_chunks[0].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 16)
    assert usage.model_extra["cost"] == 0.000168
    assert usage_chunks[0].choices == []


def test_a_stream_without_upstream_usage_is_counted_locally(make_account, mock):
    add_channel(
        mock, "quiet", "gpt-test", model_mapping={"gpt-test": "mock-fault-no-usage"}, priority=9
    )
    account = make_account("10")

    chunks = list(chat(account, stream=True, stream_options={"include_usage": True}))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    [log] = wait_for_logs(account, 1)
    # Our own count: the prompt as tiktoken sees it, and the delivered text.
    assert log.completion_tokens == count_text(text)
    assert log.prompt_tokens == 9
    assert log.cost_micros == cost(9, log.completion_tokens)


def test_chunks_are_not_buffered(make_account, mock):
    account = make_account("10")
    mock.chunk_delay_ms = 100

    arrivals = []
    started = time.monotonic()
    for chunk in chat(account, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)

    # 16 words 100 ms apart: the first arrives long before the last is sent.
    assert arrivals[0] < 0.8
    assert arrivals[-1] - arrivals[0] > 1.0


def test_an_upstream_dying_mid_stream_ends_with_an_error_and_bills_what_was_delivered(
    make_account, mock
):
    add_channel(
        mock, "dying", "gpt-test", model_mapping={"gpt-test": "mock-fault-drop"}, priority=9
    )
    account = make_account("10")

    received, error = stream_until_error(account)

    assert "broke off" in str(error)
    assert 0 < len(received) < 16
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code) == (502, "upstream_stream_interrupted")
    assert log.completion_tokens == count_text("".join(received))
    assert log.cost_micros == cost(9, log.completion_tokens)
    assert account.balance() == 10_000_000 - log.cost_micros


def test_a_client_hanging_up_before_a_plain_answer_cancels_upstream_and_is_not_billed(
    make_account, mock, relay
):
    account = make_account("10")
    mock.latency_ms = 3000
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hello there"}]}

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{relay.url}/v1/chat/completions", json=body,
            headers={"Authorization": f"Bearer {account.key}"}, timeout=0.5,
        )  # fmt: skip

    mock.wait_for(lambda s: s["requests_cancelled"] == 1, timeout=5)
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code) == (499, "client_disconnected")
    assert log.cost_micros == 0
    assert account.balance() == 10_000_000
    account.wallet.refresh_from_db()
    assert account.wallet.held_micros == 0


def test_a_client_hanging_up_cancels_upstream_and_is_billed_for_what_was_delivered(
    make_account, mock, relay
):
    account = make_account("10")
    mock.chunk_delay_ms = 200
    body = {
        "model": "gpt-test",
        "stream": True,
        "messages": [{"role": "user", "content": "Hello there"}],
    }

    with httpx.stream(
        "POST", f"{relay.url}/v1/chat/completions", json=body,
        headers={"Authorization": f"Bearer {account.key}"}, timeout=30,
    ) as response:  # fmt: skip
        events = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                events += 1
            if events == 3:
                break  # leaving the block closes the connection mid-stream

    mock.wait_for(lambda s: s["streams_cancelled"] == 1, timeout=5)
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code) == (499, "client_disconnected")
    assert 0 < log.completion_tokens < 16
    assert log.cost_micros == cost(9, log.completion_tokens)
    assert account.balance() == 10_000_000 - log.cost_micros
    account.wallet.refresh_from_db()
    assert account.wallet.held_micros == 0


def test_a_stream_that_fails_before_its_first_content_is_free_like_its_plain_twin(
    make_account, mock
):
    add_channel(
        mock, "garbled", "gpt-test", model_mapping={"gpt-test": "mock-fault-malformed"}, priority=9
    )
    account = make_account("10", channel=False)

    received, error = stream_until_error(account)
    with pytest.raises(openai.APIStatusError) as plain:
        chat(account)

    assert "invalid stream" in str(error)
    assert "".join(received) == ""
    assert plain.value.status_code == 502
    logs = wait_for_logs(account, 2)
    assert [(log.is_stream, log.status_code, log.cost_micros) for log in logs] == [
        (True, 502, 0),
        (False, 502, 0),
    ]
    assert account.balance() == 10_000_000


def test_a_stream_dying_part_way_still_sends_its_usage_and_cost_when_asked(make_account, mock):
    add_channel(
        mock, "dying", "gpt-test", model_mapping={"gpt-test": "mock-fault-drop"}, priority=9
    )
    account = make_account("10")

    chunks = []
    with pytest.raises(openai.APIError) as excinfo:
        for chunk in chat(account, stream=True, stream_options={"include_usage": True}):
            chunks.append(chunk)

    assert "broke off" in str(excinfo.value)
    [usage_chunk] = [c for c in chunks if c.usage is not None]
    assert usage_chunk.choices == []
    delivered = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert usage_chunk.usage.completion_tokens == count_text(delivered) > 0
    [log] = wait_for_logs(account, 1)
    assert log.cost_micros == cost(9, log.completion_tokens) > 0
    assert round(usage_chunk.usage.model_extra["cost"] * 1_000_000) == log.cost_micros
