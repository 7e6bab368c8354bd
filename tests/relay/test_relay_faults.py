"""Faults of the database and of relay processes: no paid call goes unbilled, no hold outlives
a dead process by more than a lease, and the books stay right (balance == sum of the ledger).

The PostgreSQL server of the test run is restarted (`pg_ctl restart -m fast`) and stopped
under load; relay processes are SIGKILLed mid-stream.
"""

import os
import shlex
import subprocess
import threading
import time

import openai
import pytest
from django.db import connection
from django.utils import timezone

from billing.models import Hold, LedgerEntry, Wallet
from billing.selectors import wallet_ledger_sum_micros
from billing.services import PROCESS_LOST, holds_release_expired
from tests.relay.conftest import _relay_server, wait_for
from usage.models import RequestLog

PG_CTL = os.environ.get("TEST_PG_CTL", "")
pytestmark = pytest.mark.skipif(not PG_CTL, reason="needs the test run's own PostgreSQL server")


def pg_ctl(*args: str) -> None:
    # No pipes: the server it starts would hold them open, and run() would wait for it.
    subprocess.run(
        [*shlex.split(PG_CTL), "-w", "-t", "60", *args],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def reconnect() -> None:
    """The test's own connection died with the server: the next query opens a new one."""
    connection.close()


@pytest.fixture(autouse=True)
def _fresh_connection_after(transactional_db):
    """Torn down before the database flush: the test's connection may have died with the
    server, and Django would otherwise use it again."""
    yield
    reconnect()


def books_are_right(wallet: Wallet) -> None:
    reconnect()
    wallet.refresh_from_db()
    assert wallet.balance_micros == wallet_ledger_sum_micros(wallet=wallet)
    assert wallet.held_micros == 0
    assert not Hold.objects.filter(status=Hold.Status.OPEN).exists()


@pytest.fixture(scope="module")
def fault_relay(relay_role, tmp_path_factory):
    # A short settle retry, so a longer outage reaches the outbox; short leases for the sweep.
    outbox = tmp_path_factory.mktemp("outbox")
    server = _relay_server(
        tmp_path_factory, "relay-faults", RELAY_SETTLE_RETRY_SECONDS="2",
        RELAY_OUTBOX_DIR=str(outbox), RELAY_HOLD_LEASE_SECONDS="3",
        RELAY_HOLD_HEARTBEAT_SECONDS="1",
    )  # fmt: skip
    server.outbox = outbox
    yield server
    server.stop()


@pytest.fixture
def relay(fault_relay):
    return fault_relay


def stream_call(client: openai.OpenAI) -> dict:
    """One streamed chat: whether it ended with [DONE] and the cost it was shown, or the error."""
    try:
        cost = None
        text = []
        for chunk in client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "Hello there"}],
            stream=True, stream_options={"include_usage": True},
        ):  # fmt: skip
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                cost = chunk.usage.model_extra.get("cost")
        return {"ok": True, "cost": cost}
    except openai.APIStatusError as error:
        return {"ok": False, "status": error.status_code, "code": error.code}
    except openai.APIError as error:
        return {"ok": False, "status": None, "code": type(error).__name__}


def run_load(client: openai.OpenAI, workers: int, until: threading.Event) -> list[dict]:
    """Streamed calls from `workers` threads until `until` is set; a refused call is retried
    after a pause, as a client backing off would."""
    results: list[dict] = []
    lock = threading.Lock()

    def worker() -> None:
        while not until.is_set():
            result = stream_call(client)
            with lock:
                results.append(result)
            if not result["ok"]:
                time.sleep(0.2)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_calls_finished_across_two_database_restarts_are_all_billed_once(make_account, mock):
    mock.chunk_delay_ms = 40  # ~0.7 s a stream: restarts land in the middle of calls
    account = make_account("10")
    restarts = []
    done = threading.Event()

    def restart_twice() -> None:
        for pause in (1.0, 2.0):
            time.sleep(pause)
            pg_ctl("restart", "-m", "fast")
            restarts.append(time.monotonic())
        time.sleep(1.5)  # calls that started after the second restart finish normally
        done.set()

    restarter = threading.Thread(target=restart_twice)
    restarter.start()
    results = run_load(account.client, workers=8, until=done)
    restarter.join()

    assert len(restarts) == 2
    # No 500: calls refused while the database was away are 503s the client may retry.
    failures = [r for r in results if not r["ok"]]
    assert all(r["status"] == 503 for r in failures), failures
    paid = [r for r in results if r["ok"]]
    assert len(paid) >= 20
    reconnect()
    wait_for(
        lambda: RequestLog.objects.filter(api_token=account.token, status_code=200).count()
        == len(paid),
        timeout=30, message="every paid call logged",
    )  # fmt: skip
    usage = LedgerEntry.objects.filter(wallet=account.wallet, kind="usage")
    assert usage.count() == len(paid)
    shown = sum(round(r["cost"] * 1_000_000) for r in paid)
    assert -sum(e.amount_micros for e in usage) == shown
    books_are_right(account.wallet)


def test_a_settlement_outlasting_the_retries_waits_in_the_outbox_and_is_billed_once_back(
    make_account, mock, relay
):
    mock.chunk_delay_ms = 150  # ~2.4 s a stream
    account = make_account("10")
    outcome = {}

    def call() -> None:
        outcome.update(stream_call(account.client))

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.8)  # held and streaming
    pg_ctl("stop", "-m", "fast")
    try:
        caller.join(30)
        assert outcome["ok"] and outcome["cost"] > 0
        # The database stayed away past the retries: the settlement is on disk.
        wait_for(lambda: list(relay.outbox.iterdir()), timeout=10, message="outbox file")
    finally:
        pg_ctl("start", "-o", os.environ["TEST_PG_OPTIONS"])
    reconnect()
    wait_for(lambda: not list(relay.outbox.iterdir()), timeout=20, message="outbox drained")
    [log] = RequestLog.objects.filter(api_token=account.token)
    assert (log.status_code, log.cost_micros) == (200, round(outcome["cost"] * 1_000_000))
    assert LedgerEntry.objects.filter(wallet=account.wallet, kind="usage").count() == 1
    books_are_right(account.wallet)


def test_the_first_call_after_a_restart_is_served_on_a_fresh_connection(make_account, mock):
    account = make_account("10")
    account.client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "warm the pool"}]
    )
    pg_ctl("restart", "-m", "fast")

    reply = account.client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "after the restart"}]
    )

    assert reply.choices[0].message.content
    reconnect()
    wait_for(lambda: account.logs().count() == 2, message="both calls logged")
    books_are_right(account.wallet)


def test_a_call_of_a_killed_process_is_released_and_logged_within_a_lease(
    make_account, mock, relay_role, tmp_path_factory
):
    mock.chunk_delay_ms = 300  # ~5 s a stream
    doomed = _relay_server(
        tmp_path_factory, "relay-doomed", RELAY_HOLD_LEASE_SECONDS="3",
        RELAY_HOLD_HEARTBEAT_SECONDS="1",
    )  # fmt: skip
    account = make_account("10")
    client = doomed.client(account.key)
    try:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-test", messages=[{"role": "user", "content": "Hello"}], stream=True
        ) as response:
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data:"))
            assert Hold.objects.filter(status=Hold.Status.OPEN).count() == 1
            doomed.process.kill()
            doomed.process.wait(10)
            cut = False
            try:
                for _ in lines:
                    pass
            except Exception:  # the SDK's transport error: the connection was cut
                cut = True
            assert cut
    finally:
        doomed.stop()

    assert holds_release_expired() == 0  # the lease still runs
    time.sleep(3.5)
    assert holds_release_expired() == 1

    [log] = account.logs()
    assert (log.status_code, log.error_code, log.cost_micros) == (500, PROCESS_LOST, 0)
    assert log.model_id == "gpt-test"
    books_are_right(account.wallet)
    assert account.balance() == 10_000_000


def test_a_long_call_of_a_live_process_keeps_its_hold_past_the_lease(make_account, mock):
    mock.chunk_delay_ms = 350  # ~5.6 s a stream, almost two leases
    account = make_account("10")
    outcome = {}
    caller = threading.Thread(target=lambda: outcome.update(stream_call(account.client)))
    caller.start()
    time.sleep(4.5)

    released = holds_release_expired(now=timezone.now())

    caller.join(30)
    assert released == 0
    assert outcome["ok"]
    wait_for(lambda: account.logs().filter(status_code=200).exists(), message="the call's log")
    books_are_right(account.wallet)
