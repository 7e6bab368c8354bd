"""The rate limiter itself, both backends held to the same semantics with an explicit clock."""

import asyncio
import uuid

import pytest
from django.conf import settings

from relay import ratelimit
from relay.keys import KeyInfo
from relay.ratelimit import (
    Admission,
    LocalLimiter,
    RedisLimiter,
    Scope,
    admit,
    format_duration,
    scopes_of,
)
from tests.relay.conftest import free_port

MINUTE = 60_000
DAY = 86_400_000
T0 = 1_700_000_000_000  # an arbitrary "now", in ms


def scope(rpm=None, tpm=None, rpd=None, label="API key") -> Scope:
    # A fresh identity per test: the Redis backend shares one server with other tests.
    return Scope(f"t:{uuid.uuid4().hex}", label, rpm, tpm, rpd)


@pytest.fixture(params=["local", "redis"])
def check(request):
    """check(scopes, member, tokens, now) -> Admission, on one limiter for the whole test."""
    if request.param == "local":
        limiter = LocalLimiter()
        loop = asyncio.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
        limiter = loop.run_until_complete(_redis_limiter())

    def run(scopes, member, tokens=1, now=T0):
        scopes = tuple(scopes)
        admitted, raw = loop.run_until_complete(limiter.check(scopes, member, tokens, now))
        return Admission.from_raw(scopes, member, tokens, admitted, raw)

    def correct(scopes, member, estimate, actual):
        loop.run_until_complete(limiter.correct(tuple(scopes), member, estimate, actual))

    run.correct = correct
    run.limiter = limiter
    run.loop = loop
    yield run
    loop.run_until_complete(limiter.close())
    loop.close()


async def _redis_limiter() -> RedisLimiter:
    return RedisLimiter(settings.REDIS_URL)


def test_requests_per_minute_admit_up_to_the_limit_then_say_when_to_retry(check):
    key = scope(rpm=2)

    first = check([key], "r1", now=T0)
    second = check([key], "r2", now=T0 + 10_000)
    third = check([key], "r3", now=T0 + 20_000)

    assert (first.admitted, second.admitted, third.admitted) == (True, True, False)
    assert first.headers() == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "1m0s",
    }
    assert second.headers()["x-ratelimit-remaining-requests"] == "0"
    error = third.error()
    assert (error.status, error.code) == (429, "rate_limit_exceeded")
    # r1 leaves the window at T0 + 60 s, 40 s from now; the window is whole again at r2 + 60 s.
    assert error.headers == {
        "retry-after": "40",
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "50s",
    }
    assert error.message == (
        "Rate limit reached for requests per minute (RPM) on this API key: limit 2, used 2. "
        "Please try again in 40s."
    )


def test_the_window_slides_an_entry_leaves_exactly_a_minute_after_it_came(check):
    key = scope(rpm=2)
    check([key], "r1", now=T0)
    check([key], "r2", now=T0 + 10_000)

    assert not check([key], "r3", now=T0 + MINUTE - 1).admitted
    assert check([key], "r4", now=T0 + MINUTE).admitted
    assert not check([key], "r5", now=T0 + MINUTE + 1).admitted
    assert check([key], "r6", now=T0 + 10_000 + MINUTE).admitted


def test_a_refused_call_consumes_nothing(check):
    key = scope(rpm=1)
    check([key], "r1", now=T0)
    for i in range(5):
        assert not check([key], f"refused{i}", now=T0 + 1000 * i).admitted

    # Had the refusals counted, the window would still be full here.
    assert check([key], "r2", now=T0 + MINUTE).admitted


def test_tokens_per_minute_admit_on_the_estimate_and_are_corrected_at_settlement(check):
    key = scope(tpm=100)

    first = check([key], "c1", tokens=59, now=T0)
    check.correct([key], "c1", 59, 19)
    second = check([key], "c2", tokens=59, now=T0 + 1000)
    check.correct([key], "c2", 59, 19)
    third = check([key], "c3", tokens=62, now=T0 + 2000)  # 19 + 19 + 62 = 100: the edge
    fourth = check([key], "c4", tokens=1, now=T0 + 3000)

    assert [a.admitted for a in (first, second, third, fourth)] == [True, True, True, False]
    assert first.headers() == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "41",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    assert second.headers()["x-ratelimit-remaining-tokens"] == "22"
    assert third.headers()["x-ratelimit-remaining-tokens"] == "0"
    # One token frees when c1 (19 tokens) leaves the window, 57 s from now.
    assert fourth.error().headers["retry-after"] == "57"
    assert "tokens per minute (TPM)" in fourth.error().message
    assert "used 100, requested 1" in fourth.error().message


def test_a_call_over_the_whole_token_limit_is_refused_without_a_retry_time(check):
    key = scope(tpm=100)

    refused = check([key], "big", tokens=101, now=T0)

    error = refused.error()
    assert error.status == 429
    assert "retry-after" not in error.headers
    assert error.message.startswith("Request too large for tokens per minute (TPM)")
    assert check([key], "small", tokens=100, now=T0).admitted


def test_requests_per_day(check):
    key = scope(rpd=2)
    check([key], "d1", now=T0)
    check([key], "d2", now=T0 + 3_600_000)

    refused = check([key], "d3", now=T0 + 7_200_000)

    assert not refused.admitted
    assert refused.error().headers == {
        "retry-after": str(22 * 3600),
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "23h0m0s",
    }
    assert check([key], "d4", now=T0 + DAY).admitted


def test_a_group_limit_refuses_the_call_and_the_key_windows_are_not_consumed(check):
    key = scope(rpm=5)
    group = scope(rpm=1, label="token group 'team'")
    assert check([key, group], "g1", now=T0).admitted

    refused = check([key, group], "g2", now=T0 + 1000)

    assert not refused.admitted
    assert "on this token group 'team'" in refused.error().message
    # The key's own window still holds one entry only: four more fit on their own.
    for i in range(4):
        assert check([key], f"k{i}", now=T0 + 2000).admitted
    assert not check([key], "k5", now=T0 + 2000).admitted


def test_the_headers_show_the_tightest_window(check):
    key = scope(rpm=10, rpd=3)

    admission = check([key], "h1", now=T0)

    assert admission.headers() == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "24h0m0s",
    }


def test_twenty_concurrent_checks_against_rpm_five_admit_exactly_five(check):
    key = scope(rpm=5)

    async def burst():
        return await asyncio.gather(
            *(check.limiter.check((key,), f"c{i}", 1, T0) for i in range(20))
        )

    results = check.loop.run_until_complete(burst())

    assert sum(admitted for admitted, _ in results) == 5


def test_the_embedded_limiter_forgets_windows_that_went_quiet():
    limiter = LocalLimiter()
    limiter.SWEEP_EVERY = 3
    key = scope(rpm=1)
    limiter.check_now((key,), "a", 1, T0)
    assert f"{key.ident}:m" in limiter.logs

    limiter.check_now((scope(rpm=1),), "b", 1, T0 + MINUTE)
    limiter.check_now((scope(rpm=1),), "c", 1, T0 + DAY)

    assert f"{key.ident}:m" not in limiter.logs


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0ms"), (20, "20ms"), (1000, "1s"), (1500, "1.5s"), (60_000, "1m0s"),
     (90_250, "1m30.25s"), (DAY, "24h0m0s")],
)  # fmt: skip
def test_durations_are_written_as_openai_does(ms, text):
    assert format_duration(ms) == text


def test_a_key_without_limits_never_reaches_the_limiter():
    info = KeyInfo(
        key_id=1, name="k", owner_id=1, organization_id=None, group_id=None, group_name="",
        wallet_id=1, status="enabled", expires_at=None, owner_blocked=False, owner_active=True,
        allowed_models=frozenset(), allowed_networks=(), max_cost_per_request_micros=None,
        credit_limit_micros=None,
    )  # fmt: skip

    assert scopes_of(info) == ()
    assert asyncio.run(admit(info, member="m", tokens=1)) is None


def test_in_redis_a_corrected_window_still_expires():
    key = scope(tpm=100)

    async def run():
        limiter = RedisLimiter(settings.REDIS_URL)
        try:
            await limiter.check((key,), "only", 59, None)
            # The log's one entry is swapped: the key must keep its expiry (no leak, no reset).
            await limiter.correct((key,), "only", 59, 19)
            minute_log, tokens, _ = key.redis_keys()
            return (
                await limiter.client.pttl(minute_log),
                await limiter.client.pttl(tokens),
                await limiter.client.get(tokens),
            )
        finally:
            await limiter.close()

    log_ttl, tokens_ttl, total = asyncio.run(run())

    assert 0 < log_ttl <= MINUTE
    assert 0 < tokens_ttl <= MINUTE
    assert total == b"19"


def test_with_redis_unreachable_a_limited_key_passes_unlimited_and_it_is_logged(
    monkeypatch, caplog
):
    info = KeyInfo(
        key_id=1, name="k", owner_id=1, organization_id=None, group_id=None, group_name="",
        wallet_id=1, status="enabled", expires_at=None, owner_blocked=False, owner_active=True,
        allowed_models=frozenset(), allowed_networks=(), max_cost_per_request_micros=None,
        credit_limit_micros=None, rpm=1, tpm=100,
    )  # fmt: skip
    closed = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setattr(ratelimit, "_limiter", closed)

    async def scenario():
        with pytest.raises(ratelimit.LimiterUnavailable):
            await closed.check(scopes_of(info), "m0", 1, None)
        admissions = [await admit(info, member=f"m{i}", tokens=10) for i in range(3)]
        await closed.close()
        return admissions

    # Quotas and money are still enforced by the hold; only the windows are skipped.
    assert asyncio.run(scenario()) == [None, None, None]
    assert caplog.text.count("rate limiter unavailable") == 3
