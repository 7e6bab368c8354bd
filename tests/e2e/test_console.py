"""The console in a real browser: every page shows the owner's data, and only theirs."""

import pytest
from allauth.account.models import EmailAddress
from playwright.sync_api import expect

from billing.services import credit_grant
from tests.e2e.helpers import PASSWORD, shoot
from tests.factories import (
    ApiTokenFactory,
    AsyncTaskFactory,
    ChannelFactory,
    ModelFactory,
    RequestLogFactory,
    TokenGroupFactory,
    UserFactory,
    WalletFactory,
)
from usage.services import usage_rollup_add

pytestmark = pytest.mark.timeout(90)

CONSOLE_PAGES = [
    "/dashboard/",
    "/tokens/",
    "/tokens/groups/",
    "/models/",
    "/playground/",
    "/logs/",
    "/usage/",
    "/tasks/",
    "/wallet/",
    "/profile/",
]


def customer(email: str, *, credit_micros: int, key: str, task: str) -> dict:
    """A verified customer with a grant, an API key, a call made with it and an async task."""
    user = UserFactory(email=email)
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    credit_grant(
        wallet=WalletFactory(user=user),
        amount_micros=credit_micros,
        reason=f"Welcome credit for {email}",
    )
    group = TokenGroupFactory(owner=user, name=f"{key}-team")
    token = ApiTokenFactory(owner=user, name=key, group=group)
    log = RequestLogFactory(user=user, api_token=token, token_name=key, model_id="e2e-chat")
    # The call's hour in the usage rollups, as billing's settlement writes it.
    usage_rollup_add(log=log, cost_micros=log.cost_micros)
    AsyncTaskFactory(user=user, public_id=task, api_token=token)
    return {"user": user, "email": email, "key": key, "task": task, "log": log}


@pytest.fixture
def owner(transactional_db):
    model = ModelFactory(model_id="e2e-chat", display_name="E2E Chat")
    ChannelFactory().served_models.add(model)
    return customer(
        "owner@example.com", credit_micros=25_000_000, key="owner-laptop", task="task_owner0001"
    )


@pytest.fixture
def outsider(transactional_db):
    return customer(
        "outsider@example.com", credit_micros=7_000_000, key="outsider-ci", task="task_outsider1"
    )


def sign_in(page, site: str, email: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{site}/dashboard/")


def test_every_console_page_shows_the_owners_data_and_none_of_the_outsiders(
    page, site, owner, outsider
):
    sign_in(page, site, owner["email"])
    main = page.get_by_role("main")
    header = page.get_by_role("navigation", name="Console")
    # What each page shows of the owner, and what the outsider's counterpart would read as.
    shown = {
        "/dashboard/": ([owner["key"], "$25.00"], [outsider["key"], "$7.00"]),
        "/tokens/": ([owner["key"]], [outsider["key"]]),
        "/tokens/groups/": ([f"{owner['key']}-team"], [f"{outsider['key']}-team"]),
        "/models/": (["e2e-chat", "E2E Chat"], []),
        "/playground/": (["e2e-chat"], []),
        "/logs/": ([owner["key"], "e2e-chat"], [outsider["key"]]),
        "/usage/": ([owner["key"], "e2e-chat"], [outsider["key"]]),
        "/tasks/": ([owner["task"], owner["key"]], [outsider["task"], outsider["key"]]),
        "/wallet/": (
            ["$25.00", f"Welcome credit for {owner['email']}"],
            ["$7.00", outsider["email"]],
        ),
        "/profile/": ([owner["email"]], [outsider["email"]]),
    }
    assert list(shown) == CONSOLE_PAGES
    for url, (present, absent) in shown.items():
        response = page.goto(url)
        assert response.status == 200, url
        expect(page).to_have_url(f"{site}{url}")
        expect(header).to_contain_text(owner["email"])
        expect(header).to_contain_text("$25.00")
        for text in present:
            expect(main).to_contain_text(text)
        for text in absent:
            expect(main).not_to_contain_text(text)
        shoot(page, url.strip("/").replace("/", "-"))


def test_another_customers_call_is_not_found(page, site, owner, outsider):
    sign_in(page, site, owner["email"])

    own = page.goto(f"/logs/{owner['log'].request_id}/")
    assert own.status == 200
    shoot(page, "log-detail")
    theirs = page.goto(f"/logs/{outsider['log'].request_id}/")
    assert theirs.status == 404


def test_a_signed_out_visit_to_any_console_page_goes_to_the_login_page(page, site, owner):
    for url in ["/", *CONSOLE_PAGES]:
        page.goto(url)
        expected = f"{site}/accounts/login/" + (f"?next={url}" if url != "/" else "")
        expect(page).to_have_url(expected)
        expect(page.get_by_role("heading", name="Sign In")).to_be_visible()
    expect(page.get_by_role("navigation", name="Console")).to_have_count(0)
