"""Failover between channels, cooldown, automatic disable and the health probe."""

import openai
import pytest

from catalog.models import Channel
from catalog.services import channels_probe_disabled
from tests.relay.conftest import add_channel, chat, wait_for, wait_for_logs

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_failing_channel_fails_over_to_a_healthy_one_visibly_in_the_log(make_account, mock):
    add_channel(
        mock, "failing", "gpt-test", model_mapping={"gpt-test": "mock-fault-500"}, priority=9
    )
    add_channel(mock, "healthy", "gpt-test", priority=1)
    account = make_account("1", channel=False)

    response = chat(account)

    assert response.choices[0].message.content
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.attempts, log.channel_name) == (200, 2, "healthy")
    assert log.cost_micros == 168
    failing = wait_for(lambda: Channel.objects.filter(name="failing", failure_count=1).first())
    assert "HTTP 502 upstream_error" in failing.last_error


def test_the_higher_priority_channel_serves_first(make_account, mock):
    add_channel(mock, "primary", "gpt-test", priority=5)
    add_channel(mock, "backup", "gpt-test", priority=1)
    account = make_account("1", channel=False)

    for _ in range(3):
        chat(account)

    assert {log.channel_name for log in wait_for_logs(account, 3)} == {"primary"}


def test_weights_share_calls_within_a_priority(make_account, mock):
    add_channel(mock, "heavy", "gpt-test", weight=9)
    add_channel(mock, "light", "gpt-test", weight=1)
    account = make_account("1", channel=False)

    for _ in range(40):
        chat(account)

    names = [log.channel_name for log in wait_for_logs(account, 40)]
    assert names.count("heavy") > names.count("light") > 0 or names.count("heavy") >= 32


def test_a_failing_channel_cools_down_then_is_disabled_and_the_probe_re_enables_it(
    make_account, mock
):
    # The test relay cools a channel down for 1 s after 3 failures, disables it after 6.
    failing = add_channel(
        mock, "flaky", "gpt-test", model_mapping={"gpt-test": "mock-fault-500"}, priority=9
    )
    add_channel(mock, "healthy", "gpt-test", priority=1)
    account = make_account("5", channel=False)

    cooling = wait_for(
        lambda: (
            Channel.objects.filter(pk=failing.pk, cooldown_until__isnull=False).first()
            or (chat(account) and None)
        ),
        timeout=10,
        message="cooldown",
    )
    assert cooling.failure_count >= 3

    # While it cools down, calls go straight to the healthy channel.
    mock.reset()
    chat(account)
    assert mock.stats["requests"] == 1

    disabled = wait_for(
        lambda: (
            Channel.objects.filter(pk=failing.pk, status="auto_disabled").first()
            or (chat(account) and None)
        ),
        timeout=15,
        message="automatic disable",
    )
    assert "failures within" in disabled.status_reason

    # The probe asks the channel's /models, which the mock answers again.
    assert channels_probe_disabled() == ["flaky"]
    failing.refresh_from_db()
    assert (failing.status, failing.failure_count) == ("enabled", 0)


def test_a_client_error_from_upstream_is_passed_on_without_failover(make_account, mock):
    # The mock answers 400 to an unknown fault name, as a provider does to a bad request.
    add_channel(
        mock, "strict", "gpt-test", model_mapping={"gpt-test": "mock-fault-bogus"}, priority=9
    )
    add_channel(mock, "healthy", "gpt-test", priority=1)
    account = make_account("1", channel=False)

    with pytest.raises(openai.BadRequestError) as excinfo:
        chat(account)

    assert "bogus" in excinfo.value.message
    [log] = wait_for_logs(account, 1)
    assert (log.status_code, log.attempts, log.channel_name, log.cost_micros) == (
        400, 1, "strict", 0,
    )  # fmt: skip
