import time

import pytest
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value

from accounts.services import user_email_mark_verified
from tests.factories import UserFactory

PASSWORD = "correct horse battery"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0"


def totp_code(secret: str, *, steps_from_now: int = 0) -> str:
    """The code an authenticator app shows now for an allauth TOTP secret (base32)."""
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30 + steps_from_now))


def sign_in(client, email: str, password: str = PASSWORD):
    return client.post(
        "/accounts/login/",
        {"login": email, "password": password},
        HTTP_USER_AGENT=BROWSER,
        REMOTE_ADDR="203.0.113.7",
    )


@pytest.fixture
def verified_user(db):
    """A customer whose address allauth counts as verified (mandatory verification)."""

    def make(email: str = "ann@example.com", **fields):
        user = UserFactory(email=email, **fields)
        user_email_mark_verified(user=user)
        return user

    return make
