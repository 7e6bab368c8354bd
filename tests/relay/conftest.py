"""The relay under test: a real uvicorn process on a free port, in front of the mock upstream.

Tests create their rows with `transactional_db` (committed, so the relay process sees them) and
call the relay with the official openai SDK.
"""

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from django.conf import settings
from django.db import connection

from accounts.models import ApiToken, User
from accounts.services import api_token_create
from billing.models import Wallet
from billing.services import credit_grant, wallet_get_or_create
from catalog.models import Channel, Model
from catalog.services import channel_create
from mockupstream.server import DEFAULT_CHUNKS, MockUpstream
from tests.factories import ModelFactory, UserFactory
from tokenbyte.money import usd_to_micros
from usage.models import RequestLog

ROOT = Path(__file__).resolve().parents[2]
RELAY_ROLE = "relay"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RelayServer:
    """uvicorn serving tokenbyte.asgi in its own process, as in production."""

    def __init__(self, log_path: Path, *, keep_alive_seconds: int = 5, **env: str) -> None:
        self.port = free_port()
        self.keep_alive_seconds = keep_alive_seconds
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        db = settings.DATABASES["default"]
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{RELAY_ROLE}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "RELAY_RETRY_BACKOFF_MS": "5",
            "RELAY_INPROCESS_SCHEDULER": "false",
            "RELAY_MAX_BODY_BYTES": str(1024 * 1024),
            "RELAY_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
            "RELAY_CHANNEL_COOLDOWN_SECONDS": "1",
            "RELAY_CHANNEL_DISABLE_AFTER": "6",
            **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> "RelayServer":
        self.log = open(self.log_path, "w")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tokenbyte.asgi:application", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log",
             "--http", "relay.server:RelayHttpProtocol",
             "--timeout-keep-alive", str(self.keep_alive_seconds)],
            env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"relay exited: {self.log_path.read_text()}")
            try:
                httpx.get(f"{self.url}/v1/models", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("relay did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

    def client(self, key: str, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30, **kwargs
        )


@pytest.fixture(scope="session")
def relay_role(django_db_setup, django_db_blocker):
    """A role of its own for the relay process, so its statements can be counted apart."""
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'relay')"
            " THEN CREATE ROLE relay LOGIN SUPERUSER; END IF; END $$"
        )
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return RELAY_ROLE


def _relay_server(tmp_path_factory, name: str, **env: str):
    # No catalog cache: each test's fresh models and channels are seen at once.
    return RelayServer(
        tmp_path_factory.mktemp(name) / "relay.log", RELAY_CATALOG_CACHE_SECONDS="0", **env
    ).start()


@pytest.fixture(scope="session")
def relay_server_sql(relay_role, tmp_path_factory):
    server = _relay_server(tmp_path_factory, "relay-sql")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def relay_server_orm(relay_role, tmp_path_factory):
    """The relay on its ORM path (what SQLite uses), to hold it to the same books."""
    server = _relay_server(tmp_path_factory, "relay-orm", RELAY_SQL_FAST_PATH="false")
    yield server
    server.stop()


@pytest.fixture
def relay(relay_server_sql):
    return relay_server_sql


def both_paths(request):
    """For a module's `relay` fixture: run its tests on the SQL path and on the ORM path."""
    return request.getfixturevalue(f"relay_server_{request.param}")


@pytest.fixture(scope="session")
def mock_upstream():
    with MockUpstream() as mock:
        yield mock


@pytest.fixture
def mock(mock_upstream):
    mock_upstream.reset()
    mock_upstream.latency_ms = 0
    mock_upstream.chunk_delay_ms = 0
    mock_upstream.chunks = DEFAULT_CHUNKS
    return mock_upstream


# Prices of the test model, micro-USD per 1M tokens.
INPUT_PRICE = 2_500_000
OUTPUT_PRICE = 10_000_000
CACHED_PRICE = 1_250_000


@dataclass
class Account:
    user: User
    wallet: Wallet
    token: ApiToken
    key: str
    client: openai.OpenAI

    def balance(self) -> int:
        self.wallet.refresh_from_db()
        return self.wallet.balance_micros

    def logs(self):
        # By start time: each call settles after its answer, so ids may come in either order.
        return RequestLog.objects.filter(api_token=self.token).order_by("created_at", "id")


def add_channel(mock: MockUpstream, name: str, model: str, **kwargs) -> Channel:
    return channel_create(
        name=name, type="mock", base_url=mock.base_url, model_ids=[model], **kwargs
    )


@pytest.fixture
def test_model(transactional_db) -> Model:
    return ModelFactory(
        model_id="gpt-test",
        input_price_micros_per_mtok=INPUT_PRICE,
        output_price_micros_per_mtok=OUTPUT_PRICE,
        cached_input_price_micros_per_mtok=CACHED_PRICE,
        max_output_tokens=1000,
        context_length=16000,
    )


@pytest.fixture
def make_account(transactional_db, relay, mock, test_model):
    def make(balance: str = "10", *, channel: bool = True, **key_options) -> Account:
        user = UserFactory()
        wallet = wallet_get_or_create(user=user)
        if usd_to_micros(balance):
            credit_grant(wallet=wallet, amount_micros=usd_to_micros(balance), reason="test")
        if channel and not Channel.objects.filter(name="healthy").exists():
            add_channel(mock, "healthy", test_model.model_id)
        token, key = api_token_create(owner=user, name="test-key", **key_options)
        wallet.refresh_from_db()
        return Account(user=user, wallet=wallet, token=token, key=key, client=relay.client(key))

    return make


def wait_for(predicate, timeout: float = 5.0, message: str = "condition"):
    """Settlement lands just after the response; poll for it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.02)


def wait_for_logs(account: Account, count: int, timeout: float = 5.0) -> list[RequestLog]:
    wait_for(lambda: account.logs().count() >= count, timeout, f"{count} request log(s)")
    return list(account.logs())


def chat(account: Account, model: str = "gpt-test", **kwargs):
    kwargs.setdefault("messages", [{"role": "user", "content": "Hello there"}])
    return account.client.chat.completions.create(model=model, **kwargs)


def stream_until_error(account: Account) -> tuple[list[str], openai.APIError]:
    """Stream a chat until the relay's error event: the text delivered before it, and the error."""
    received = []
    with pytest.raises(openai.APIError) as excinfo:
        for chunk in chat(account, stream=True):
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    return received, excinfo.value


@pytest.fixture(autouse=True)
def _relay_quiet(transactional_db):
    """After a test, let the relay finish its database work (settlements, channel bookkeeping)
    before the tables are truncated, or the truncation deadlocks with it."""
    yield
    quiet_polls = 0
    deadline = time.monotonic() + 10
    while quiet_polls < 3 and time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state <> 'idle'",
                [RELAY_ROLE],
            )
            busy = cursor.fetchone()[0]
        quiet_polls = 0 if busy else quiet_polls + 1
        time.sleep(0.03)
