import time

import openai
import pytest
from django.db import connection

from accounts.models import ApiToken
from accounts.services import api_token_set_status, token_group_create
from tests.relay.conftest import RelayServer, chat, wait_for_logs

pytestmark = pytest.mark.django_db(transaction=True)


def test_revoking_a_key_takes_effect_within_one_second(make_account):
    account = make_account("1")
    chat(account)  # the key is now in the relay's cache

    api_token_set_status(token=account.token, status="revoked")
    revoked_at = time.monotonic()
    while True:
        try:
            chat(account)
        except openai.AuthenticationError:
            break
        assert time.monotonic() - revoked_at < 1.0, "still accepted a second after revocation"
        time.sleep(0.05)

    assert time.monotonic() - revoked_at <= 1.1


def test_last_used_is_kept_current_without_a_write_per_call(make_account):
    account = make_account("1")

    chat(account)
    wait_for_logs(account, 1)
    first = ApiToken.objects.get(pk=account.token.pk).last_used_at
    chat(account)
    wait_for_logs(account, 2)

    assert first is not None
    # The second call, within a minute of the first, did not write it again.
    assert ApiToken.objects.get(pk=account.token.pk).last_used_at == first


@pytest.fixture(scope="module")
def cached_relay(relay_role, tmp_path_factory):
    # Production-like caches: keys for 1 s, the catalog for 60 s.
    server = RelayServer(
        tmp_path_factory.mktemp("cached") / "relay.log", RELAY_CATALOG_CACHE_SECONDS="60"
    ).start()
    yield server
    server.stop()


def relay_statements() -> list[tuple[str, int]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT query, calls FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
            # Top-level statements only: one per round trip (function bodies are nested).
            " WHERE r.rolname = %s AND s.toplevel ORDER BY query",
            ["relay"],
        )
        return cursor.fetchall()


# Database round trips of one relayed call with max_tokens set and warm key and catalog caches:
# the hold function, then the settlement function with the log row. If this changes, the
# relay's hot path changed: look at the statements printed on failure.
QUERIES_PER_CALL = 2


def test_the_database_round_trips_of_one_relayed_call_are_pinned(make_account, cached_relay):
    account = make_account("10")
    limited = make_account("10")
    client = cached_relay.client(account.key)
    for _ in range(2):  # warm the caches
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}]
        )
    wait_for_logs(account, 2)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_statements_reset()")

    client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], max_tokens=20
    )
    wait_for_logs(account, 3)
    with_max_tokens = relay_statements()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_statements_reset()")
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    wait_for_logs(account, 4)
    without = relay_statements()

    total = sum(calls for _, calls in with_max_tokens)
    assert total == QUERIES_PER_CALL, "\n".join(f"{c} × {q}" for q, c in with_max_tokens)
    # Without max_tokens the hold is optimistic (the model's maximum output): as many trips
    # when the credit is there. A short wallet costs a budget read and a second hold.
    assert sum(calls for _, calls in without) == QUERIES_PER_CALL

    # Quotas and credit limits of the key and its group are part of the same hold and
    # settlement; rate limits live in Redis.
    group = token_group_create(
        owner=limited.user, name="team", quota_tokens=1_000_000, credit_limit_micros=5_000_000
    )
    ApiToken.objects.filter(pk=limited.token.pk).update(
        group=group, quota_tokens=1_000_000, credit_limit_micros=5_000_000, rpm=1000, tpm=100_000
    )
    limited_client = cached_relay.client(limited.key)
    for _ in range(2):
        limited_client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], max_tokens=20
        )
    wait_for_logs(limited, 2)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_statements_reset()")
    limited_client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], max_tokens=20
    )
    wait_for_logs(limited, 3)
    with_limits = relay_statements()

    assert sum(calls for _, calls in with_limits) == QUERIES_PER_CALL, "\n".join(
        f"{c} × {q}" for q, c in with_limits
    )
