"""An async image job seen on the Tasks page in a real browser: queued, then succeeded without a
reload, its image opened from the page; and the job's call in Logs with its cost.

The site runs as the embedded default would, without a broker: the process that takes the submit
runs the job in a thread of its own."""

import re

import httpx
import pytest
from allauth.account.models import EmailAddress
from playwright.sync_api import expect

from accounts.services import api_token_create
from billing.services import credit_grant, wallet_get_or_create
from catalog.services import channel_create
from tests.e2e.conftest import ACTION_TIMEOUT_MS, DESKTOP, SiteServer
from tests.e2e.helpers import shoot
from tests.e2e.test_logs import sign_in
from tests.factories import ModelFactory, UserFactory
from tests.relay.conftest import RelayServer, mock_upstream  # noqa: F401

pytestmark = pytest.mark.timeout(120)

IMAGE_PRICE = 40_000


@pytest.fixture(scope="module")
def site(relay_role, tmp_path_factory):
    server = RelayServer(
        tmp_path_factory.mktemp("tasks-site") / "site.log",
        DEBUG="true",
        REDIS_URL="",
        RELAY_CATALOG_CACHE_SECONDS="0",
        ALLOWED_HOSTS="localhost,127.0.0.1",
    )
    server.env["SITE_URL"] = f"http://localhost:{server.port}"
    server.start()
    yield SiteServer(server)
    server.stop()


@pytest.fixture
def browser_page(browser, site, transactional_db):
    context = browser.new_context(viewport=DESKTOP, base_url=site.url, color_scheme="light")
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def customer(browser_page, mock_upstream):  # noqa: F811
    mock_upstream.reset()
    user = UserFactory(email="jobs@example.com")
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    credit_grant(wallet=wallet_get_or_create(user=user), amount_micros=1_000_000, reason="e2e")
    ModelFactory(model_id="e2e-image", call_type="image", price_unit="image",
                 unit_price_micros=IMAGE_PRICE)  # fmt: skip
    channel_create(name="e2e-images", type="mock", base_url=mock_upstream.base_url,
                   model_ids=["e2e-image"])  # fmt: skip
    _, key = api_token_create(owner=user, name="studio")
    return user, key


def test_an_async_image_job_completes_on_the_tasks_page(
    browser_page,
    site,
    customer,
    mock_upstream,  # noqa: F811
):
    page, (user, key) = browser_page, customer
    sign_in(page, site.url, user.email)
    mock_upstream.latency_ms = 2500
    try:
        response = httpx.post(
            f"{site.relay_url}/tasks",
            json={"type": "image.generation", "model": "e2e-image",
                  "input": {"prompt": "a lighthouse at dusk"}},
            headers={"Authorization": f"Bearer {key}"}, timeout=30,
        )  # fmt: skip
        assert response.status_code == 202
        task_id = response.json()["id"]

        page.goto("/tasks/")
        row = page.locator("#tasks tbody tr", has_text=task_id)
        expect(row).to_contain_text(re.compile("Queued|Running"))
        shoot(page, "tasks-running")
        # No reload: the table refreshes itself while a job runs.
        expect(row).to_contain_text("Succeeded", timeout=20_000)
    finally:
        mock_upstream.latency_ms = 0
    expect(row).to_contain_text("$0.04")
    shoot(page, "tasks-succeeded")

    with page.expect_response("**/tasks/media/**") as media:
        row.get_by_role("link", name=f"Result of {task_id}").click()
    assert media.value.status == 200
    assert media.value.headers["content-type"] == "image/png"

    page.goto("/logs/")
    expect(page.locator("table").first).to_contain_text("e2e-image")
    expect(page.locator("table").first).to_contain_text("$0.04")
