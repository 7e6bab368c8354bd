"""OpenAI's /v1/responses through the relay with the official openai SDK: passed through to
OpenAI-compatible channels, refused for other providers."""

import openai
import pytest

from catalog.services import channel_create
from relay.metering import count_text
from tests.relay.conftest import CACHED_PRICE, INPUT_PRICE, OUTPUT_PRICE, add_channel, wait_for_logs
from tests.relay.test_relay_messages import demo_key
from tokenbyte.money import ceil_div

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


def expected_cost(prompt: int, completion: int, cached: int = 0) -> int:
    return ceil_div(
        (prompt - cached) * INPUT_PRICE + cached * CACHED_PRICE + completion * OUTPUT_PRICE,
        1_000_000,
    )


def test_a_plain_and_a_streamed_response_match_in_text_usage_and_cost(make_account, mock):
    account = make_account("10")

    plain = account.client.responses.create(model="gpt-test", input="Hello there")
    plain_sent = mock.last_request
    events = list(account.client.responses.create(model="gpt-test", input="Hello there",
                                                  stream=True))  # fmt: skip

    assert plain.output_text.startswith("This is a mock reply to: Hello there")
    assert len(plain.output_text.split()) == 16
    assert plain.status == "completed"
    assert (plain.usage.input_tokens, plain.usage.output_tokens) == (3, 16)
    assert plain.usage.model_extra["cost"] == 0.000168
    # No max_output_tokens asked: the hold's (the model's maximum) goes upstream.
    assert plain_sent["path"] == "/v1/responses"
    assert plain_sent["json"] == {"model": "gpt-test", "input": "Hello there",
                                  "max_output_tokens": 1000}  # fmt: skip
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == plain.output_text
    completed = events[-1].response
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (3, 16)
    assert completed.usage.model_extra["cost"] == 0.000168
    logs = wait_for_logs(account, 2)
    assert [(log.call_type, log.endpoint, log.is_stream, log.status_code) for log in logs] == [
        ("chat.completions", "responses", False, 200),
        ("chat.completions", "responses", True, 200),
    ]
    assert [(log.prompt_tokens, log.completion_tokens, log.cost_micros) for log in logs] == [
        (3, 16, 168),
        (3, 16, 168),
    ]
    assert account.balance() == 10_000_000 - 2 * 168


def test_max_output_tokens_caps_the_answer_and_the_bill(make_account, mock):
    account = make_account("10")

    response = account.client.responses.create(
        model="gpt-test", input="Hello there", max_output_tokens=5, instructions="Be brief."
    )

    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert mock.last_request["json"]["max_output_tokens"] == 5
    # The mock counts the instructions too: "Be brief." + "Hello there" = 20 characters.
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 5)
    [log] = wait_for_logs(account, 1)
    assert (log.prompt_tokens, log.completion_tokens) == (5, 5)
    assert log.cost_micros == expected_cost(5, 5) == 63


@pytest.mark.parametrize("stream", [False, True])
def test_cached_input_tokens_are_billed_at_the_cached_price(make_account, mock, stream):
    add_channel(mock, "cached", "gpt-test", model_mapping={"gpt-test": "mock-fault-cached"})
    account = make_account("10", channel=False)

    answer = account.client.responses.create(model="gpt-test", input="x" * 400, stream=stream)
    usage = list(answer)[-1].response.usage if stream else answer.usage

    assert (usage.input_tokens, usage.input_tokens_details.cached_tokens) == (100, 50)
    assert expected_cost(100, 16, cached=50) == 348
    assert usage.model_extra["cost"] == 0.000348
    [log] = wait_for_logs(account, 1)
    assert (log.prompt_tokens, log.cached_tokens, log.cost_micros) == (100, 50, 348)
    assert log.upstream_model == "mock-fault-cached"


def test_a_function_call_comes_back_as_an_output_item(make_account, mock):
    account = make_account("10")
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]

    response = account.client.responses.create(model="gpt-test", input="Hi", tools=tools)

    [item] = response.output
    assert (item.type, item.name, item.arguments) == ("function_call", "lookup", "{}")
    [log] = wait_for_logs(account, 1)
    assert log.request_params["tool_names"] == ["lookup"]
    assert log.completion_tokens == 2


def test_an_empty_wallet_is_refused_with_403_and_charges_nothing(make_account, mock):
    account = make_account("0")

    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        account.client.responses.create(model="gpt-test", input="Hello there")

    assert excinfo.value.status_code == 403
    assert excinfo.value.body["type"] == "insufficient_quota"
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.endpoint, log.cost_micros) == (403, "responses", 0)
    assert account.balance() == 0


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
def test_a_model_served_only_by_another_provider_is_a_400(make_account, mock, kind):
    path = "/v1" if kind == "anthropic" else "/v1beta"
    channel_create(name=kind, type=kind, base_url=mock.url + path, model_ids=["gpt-test"])
    account = make_account("10", channel=False)

    with pytest.raises(openai.BadRequestError) as excinfo:
        account.client.responses.create(model="gpt-test", input="Hello there")

    assert "not supported for this model's provider" in excinfo.value.message
    assert excinfo.value.body["param"] == "model"
    assert mock.stats["requests"] == 0
    assert account.balance() == 10_000_000


def test_stored_response_endpoints_are_not_implemented(make_account, mock):
    account = make_account("10")

    with pytest.raises(openai.InternalServerError) as excinfo:
        account.client.responses.retrieve("resp_123")
    with pytest.raises(openai.BadRequestError) as background:
        account.client.responses.create(model="gpt-test", input="Hi", background=True)

    assert excinfo.value.status_code == 501
    assert background.value.body["param"] == "background"


def test_an_upstream_dying_mid_stream_ends_with_an_error_event_and_bills_what_was_delivered(
    make_account, mock
):
    add_channel(mock, "dying", "gpt-test", model_mapping={"gpt-test": "mock-fault-drop"})
    account = make_account("10", channel=False)

    events = list(account.client.responses.create(model="gpt-test", input="Hello there",
                                                  stream=True))  # fmt: skip

    received = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].type == "error"
    assert events[-1].code == "upstream_stream_interrupted"
    assert events[-1].sequence_number == events[-2].sequence_number + 1
    assert 0 < len(received.split()) < 16
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code) == (502, "upstream_stream_interrupted")
    assert log.completion_tokens == count_text(received) > 0
    assert log.cost_micros == expected_cost(log.prompt_tokens, log.completion_tokens)
    assert account.balance() == 10_000_000 - log.cost_micros


def test_a_key_with_a_credit_limit_is_settled_before_the_stream_ends(make_account, mock):
    account = make_account("10", credit_limit_micros=1_000_000)

    events = list(account.client.responses.create(model="gpt-test", input="Hello there",
                                                  stream=True))  # fmt: skip

    assert events[-1].type == "response.completed"
    # No waiting: response.completed waited for the settlement.
    [log] = account.logs()
    assert (log.status_code, log.cost_micros) == (200, 168)


def test_the_demo_key_answers_the_openai_sdks_responses_plain_and_streamed(relay, mock, capsys):
    demo = relay.client(demo_key(mock, capsys))

    plain = demo.responses.create(model="demo-chat", input="Hello there")
    events = list(demo.responses.create(model="demo-chat", input="Hello there", stream=True))

    assert plain.output_text.startswith("This is a mock reply to: Hello there")
    assert events[-1].response.output_text == plain.output_text
    assert plain.usage.model_extra["cost"] == 0.000026
