"""The site as `make run` serves it: console pages with their static files, and the relay, from one
ASGI process."""

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import PASSWORD

pytestmark = pytest.mark.timeout(90)


def test_the_asgi_site_serves_the_console_with_its_styles_and_the_relay(
    asgi_page, asgi_server, verified_user
):
    asgi_page.goto("/accounts/login/")
    asgi_page.get_by_label("Email").fill(verified_user.email)
    asgi_page.get_by_label("Password").fill(PASSWORD)
    asgi_page.get_by_role("button", name="Sign In", exact=True).click()
    expect(asgi_page).to_have_url(f"{asgi_server.url}/dashboard/")

    css = httpx.get(f"{asgi_server.url}/static/css/console.css", timeout=5)
    assert css.status_code == 200
    assert "text/css" in css.headers["content-type"]
    models = httpx.get(f"{asgi_server.relay_url}/models", timeout=5)
    assert models.status_code == 401
    assert models.json()["error"]["code"] == "missing_api_key"
