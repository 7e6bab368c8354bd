"""A webhook endpoint that checks each delivery the way the app does, and the fake it listens to."""

from __future__ import annotations

import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from fakestripe.server import FakeStripe

API_KEY = "sk_test_fake_suite"
WEBHOOK_SECRET = "whsec_fake_suite"


class WebhookReceiver:
    """Verifies every delivery with stripe.Webhook.construct_event; answers 400 to a bad
    signature, else the next queued status (default 200), after the next queued delay."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.statuses: deque[int] = deque()
        self.delays: deque[float] = deque()
        self._received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                header = self.headers.get("Stripe-Signature")
                try:
                    event = stripe.Webhook.construct_event(body.decode(), header, receiver.secret)
                    error = None
                except (stripe.SignatureVerificationError, ValueError) as exc:
                    event, error = None, str(exc)
                with receiver._lock:
                    delay = receiver.delays.popleft() if receiver.delays else 0
                    status = (
                        400
                        if event is None
                        else (receiver.statuses.popleft() if receiver.statuses else 200)
                    )
                    # Recorded on arrival: a slow answer never lands in a later test's list.
                    receiver._received.append(
                        {
                            "event": event,
                            "error": error,
                            "body": body.decode(),
                            "headers": dict(self.headers),
                            "status": status,
                        }
                    )
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender timed out first, as a test meant it to

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/billing/stripe/webhook/"

    @property
    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._received)

    def types(self) -> list[str]:
        return [item["event"].type for item in self.received if item["event"] is not None]

    def reset(self) -> None:
        with self._lock:
            self._received.clear()
            self.statuses.clear()
            self.delays.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def receiver():
    endpoint = WebhookReceiver(WEBHOOK_SECRET)
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def fake(receiver):
    with FakeStripe(
        api_key=API_KEY,
        webhook_url=receiver.url,
        webhook_secret=WEBHOOK_SECRET,
        retry_delays=[0.1, 0.1, 0.1],
    ) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(fake, receiver):
    fake.reset()
    receiver.reset()
    fake.webhook_url = receiver.url
    fake.webhook_secret = WEBHOOK_SECRET
    fake.retry_delays = [0.1, 0.1, 0.1]
    fake.delivery_timeout = 10
    yield


@pytest.fixture
def client(fake):
    # No SDK retries: every answer must reach the test as the fake gave it.
    return stripe.StripeClient(API_KEY, base_addresses={"api": fake.url}, max_network_retries=0)
