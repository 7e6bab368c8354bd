"""The product error table (document 002, section 4), through the real relay."""

from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import api_token_set_status
from billing.models import Hold
from catalog.models import Channel
from tests.factories import ModelFactory
from tests.relay.conftest import add_channel, chat, wait_for, wait_for_logs

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hello there"}]}


def post(relay, key: str | None, json=None, content=None, path="/v1/chat/completions", **headers):
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{relay.url}{path}", json=json, content=content, headers=headers, timeout=30)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def assert_nothing_charged(account):
    # A failed call is settled (its hold released) just after the error is answered.
    wait_for(lambda: not Hold.objects.filter(status="open").exists(), message="holds released")
    assert (
        account.balance() == account.wallet.ledger_entries.filter(kind="grant").get().amount_micros
    )
    assert account.wallet.held_micros == 0
    assert not Hold.objects.filter(status="open").exists()


def test_malformed_json_is_a_400(make_account, relay):
    account = make_account("1")

    response = post(relay, account.key, content=b'{"model": "gpt-test", "messages": [')

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"
    assert_nothing_charged(account)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "gpt-test"}, "messages"),
        ({**HELLO, "max_tokens": -1}, "max_tokens"),
        ({**HELLO, "n": 0}, "n"),
    ],
)
def test_missing_or_invalid_fields_are_a_400_naming_the_field(make_account, relay, body, param):
    account = make_account("1")

    response = post(relay, account.key, json=body)

    assert response.status_code == 400
    assert error_of(response)["param"] == param
    assert_nothing_charged(account)


def test_a_missing_key_is_a_401(relay):
    response = post(relay, None, json=HELLO)

    assert response.status_code == 401
    assert error_of(response)["code"] == "missing_api_key"


def test_an_unknown_key_is_a_401_through_the_sdk(relay):
    with pytest.raises(openai.AuthenticationError) as excinfo:
        relay.client("sk-not-a-real-key").chat.completions.create(**HELLO)

    assert excinfo.value.status_code == 401
    assert excinfo.value.code == "invalid_api_key"


def test_the_key_is_also_accepted_as_x_api_key(make_account, relay):
    account = make_account("1")

    response = httpx.post(
        f"{relay.url}/v1/chat/completions", json=HELLO, headers={"x-api-key": account.key}
    )

    assert response.status_code == 200


@pytest.mark.parametrize("status", ["disabled", "revoked"])
def test_disabled_and_revoked_keys_are_a_401(make_account, relay, status):
    account = make_account("1")
    api_token_set_status(token=account.token, status=status)

    response = post(relay, account.key, json=HELLO)

    assert response.status_code == 401
    assert status in error_of(response)["message"]


def test_an_expired_key_is_a_401(make_account, relay):
    account = make_account("1", expires_at=timezone.now() + timedelta(days=1))
    ApiToken.objects.filter(pk=account.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    response = post(relay, account.key, json=HELLO)

    assert response.status_code == 401
    assert "expired" in error_of(response)["message"]


def test_a_model_outside_the_allowlist_is_a_403(make_account, relay):
    ModelFactory(model_id="other-model")
    account = make_account("1", allowed_models=["other-model"])

    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        chat(account)

    assert excinfo.value.code == "model_not_allowed"
    assert_nothing_charged(account)


def test_a_caller_outside_the_ip_allowlist_is_a_403(make_account, relay):
    blocked = make_account("1", allowed_ips=["10.0.0.0/8"])
    allowed = make_account("1", allowed_ips=["127.0.0.0/8"])

    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        chat(blocked)
    chat(allowed)

    assert excinfo.value.code == "ip_not_allowed"
    assert "127.0.0.1" in excinfo.value.message


def test_a_blocked_user_is_a_403(make_account, relay):
    account = make_account("1")
    account.user.is_blocked = True
    account.user.save(update_fields=["is_blocked"])

    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        chat(account)

    assert excinfo.value.code == "account_blocked"


def test_insufficient_credit_is_a_403_with_the_amount_needed(make_account, relay):
    account = make_account("0.0005")

    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        chat(account, max_tokens=100)

    # 28 prompt tokens at $2.50/M (our estimate with its margin) + 100 at $10/M = $0.00107
    assert excinfo.value.code == "insufficient_quota"
    assert "needs up to $0.00107" in excinfo.value.message
    assert_nothing_charged(account)
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.error_code, log.cost_micros) == (403, "insufficient_quota", 0)


def test_a_zero_balance_is_a_403(make_account, relay):
    account = make_account("0")

    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        chat(account)

    assert excinfo.value.code == "insufficient_quota"


def test_a_call_over_the_per_request_cap_is_a_403(make_account, relay):
    account = make_account("10", max_cost_per_request_micros=500)

    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        chat(account, max_tokens=100)

    assert excinfo.value.code == "per_request_cap_exceeded"
    assert_nothing_charged(account)


def test_an_unknown_model_is_a_404(make_account, relay):
    account = make_account("1")

    with pytest.raises(openai.NotFoundError) as excinfo:
        chat(account, model="no-such-model")

    assert excinfo.value.code == "model_not_found"


def test_an_unknown_url_is_a_404(make_account, relay):
    account = make_account("1")

    response = post(relay, account.key, json={}, path="/v1/nothing/here")

    assert response.status_code == 404


def test_a_body_over_the_limit_is_a_413_refused_before_it_is_read(make_account, relay):
    account = make_account("1")
    # The test relay's limit is 1 MiB.
    big = {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}

    response = post(relay, account.key, json=big)
    chunked = httpx.post(
        f"{relay.url}/v1/chat/completions",
        content=iter([b"{" + b" " * (600 * 1024), b" " * (600 * 1024) + b"}"]),
        headers={"Authorization": f"Bearer {account.key}"},
    )

    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
    assert chunked.status_code == 413
    assert_nothing_charged(account)


def test_an_upstream_429_that_survives_failover_is_a_429_with_retry_after(make_account, mock):
    add_channel(
        mock, "limited", "gpt-test", model_mapping={"gpt-test": "mock-fault-429"}, priority=9
    )
    account = make_account("1", channel=False)

    with pytest.raises(openai.RateLimitError) as excinfo:
        chat(account)

    assert excinfo.value.response.headers["retry-after"] == "1"
    assert_nothing_charged(account)
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.attempts, log.cost_micros) == (429, 3, 0)


def test_an_endpoint_that_is_not_implemented_is_a_501(make_account, relay):
    account = make_account("1")

    response = post(relay, account.key, json={"prompt": "a cat"}, path="/v1/images/variations")

    assert response.status_code == 501


@pytest.mark.parametrize(("fault", "status"), [("malformed", 502), ("500", 502)])
def test_an_invalid_or_failing_upstream_is_a_502(make_account, mock, fault, status):
    add_channel(mock, "broken", "gpt-test", model_mapping={"gpt-test": f"mock-fault-{fault}"})
    account = make_account("1", channel=False)

    with pytest.raises(openai.APIStatusError) as excinfo:
        chat(account)

    assert excinfo.value.status_code == status
    assert_nothing_charged(account)
    [log] = wait_for_logs(account, 1)
    assert log.status_code == status
    assert log.error_message


def test_no_channel_for_a_known_model_is_a_503(make_account, relay):
    ModelFactory(model_id="orphan-model")
    account = make_account("1")

    with pytest.raises(openai.InternalServerError) as excinfo:
        chat(account, model="orphan-model")

    assert excinfo.value.status_code == 503
    assert excinfo.value.code == "no_channel_available"


def test_an_upstream_timeout_is_a_504(make_account, mock):
    channel = add_channel(
        mock, "slow", "gpt-test", model_mapping={"gpt-test": "mock-fault-timeout"}
    )
    Channel.objects.filter(pk=channel.pk).update(read_timeout_seconds=0.3)
    account = make_account("1", channel=False)

    with pytest.raises(openai.APIStatusError) as excinfo:
        chat(account)

    assert excinfo.value.status_code == 504
    assert excinfo.value.code == "upstream_timeout"
    assert_nothing_charged(account)
    [log] = wait_for_logs(account, 1)
    assert log.attempts == 3
