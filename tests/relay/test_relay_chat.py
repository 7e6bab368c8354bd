import httpx
import pytest

from tests.relay.conftest import (
    CACHED_PRICE,
    INPUT_PRICE,
    OUTPUT_PRICE,
    add_channel,
    both_paths,
    chat,
    wait_for_logs,
)
from tokenbyte.money import ceil_div

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["sql", "orm"])
def relay(request):
    return both_paths(request)


def expected_cost(prompt: int, completion: int, cached: int = 0) -> int:
    return ceil_div(
        (prompt - cached) * INPUT_PRICE + cached * CACHED_PRICE + completion * OUTPUT_PRICE,
        1_000_000,
    )


def test_it_answers_a_chat_completion_and_bills_it_to_the_micro_dollar(make_account, mock):
    account = make_account("10")

    response = chat(account)

    assert response.choices[0].message.content.startswith("This is a mock reply to: Hello there")
    # "Hello there" is 3 prompt tokens for the mock; its replies are 16 tokens long.
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (3, 16)
    assert expected_cost(3, 16) == 168
    assert response.usage.model_extra["cost"] == 0.000168
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.model_id, log.call_type) == (200, "gpt-test", "chat.completions")
    assert (log.prompt_tokens, log.completion_tokens, log.cached_tokens) == (3, 16, 0)
    assert log.cost_micros == 168
    assert log.channel_name == "healthy"
    assert log.token_name == "test-key"
    assert log.duration_ms >= 0 and log.ttft_ms is not None
    assert account.balance() == 10_000_000 - 168
    entry = account.wallet.ledger_entries.get(kind="usage")
    assert (entry.amount_micros, entry.idempotency_key) == (-168, f"usage:{log.request_id}")
    assert account.wallet.held_micros == 0


def test_cached_prompt_tokens_are_billed_at_the_cached_price(make_account, mock, test_model):
    add_channel(
        mock, "caching", "gpt-test", model_mapping={"gpt-test": "mock-fault-cached"}, priority=9
    )
    account = make_account("10")

    response = chat(account, messages=[{"role": "user", "content": "x" * 400}])

    usage = response.usage
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens) == (100, 50)
    cost = expected_cost(100, 16, cached=50)
    assert cost == 348
    assert usage.model_extra["cost"] == 0.000348
    [log] = wait_for_logs(account, 1)
    assert (log.cached_tokens, log.cost_micros) == (50, 348)


def test_everything_else_in_the_body_is_passed_through_untouched(make_account, mock, test_model):
    add_channel(mock, "mapped", "gpt-test", model_mapping={"gpt-test": "upstream-name"}, priority=9)
    account = make_account("10")
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]

    response = chat(
        account,
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
        ],
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        n=1,
        seed=7,
        temperature=0.2,
        max_tokens=50,
    )  # fmt: skip

    assert response.choices[0].finish_reason == "tool_calls"
    assert response.choices[0].message.tool_calls[0].function.name == "lookup"
    sent = mock.last_request["json"]
    assert sent["model"] == "upstream-name"
    assert sent["tools"] == tools
    assert (sent["tool_choice"], sent["seed"], sent["temperature"], sent["n"]) == (
        "auto",
        7,
        0.2,
        1,
    )
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["max_tokens"] == 50
    assert sent["messages"][0]["content"][1]["image_url"]["url"] == "data:image/png;base64,AAAA"
    [log] = wait_for_logs(account, 1)
    assert log.upstream_model == "upstream-name"
    assert log.request_params["tool_names"] == ["lookup"]
    assert "messages" not in log.request_params


def test_without_max_tokens_the_relay_sends_the_largest_the_budget_covers(make_account, mock):
    # $0.001 covers the prompt and (1000 - 70) / 10 = 93 output tokens of this model.
    account = make_account("0.001")

    chat(account)

    assert mock.last_request["json"]["max_tokens"] == 93
    [log] = wait_for_logs(account, 1)
    assert log.cost_micros == 168
    assert account.balance() == 1000 - 168


def test_with_ample_credit_max_tokens_is_the_models_maximum(make_account, mock):
    account = make_account("10")

    chat(account)

    assert mock.last_request["json"]["max_tokens"] == 1000


def test_legacy_completions_and_embeddings_are_relayed_and_billed(make_account, mock):
    from tests.factories import ModelFactory

    ModelFactory(model_id="embed-test", call_type="embedding", input_price_micros_per_mtok=20_000)
    add_channel(mock, "embeddings", "embed-test")
    account = make_account("10")

    completion = account.client.completions.create(model="gpt-test", prompt="Say hi", max_tokens=5)
    embedding = account.client.embeddings.create(model="embed-test", input=["one", "two"])

    assert completion.choices[0].text
    assert completion.usage.completion_tokens == 5
    assert (
        completion.usage.model_extra["cost"]
        == expected_cost(completion.usage.prompt_tokens, 5) / 1_000_000
    )
    assert len(embedding.data) == 2
    assert embedding.usage.model_extra["cost"] == 0.000001
    logs = wait_for_logs(account, 2)
    assert [log.call_type for log in logs] == ["completions", "embeddings"]
    assert logs[1].cost_micros == 1  # 2 tokens at $0.02/M, rounded up to one micro-USD


def test_models_lists_only_what_the_key_may_use(make_account, mock, test_model):
    from tests.factories import ModelFactory

    ModelFactory(model_id="no-channel-model")
    ModelFactory(model_id="other-model")
    add_channel(mock, "other", "other-model")
    everything = make_account("1")
    restricted = make_account("1", allowed_models=["gpt-test"])

    assert sorted(m.id for m in everything.client.models.list()) == ["gpt-test", "other-model"]
    assert [m.id for m in restricted.client.models.list()] == ["gpt-test"]
    model = restricted.client.models.retrieve("gpt-test")
    assert (model.id, model.object, model.owned_by) == ("gpt-test", "model", "openai")
    with pytest.raises(Exception) as excinfo:
        restricted.client.models.retrieve("other-model")
    assert excinfo.value.status_code == 404


def test_every_response_carries_a_request_id(make_account, relay):
    account = make_account("1")

    ok = httpx.get(f"{relay.url}/v1/models", headers={"Authorization": f"Bearer {account.key}"})
    refused = httpx.get(f"{relay.url}/v1/models")

    assert ok.headers["x-request-id"].startswith("req_")
    assert refused.headers["x-request-id"].startswith("req_")
    assert ok.headers["x-request-id"] != refused.headers["x-request-id"]
