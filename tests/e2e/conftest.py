"""Browser tests: Debian's Chromium, driven by Playwright, against a live server on localhost.

`make test` installs what they need when it is missing: the Debian packages `chromium` and
`fonts-liberation`, and the OpenID Connect provider `oidc-provider-mock` in `.venv-oidc` (Flask and
Authlib stay out of the project's own virtualenv). Every test in this folder is marked `e2e`.

The site is served as http://localhost:PORT, never 127.0.0.1: WebAuthn needs a secure context
and Chromium refuses an IP address as a passkey's domain. `shoot(page, name)` saves the current
page in light and dark, at desktop and phone width, under `.tmp/screenshots/`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import DESKTOP, SCREENSHOTS

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OIDC_PROVIDER = ROOT / ".venv-oidc" / "bin" / "oidc-provider-mock"
# One Playwright action or expectation; a whole test is bounded by its timeout marker.
ACTION_TIMEOUT_MS = 10_000


def pytest_configure(config: pytest.Config) -> None:
    # pytest-django's live_server binds to --liveserver (or DJANGO_LIVE_TEST_SERVER_ADDRESS):
    # keep the host `localhost` whatever the environment says, on a free port.
    if not (config.option.liveserver or "").startswith("localhost"):
        config.option.liveserver = "localhost"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="package")
def browser() -> Iterator:
    """One headless Chromium for the browser tests (package scope: see below)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    # Playwright's sync API keeps an event loop running in this thread, so Django's ORM in the
    # test (factories, assertions, the database flush) would refuse to run without this. The
    # fixture has package scope, not session scope, so that the loop and the variable are gone
    # before the rest of the suite's tests (some of them async) run in the same process.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def site(live_server) -> str:
    """The live server's base URL, http://localhost:PORT (static files served)."""
    assert live_server.url.startswith("http://localhost:"), live_server.url
    return live_server.url


@pytest.fixture
def page(browser, site):
    """A fresh browser context (no cookies, no passkeys) and one page in it, per test."""
    context = browser.new_context(viewport=DESKTOP, base_url=site, color_scheme="light")
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="package")
def oidc_provider() -> Iterator[dict]:
    """oidc-provider-mock on a free port with one predefined user, whose button signs in."""
    if not OIDC_PROVIDER.exists():
        pytest.fail(f"{OIDC_PROVIDER} is missing: `make test` creates .venv-oidc")
    port = free_port()
    user = {"sub": "oidc-alice", "email": "alice.oidc@example.com", "email_verified": True}
    (ROOT / ".tmp").mkdir(exist_ok=True)
    log = (ROOT / ".tmp" / "oidc-provider-mock.log").open("w")
    process = subprocess.Popen(
        [str(OIDC_PROVIDER), "--host", "127.0.0.1", "--port", str(port),
         "--user-claims", json.dumps(user)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"oidc-provider-mock exited with {process.returncode}; see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"oidc-provider-mock did not listen on {port}; see {log.name}")
                time.sleep(0.1)
        # The issuer follows the host of each request: the browser and Django both say localhost.
        yield {"url": f"http://localhost:{port}", **user}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def verified_user(transactional_db):
    """A user whose email address is verified (sign-in requires it), password PASSWORD."""
    from allauth.account.models import EmailAddress

    from tests.factories import UserFactory

    user = UserFactory(email="owner@example.com")
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    return user


# The whole site as `make run` serves it (console, relay at /v1 and websockets in one ASGI
# process), for pages that call the relay or listen on a websocket: Django's live server speaks
# neither. Rows made with `transactional_db` are committed, so the process sees them.
from tests.relay.conftest import RelayServer, relay_role  # noqa: E402, F401


class SiteServer:
    def __init__(self, server: RelayServer) -> None:
        self.server = server
        # localhost, not 127.0.0.1: the same secure-context rule as the live server.
        self.url = f"http://localhost:{server.port}"
        self.relay_url = f"{self.url}/v1"


@pytest.fixture(scope="package")
def asgi_server(relay_role, tmp_path_factory) -> Iterator[SiteServer]:  # noqa: F811
    server = RelayServer(
        tmp_path_factory.mktemp("asgi-site") / "site.log",
        DEBUG="true",
        RELAY_CATALOG_CACHE_SECONDS="0",
        ALLOWED_HOSTS="localhost,127.0.0.1",
    ).start()
    yield SiteServer(server)
    server.stop()


@pytest.fixture
def asgi_page(browser, asgi_server, transactional_db):
    """A fresh browser context and page on the ASGI site (see `asgi_server`)."""
    context = browser.new_context(viewport=DESKTOP, base_url=asgi_server.url, color_scheme="light")
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()
