"""Rate limits, token quotas, token groups and alerts, through real relay processes and the SDK.

Arithmetic of the test call ("Hello there", model gpt-test at $2.50/$10 per 1M tokens):
- our prompt count is 9 tokens; holds reserve it with a margin, 28 tokens;
- the mock answers with 3 prompt tokens and 16 completion tokens (fewer when max_tokens is);
- TPM admits 9 + max_tokens × n and is corrected to prompt + completion at settlement;
- quotas reserve 28 + max_tokens × n and keep prompt + completion at settlement.
"""

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import redis
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.core import mail
from django.core.management import call_command

from accounts.models import ApiToken, User
from accounts.services import api_token_create, api_token_set_group, token_group_create
from billing.models import Alert, Hold, LedgerEntry, Wallet
from billing.selectors import wallet_ledger_sum_micros
from billing.services import credit_grant, wallet_get_or_create
from tests.relay.conftest import RelayServer, add_channel, chat, wait_for, wait_for_logs
from tokenbyte.celery import app as celery_app
from usage.models import RequestLog

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "Hello there"}]
PROMPT_ESTIMATE = 9  # what TPM admits for the prompt
PROMPT_HELD = 28  # what a hold reserves for it against quotas
# A call with max_tokens=10: 3 + 10 tokens used, 28 + 10 held, 3 × $2.50/M + 10 × $10/M charged.
USED_10, HELD_10, COST_10 = 13, 38, 108
COST_16 = 168  # a call without max_tokens: 16 completion tokens


@pytest.fixture(params=["sql", "orm"])
def paths(request):
    """For the quota and group tests: the relay on its SQL path and on its ORM path."""
    return request.getfixturevalue(f"relay_server_{request.param}")


@pytest.fixture(scope="module")
def second_relay(relay_role, tmp_path_factory):
    """Another relay process sharing PostgreSQL and Redis with the session's."""
    server = RelayServer(
        tmp_path_factory.mktemp("second") / "relay.log", RELAY_CATALOG_CACHE_SECONDS="0"
    ).start()
    yield server
    server.stop()


# A minute of this relay's rate windows lasts 3 s (RELAY_RATE_WINDOW_SCALE, tests only).
WINDOW_SCALE = 0.05


@pytest.fixture(scope="module")
def fast_window_relay(relay_role, tmp_path_factory):
    server = RelayServer(
        tmp_path_factory.mktemp("fast-window") / "relay.log",
        RELAY_CATALOG_CACHE_SECONDS="0",
        RELAY_RATE_WINDOW_SCALE=str(WINDOW_SCALE),
    ).start()
    yield server
    server.stop()


def raw_chat(client: openai.OpenAI, **kwargs):
    return client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=HELLO, **kwargs
    )


def ratelimit_headers(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("x-ratelimit-")}


def message_of(exc: openai.APIStatusError) -> str:
    """The error's own message (the SDK's .message prefixes "Error code: …")."""
    return exc.body["message"]


def outcomes(calls: int, fn, workers: int | None = None) -> list[str]:
    def one(i):
        try:
            fn(i)
            return "ok"
        except openai.APIStatusError as exc:
            return f"{exc.status_code} {exc.code}"

    with ThreadPoolExecutor(max_workers=workers or calls) as pool:
        return list(pool.map(one, range(calls)))


def settled(account, calls: int) -> None:
    """Every call's log row is in and no hold is left open."""
    wait_for_logs(account, calls, timeout=15)
    wait_for(lambda: not Hold.objects.filter(status="open").exists(), message="holds closed")


def assert_books(wallet: Wallet, *, spent: int, usage_entries: int) -> None:
    wallet.refresh_from_db()
    granted = wallet.ledger_entries.filter(kind="grant").get().amount_micros
    assert wallet.held_micros == 0
    assert wallet.balance_micros == granted - spent
    assert wallet.ledger_entries.filter(kind="usage").count() == usage_entries
    assert wallet.balance_micros == wallet_ledger_sum_micros(wallet=wallet)


# --- rate limits --------------------------------------------------------------------------------


def test_the_last_call_within_rpm_passes_and_the_next_is_a_429_with_headers(make_account):
    account = make_account("1", rpm=3)

    responses = [raw_chat(account.client) for _ in range(3)]
    with pytest.raises(openai.RateLimitError) as excinfo:
        chat(account)

    assert [ratelimit_headers(r.headers) for r in responses] == [
        {
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": str(left),
            "x-ratelimit-reset-requests": "1m0s",
        }
        for left in (2, 1, 0)
    ]
    refused = excinfo.value
    assert (refused.status_code, refused.code) == (429, "rate_limit_exceeded")
    assert message_of(refused).startswith(
        "Rate limit reached for requests per minute (RPM) on this API key: limit 3, used 3."
    )
    headers = refused.response.headers
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == (
        "3",
        "0",
    )
    assert 59 <= int(headers["retry-after"]) <= 60
    # The 429 is not logged and touches no money: three calls, three charges.
    settled(account, 3)
    time.sleep(0.2)
    assert account.logs().count() == 3
    assert_books(account.wallet, spent=3 * COST_16, usage_entries=3)


def test_twenty_concurrent_calls_against_rpm_five_let_exactly_five_through(make_account, mock):
    account = make_account("1", rpm=5)
    mock.latency_ms = 300

    results = outcomes(20, lambda _: chat(account))

    assert results.count("ok") == 5
    assert results.count("429 rate_limit_exceeded") == 15
    settled(account, 5)
    assert_books(account.wallet, spent=5 * COST_16, usage_entries=5)


def test_concurrency_split_across_two_relay_processes_shares_one_limit(
    make_account, mock, relay, second_relay
):
    account = make_account("1", rpm=5)
    clients = [relay.client(account.key), second_relay.client(account.key)]
    mock.latency_ms = 300

    results = outcomes(
        20, lambda i: clients[i % 2].chat.completions.create(model="gpt-test", messages=HELLO)
    )

    assert results.count("ok") == 5
    settled(account, 5)
    assert_books(account.wallet, spent=5 * COST_16, usage_entries=5)


def test_tpm_admits_on_the_estimate_and_is_corrected_with_the_actual_usage(make_account, mock):
    account = make_account("1", tpm=100)

    # Admitted on 9 + 50 = 59 tokens; it used 3 + 16 = 19, which is what the window keeps.
    first = raw_chat(account.client, max_tokens=50)
    wait_for_logs(account, 1)
    # Without the correction 59 + 59 would be over 100.
    second = raw_chat(account.client, max_tokens=50)
    wait_for_logs(account, 2)
    third = raw_chat(account.client, max_tokens=50)
    wait_for_logs(account, 3)
    # 3 × 19 = 57 used: 57 + (9 + 35) = 101 is one token too many, 57 + (9 + 34) = 100 fits.
    with pytest.raises(openai.RateLimitError) as excinfo:
        chat(account, max_tokens=35)
    last = raw_chat(account.client, max_tokens=34)

    assert [ratelimit_headers(r.headers) for r in (first, second, third, last)] == [
        {
            "x-ratelimit-limit-tokens": "100",
            "x-ratelimit-remaining-tokens": str(left),
            "x-ratelimit-reset-tokens": "1m0s",
        }
        for left in (41, 22, 3, 0)
    ]
    refused = excinfo.value
    assert message_of(refused).startswith(
        "Rate limit reached for tokens per minute (TPM) on this API key: "
        "limit 100, used 57, requested 44."
    )
    # 43 tokens are left, too few for the 44 this call asked for.
    assert refused.response.headers["x-ratelimit-remaining-tokens"] == "43"
    settled(account, 4)
    assert [log.completion_tokens for log in account.logs()] == [16, 16, 16, 16]


def test_a_call_larger_than_the_whole_tpm_is_refused_for_good(make_account):
    account = make_account("1", tpm=100)

    with pytest.raises(openai.RateLimitError) as excinfo:
        chat(account, max_tokens=200)

    assert message_of(excinfo.value).startswith(
        "Request too large for tokens per minute (TPM) on this API key: limit 100, requested 209."
    )
    assert "retry-after" not in excinfo.value.response.headers
    chat(account, max_tokens=20)  # nothing was consumed by the refusal


def test_the_last_call_within_rpd_passes_and_the_next_is_a_429(make_account):
    account = make_account("1", rpd=2)

    responses = [raw_chat(account.client) for _ in range(2)]
    with pytest.raises(openai.RateLimitError) as excinfo:
        chat(account)

    assert [ratelimit_headers(r.headers) for r in responses] == [
        {
            "x-ratelimit-limit-requests": "2",
            "x-ratelimit-remaining-requests": str(left),
            "x-ratelimit-reset-requests": "24h0m0s",
        }
        for left in (1, 0)
    ]
    assert "requests per day (RPD)" in message_of(excinfo.value)
    assert 86_390 <= int(excinfo.value.response.headers["retry-after"]) <= 86_400
    settled(account, 2)
    assert_books(account.wallet, spent=2 * COST_16, usage_entries=2)


def test_a_group_rpm_is_shared_by_its_keys(make_account, relay):
    account = make_account("1")
    group = token_group_create(owner=account.user, name="team", rpm=4)
    keys = [api_token_create(owner=account.user, name=f"k{i}", group=group)[1] for i in range(2)]
    clients = [relay.client(key) for key in keys]

    answers = [raw_chat(clients[i % 2]) for i in range(4)]
    with pytest.raises(openai.RateLimitError) as excinfo:
        raw_chat(clients[0])

    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["3", "2", "1", "0"]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "4"
    assert "on this token group 'team': limit 4, used 4" in message_of(excinfo.value)


def test_the_headers_come_with_streams_and_with_errors_after_the_check(make_account, relay):
    account = make_account("1", rpm=10, max_cost_per_request_micros=500)

    with httpx.stream(
        "POST",
        f"{relay.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {account.key}"},
    ) as stream:
        body = b"".join(stream.iter_bytes())
    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        chat(account, max_tokens=100)  # over the key's per-request cap

    assert stream.status_code == 200
    assert body.endswith(b"data: [DONE]\n\n")
    assert stream.headers["x-ratelimit-remaining-requests"] == "9"
    assert excinfo.value.code == "per_request_cap_exceeded"
    assert excinfo.value.response.headers["x-ratelimit-remaining-requests"] == "8"


def test_a_key_without_limits_gets_no_headers_and_never_touches_redis(make_account):
    limited = make_account("1", rpm=10)
    free = make_account("1")

    limited_headers = raw_chat(limited.client).headers
    free_headers = raw_chat(free.client).headers

    assert ratelimit_headers(free_headers) == {}
    assert "x-ratelimit-limit-requests" in limited_headers
    store = redis.Redis.from_url(settings.REDIS_URL)
    assert store.keys(f"tb:rl:k:{limited.token.pk}:*") != []
    assert store.keys(f"tb:rl:k:{free.token.pk}:*") == []


# --- token quotas -------------------------------------------------------------------------------


def test_the_last_call_within_the_key_quota_passes_and_the_next_is_a_403(make_account, paths):
    # Each call holds 38 tokens and keeps 13: 38 fits, 13 + 38, 26 + 38 = 64 fits to the token.
    account = make_account("1", quota_tokens=64)
    client = paths.client(account.key)

    for _ in range(3):
        raw_chat(client, max_tokens=10)
    settled(account, 3)
    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        raw_chat(client, max_tokens=10)

    refused = excinfo.value
    assert (refused.status_code, refused.code) == (403, "token_quota_exceeded")
    assert message_of(refused) == (
        "Token quota exceeded: this API key's token quota of 64 tokens is used up (25 left). "
        "Calls resume when it resets or is raised."
    )
    settled(account, 4)
    account.token.refresh_from_db()
    assert account.token.quota_used_tokens == 3 * USED_10
    assert_books(account.wallet, spent=3 * COST_10, usage_entries=3)
    last = account.logs().last()
    assert (last.status_code, last.error_code, last.cost_micros) == (
        403,
        "token_quota_exceeded",
        0,
    )


def test_without_max_tokens_the_relay_fits_the_call_to_what_is_left(make_account, paths, mock):
    account = make_account("1", quota_tokens=70)
    client = paths.client(account.key)
    for _ in range(3):
        raw_chat(client, max_tokens=10)
    settled(account, 3)  # 39 used, 31 left

    with pytest.raises(openai.PermissionDeniedError) as too_big:
        raw_chat(client, max_tokens=10)
    fitted = raw_chat(client).parse()  # 31 - 28 held for the prompt: max_tokens 3
    sent = mock.last_request["json"]
    settled(account, 5)
    with pytest.raises(openai.PermissionDeniedError) as used_up:
        raw_chat(client)

    assert message_of(too_big.value) == (
        "Token quota exceeded: this request needs up to 38 tokens (prompt and max_tokens) and "
        "31 are left of this API key's token quota of 70 tokens. Lower max_tokens."
    )
    assert sent["max_tokens"] == 3
    assert (fitted.usage.completion_tokens, fitted.choices[0].finish_reason) == (3, "length")
    assert "is used up (25 left)" in message_of(used_up.value)
    settled(account, 6)
    account.token.refresh_from_db()
    assert account.token.quota_used_tokens == 3 * USED_10 + 6
    assert_books(account.wallet, spent=3 * COST_10 + 38, usage_entries=4)


def _group_with_keys(account, relay, count: int, **limits):
    group = token_group_create(owner=account.user, name="team", **limits)
    tokens = [api_token_create(owner=account.user, name=f"k{i}", group=group) for i in range(count)]
    return group, [token for token, _ in tokens], [relay.client(key) for _, key in tokens]


def test_concurrent_calls_of_several_keys_never_exceed_the_group_quota(make_account, paths, mock):
    account = make_account("1")
    group, _, clients = _group_with_keys(account, paths, 3, quota_tokens=5 * HELD_10)
    mock.latency_ms = 1000

    results = outcomes(15, lambda i: raw_chat(clients[i % 3], max_tokens=10))

    assert results.count("ok") == 5
    assert results.count("403 token_quota_exceeded") == 10
    wait_for(lambda: RequestLog.objects.filter(group=group).count() == 15, timeout=15)
    wait_for(lambda: not Hold.objects.filter(status="open").exists(), message="holds closed")
    group.refresh_from_db()
    assert group.quota_used_tokens == 5 * USED_10
    assert [t.quota_used_tokens for t in ApiToken.objects.filter(group=group)] == [0, 0, 0]
    assert_books(account.wallet, spent=5 * COST_10, usage_entries=5)
    refusal = RequestLog.objects.filter(group=group, status_code=403).first()
    assert "the token quota of group 'team' (190 tokens)" in refusal.error_message
    # Refused while the quota was held by calls in flight, not used: no alert.
    assert not Alert.objects.exists()


def test_concurrent_calls_of_several_keys_never_exceed_the_group_credit_limit(
    make_account, paths, mock
):
    account = make_account("10")
    hold_per_call = 1070  # max_tokens=100: 28 × $2.50/M + 100 × $10/M
    group, _, clients = _group_with_keys(account, paths, 3, credit_limit_micros=4 * hold_per_call)
    mock.latency_ms = 1000

    results = outcomes(12, lambda i: raw_chat(clients[i % 3], max_tokens=100))

    assert results.count("ok") == 4
    assert results.count("403 insufficient_quota") == 8
    wait_for(lambda: RequestLog.objects.filter(group=group).count() == 12, timeout=15)
    wait_for(lambda: not Hold.objects.filter(status="open").exists(), message="holds closed")
    group.refresh_from_db()
    assert group.credit_used_micros == 4 * COST_16
    assert_books(account.wallet, spent=4 * COST_16, usage_entries=4)
    refusal = RequestLog.objects.filter(group=group, status_code=403).first()
    assert refusal.error_message == (
        "Insufficient credit: this request needs up to $0.00107 and the token group's credit "
        "limit is reached. Top up your balance or lower max_tokens."
    )


def test_moving_a_key_to_another_group_keeps_its_history(make_account, relay):
    account = make_account("1")
    old = token_group_create(owner=account.user, name="old", quota_tokens=1000)
    new = token_group_create(owner=account.user, name="new", quota_tokens=1000)
    token, key = api_token_create(owner=account.user, name="mover", group=old, quota_tokens=500)
    client = relay.client(key)
    raw_chat(client, max_tokens=10)
    wait_for(lambda: RequestLog.objects.filter(api_token=token).count() == 1)

    api_token_set_group(token=token, group=new)
    # The relay caches a key for up to a second.
    deadline = time.monotonic() + 3
    while RequestLog.objects.filter(api_token=token, group=new).count() == 0:
        assert time.monotonic() < deadline
        raw_chat(client, max_tokens=10)
        time.sleep(0.1)

    wait_for(lambda: not Hold.objects.filter(status="open").exists(), message="holds closed")
    logs = RequestLog.objects.filter(api_token=token)
    in_old, in_new = logs.filter(group=old).count(), logs.filter(group=new).count()
    assert in_new == 1
    assert logs.filter(group=old).values_list("group_name", flat=True).distinct().get() == "old"
    old.refresh_from_db()
    new.refresh_from_db()
    token.refresh_from_db()
    assert (old.quota_used_tokens, new.quota_used_tokens) == (in_old * USED_10, USED_10)
    assert token.quota_used_tokens == (in_old + in_new) * USED_10


# --- the acceptance scenario --------------------------------------------------------------------


@pytest.fixture
def celery_worker(transactional_db):
    """A real Celery worker on the test Redis, in a thread of this process: what the relay
    queues, it runs here, and Django's test email backend collects the emails."""
    with start_worker(celery_app, perform_ping_check=False, shutdown_timeout=20) as worker:
        yield worker


def test_a_key_with_rpm_3_and_a_quota_of_1000_tokens(
    fast_window_relay, mock, test_model, celery_worker
):
    """create_api_key --rpm 3 --quota-tokens 1000: three calls a minute, then the quota."""
    out = io.StringIO()
    call_command(
        "create_api_key", "--email=owner@example.com", "--name=accept", "--rpm=3",
        "--quota-tokens=1000", stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    key = out.getvalue().strip()
    owner = User.objects.get(email="owner@example.com")
    credit_grant(wallet=wallet_get_or_create(user=owner), amount_micros=10_000_000, reason="test")
    add_channel(mock, "healthy", test_model.model_id)
    mock.chunks = 300  # each call: 3 prompt + 300 completion tokens
    client = fast_window_relay.client(key)
    token = ApiToken.objects.get(name="accept")

    results = []
    while len(results) < 10:
        try:
            client.chat.completions.create(model="gpt-test", messages=HELLO)
            results.append("ok")
        except openai.RateLimitError as exc:
            results.append("429")
            # This relay's minute lasts 3 s: wait for the window the relay names.
            time.sleep(int(exc.response.headers["retry-after"]))
        except openai.PermissionDeniedError as exc:
            results.append(f"403 {exc.code}")
            break

    # Three calls in the first minute, a 429, then the quota (1000 tokens) stops the key:
    # 3 × 303 tokens, then the relay fits a fifth call to the 91 left (63 completion tokens).
    assert results == ["ok", "ok", "ok", "429", "ok", "403 token_quota_exceeded"]
    wait_for(lambda: RequestLog.objects.filter(api_token=token).count() == 5, timeout=10)
    token.refresh_from_db()
    assert token.quota_used_tokens == 3 * 303 + 66
    wait_for(lambda: len(mail.outbox) >= 2, timeout=15, message="two alert emails")
    assert sorted(m.subject for m in mail.outbox) == [
        "TokenByte alert: Your API key 'accept' has used 80% of its token quota of 1,000 tokens.",
        "TokenByte alert: Your API key 'accept' has used its whole token quota of 1,000.",
    ]
    assert all(m.to == ["owner@example.com"] for m in mail.outbox)
    alerts = Alert.objects.filter(api_token=token).order_by("threshold_percent")
    # The worker marks an alert emailed just after the email goes out: wait for the mark.
    wait_for(lambda: not alerts.filter(emailed_at__isnull=True).exists(), message="marked sent")
    assert [a.threshold_percent for a in alerts] == [80, 100]
    wait_for(lambda: not Hold.objects.filter(status="open").exists(), message="holds closed")
    wallet = Wallet.objects.get(user=owner)
    assert wallet.ledger_entries.filter(kind=LedgerEntry.Kind.USAGE).count() == 4
    assert wallet.balance_micros == wallet_ledger_sum_micros(wallet=wallet)


# --- low balance --------------------------------------------------------------------------------


def test_a_call_that_takes_the_balance_below_the_threshold_alerts_once(make_account, paths):
    account = make_account("0.001")
    Wallet.objects.filter(pk=account.wallet.pk).update(low_balance_threshold_micros=900)
    client = paths.client(account.key)

    raw_chat(client, max_tokens=10)  # $0.001 - $0.000108: below $0.0009
    wait_for(lambda: Alert.objects.exists(), message="the low-balance alert")
    raw_chat(client, max_tokens=10)  # lower still: the same crossing
    settled(account, 2)
    time.sleep(0.3)

    [alert] = Alert.objects.all()
    assert (alert.kind, alert.wallet_id) == ("low_balance", account.wallet.pk)
    assert alert.user == account.user
    assert alert.message == "Your balance is $0.000892, below your alert threshold of $0.0009."
    assert_books(account.wallet, spent=2 * COST_10, usage_entries=2)


def test_a_key_with_a_quota_is_settled_before_its_answer_ends(make_account, paths):
    """So a client that calls again at once is judged on what the last call used, not on what
    it held (without max_tokens a call may hold all that is left)."""
    account = make_account("1", quota_tokens=100)
    client = paths.client(account.key)

    client.chat.completions.create(model="gpt-test", messages=HELLO)
    plain = ApiToken.objects.get(pk=account.token.pk).quota_used_tokens
    chunks = list(client.chat.completions.create(model="gpt-test", messages=HELLO, stream=True))
    streamed = ApiToken.objects.get(pk=account.token.pk).quota_used_tokens

    assert chunks[-1].choices[0].finish_reason == "stop"
    assert (plain, streamed) == (19, 38)
    assert not Hold.objects.filter(status="open").exists()
    assert account.logs().count() == 2
