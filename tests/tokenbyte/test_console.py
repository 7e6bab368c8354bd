import pytest

from tests.factories import UserFactory, WalletFactory

pytestmark = pytest.mark.django_db

CONSOLE_PAGES = [
    "/dashboard/",
    "/tokens/",
    "/tokens/groups/",
    "/models/",
    "/logs/",
    "/tasks/",
    "/wallet/",
]


def test_the_root_sends_a_signed_in_user_to_the_dashboard(client):
    client.force_login(UserFactory())

    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"


def test_the_root_sends_an_anonymous_visitor_to_the_login_page(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"


@pytest.mark.parametrize("url", CONSOLE_PAGES)
def test_every_console_page_needs_a_login(client, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"


@pytest.mark.parametrize("url", CONSOLE_PAGES)
def test_the_header_shows_the_users_email_and_balance(client, url):
    user = UserFactory(email="header@example.com")
    WalletFactory(user=user, balance_micros=12_345_678)
    client.force_login(user)

    content = client.get(url).content.decode()

    assert "header@example.com" in content
    assert '<span class="visually-hidden">Balance </span>$12.345678</a>' in content
    assert 'action="/accounts/logout/"' in content


def test_the_header_shows_a_zero_balance_without_a_wallet(client):
    client.force_login(UserFactory())

    content = client.get("/dashboard/").content.decode()

    assert '<span class="visually-hidden">Balance </span>$0.00</a>' in content


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("/dashboard/", "Dashboard"),
        ("/tokens/groups/", "Tokens"),
        ("/models/", "Models"),
        ("/logs/", "Logs"),
        ("/tasks/", "Tasks"),
        ("/wallet/", "Wallet"),
    ],
)
def test_the_navigation_marks_the_current_page(client, url, label):
    client.force_login(UserFactory())

    content = client.get(url).content.decode()

    assert f'aria-current="page">{label}</a>' in content
    assert content.count('aria-current="page"') == 1 + (url == "/tokens/groups/")


def test_the_navigation_links_every_console_page_of_the_guide(client):
    client.force_login(UserFactory())

    content = client.get("/dashboard/").content.decode()

    for href in ["/dashboard/", "/tokens/", "/models/", "/logs/", "/tasks/", "/wallet/"]:
        assert f'href="{href}"' in content
    assert 'href="/profile/"' in content


def test_the_login_page_renders_in_the_console_layout_without_the_navigation(client):
    content = client.get("/accounts/login/").content.decode()

    assert '<body class="entrance">' in content
    assert "/static/css/console.css" in content
    assert 'aria-label="Console"' not in content
    assert 'name="login"' in content
    assert 'name="password"' in content
