import pytest
from django.conf import settings


def pytest_configure(config):
    # The suite runs on the production stack; `make test` provides both servers.
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        raise pytest.UsageError(
            "Tests need PostgreSQL: run them with `make test` (or set DATABASE_URL and REDIS_URL)."
        )
    if not settings.REDIS_URL:
        raise pytest.UsageError("Tests need Redis: run them with `make test` (or set REDIS_URL).")


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def manage(transactional_db):
    """Run `manage.py …` as a real subprocess against the test database."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    root = Path(__file__).resolve().parent.parent

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {**os.environ, "DATABASE_URL": url}
        return subprocess.run(
            [sys.executable, str(root / "manage.py"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=root,
        )

    return run


@pytest.fixture
def staff_user(db):
    """A superuser with a confirmed TOTP device, as `otp_enroll` leaves one."""
    from tests.factories import TOTPDeviceFactory, UserFactory

    user = UserFactory(email="staff@example.com", is_staff=True, is_superuser=True)
    user.totp_device = TOTPDeviceFactory(user=user)
    return user


@pytest.fixture
def staff_client(client, staff_user):
    """A client signed in to the admin through its real login form: password and TOTP code."""
    from tests.factories import totp_token

    device = staff_user.totp_device
    response = client.post(
        "/admin/login/?next=/admin/",
        {
            "username": staff_user.email,
            "password": "correct horse battery",
            "otp_device": device.persistent_id,
            "otp_token": totp_token(device),
        },
    )
    assert response.status_code == 302, response.content.decode()
    assert response["Location"] == "/admin/"
    return client


# The personas of the console's permission tests (STYLE: owner / member / outsider).
@pytest.fixture
def owner():
    from tests.factories import UserFactory

    return UserFactory(email="owner@example.com")


@pytest.fixture
def outsider():
    from tests.factories import UserFactory

    return UserFactory(email="outsider@example.com")


@pytest.fixture
def owner_client(client, owner):
    """The Django test client, signed in as the owner."""
    client.force_login(owner)
    return client


# The other people of an organization's tests: each such test module defines its `org`.
@pytest.fixture
def admin(org):
    from tests.organizations import new_member

    return new_member(org, "admin@example.com", "admin")


@pytest.fixture
def member(org):
    from tests.organizations import new_member

    return new_member(org, "member@example.com", "member")
