"""Every upstream HTTP client the relay can be configured with (RELAY_UPSTREAM_CLIENT) gives the
same answers, the same bills and the same errors. aiohttp is the default and is what the rest of
the suite runs on; httpx and httpx over aiohttp (bench/upstream_httpx.py) are kept for the
benchmark to measure."""

import openai
import pytest

from catalog.models import Channel
from tests.relay.conftest import _relay_server, add_channel, chat, free_port, wait_for_logs
from tests.relay.test_relay_errors import assert_nothing_charged
from tests.relay.test_relay_streaming import cost

pytestmark = pytest.mark.django_db(transaction=True)

CLIENTS = ("aiohttp", "bench.upstream_httpx", "bench.upstream_httpx_aiohttp")


@pytest.fixture(scope="module", params=CLIENTS)
def relay(request, relay_role, tmp_path_factory):
    server = _relay_server(
        tmp_path_factory, f"relay-{request.param}", RELAY_UPSTREAM_CLIENT=request.param
    )
    yield server
    server.stop()


def test_a_plain_call_and_a_stream_are_answered_and_billed_alike(make_account, mock):
    account = make_account("10")

    plain = chat(account)
    streamed = list(chat(account, stream=True, stream_options={"include_usage": True}))

    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == plain.choices[0].message.content
    assert streamed[-1].usage.completion_tokens == plain.usage.completion_tokens == 16
    logs = wait_for_logs(account, 2)
    assert [log.cost_micros for log in logs] == [cost(3, 16)] * 2
    assert account.balance() == 10_000_000 - 2 * cost(3, 16)


def test_an_upstream_timeout_is_a_504(make_account, mock):
    channel = add_channel(
        mock, "slow", "gpt-test", model_mapping={"gpt-test": "mock-fault-timeout"}
    )
    Channel.objects.filter(pk=channel.pk).update(read_timeout_seconds=0.3)
    account = make_account("1", channel=False)

    with pytest.raises(openai.APIStatusError) as excinfo:
        chat(account)

    assert (excinfo.value.status_code, excinfo.value.code) == (504, "upstream_timeout")
    assert_nothing_charged(account)


def test_an_unreachable_upstream_is_a_503(make_account, mock):
    channel = add_channel(mock, "gone", "gpt-test")
    Channel.objects.filter(pk=channel.pk).update(base_url=f"http://127.0.0.1:{free_port()}/v1")
    account = make_account("1", channel=False)

    with pytest.raises(openai.APIStatusError) as excinfo:
        chat(account)

    assert (excinfo.value.status_code, excinfo.value.code) == (503, "upstream_unavailable")
    assert_nothing_charged(account)


def test_a_failing_channel_fails_over_to_the_next(make_account, mock):
    add_channel(
        mock, "broken", "gpt-test", model_mapping={"gpt-test": "mock-fault-500"}, priority=9
    )
    account = make_account("10")

    assert chat(account).choices[0].message.content
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.attempts, log.channel_name) == (200, 2, "healthy")


def test_a_stream_dying_midway_ends_with_an_error_and_bills_what_was_delivered(make_account, mock):
    add_channel(
        mock, "dying", "gpt-test", model_mapping={"gpt-test": "mock-fault-drop"}, priority=9
    )
    account = make_account("10")

    with pytest.raises(openai.APIError) as excinfo:
        list(chat(account, stream=True))

    assert "broke off" in str(excinfo.value)
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code) == (502, "upstream_stream_interrupted")
    assert 0 < log.completion_tokens < 16
    assert account.balance() == 10_000_000 - log.cost_micros
