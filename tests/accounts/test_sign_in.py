"""Sign-up, sign-in and its rate limits, through allauth's real views."""

import pytest
from django.core import mail
from django.test import override_settings

from accounts.models import AuditEvent, User
from tests.accounts.conftest import BROWSER, PASSWORD, sign_in
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

LOCKOUT = "Too many failed login attempts. Try again later."


def sign_up(client, email: str = "new@example.com"):
    return client.post(
        "/accounts/signup/",
        {
            "email": email,
            "password1": "a long new passphrase",
            "password2": "a long new passphrase",
        },
    )


def test_sign_up_creates_the_account_and_asks_to_verify_the_address(client):
    response = sign_up(client)

    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    user = User.objects.get()
    assert user.email == "new@example.com"
    assert [m.to for m in mail.outbox] == [["new@example.com"]]
    assert client.get("/profile/")["Location"] == "/accounts/login/?next=/profile/"


@override_settings(SIGNUP_ENABLED=False)
def test_sign_up_switched_off_refuses_and_creates_nobody(client):
    page = client.get("/accounts/signup/")
    response = sign_up(client)

    assert page.status_code == response.status_code == 200
    assert "account/signup_closed.html" in [t.name for t in page.templates]
    assert "account/signup_closed.html" in [t.name for t in response.templates]
    assert not User.objects.exists()
    assert mail.outbox == []


def test_an_unverified_address_cannot_sign_in_until_verified(client):
    UserFactory(email="ann@example.com")

    response = sign_in(client, "ann@example.com")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    assert "_auth_user_id" not in client.session


def test_a_verified_user_signs_in_and_the_sign_in_is_recorded(client, verified_user):
    user = verified_user()

    response = sign_in(client, "ann@example.com")

    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)
    event = AuditEvent.objects.get(user=user)
    assert (event.kind, event.ip, event.user_agent, event.detail) == (
        "signed_in",
        "203.0.113.7",
        BROWSER,
        "password",
    )


def test_a_wrong_password_is_recorded_for_the_owner_of_the_address(client, verified_user):
    user = verified_user()

    response = sign_in(client, "ann@example.com", "wrong password")

    assert response.status_code == 200
    assert "The email address and/or password you specified are not correct." in (
        response.content.decode()
    )
    assert list(AuditEvent.objects.values_list("user", "kind", "ip")) == [
        (user.pk, "sign_in_failed", "203.0.113.7")
    ]


def test_after_five_failures_the_account_is_locked_even_with_the_right_password(
    client, verified_user
):
    user = verified_user()
    for _ in range(5):
        assert LOCKOUT not in sign_in(client, "ann@example.com", "wrong").content.decode()

    locked = sign_in(client, "ann@example.com", PASSWORD)

    assert locked.status_code == 200
    assert LOCKOUT in locked.content.decode()
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(user=user, kind="sign_in_failed").count() == 5
    assert not AuditEvent.objects.filter(kind="signed_in").exists()


def test_another_account_from_another_address_is_not_locked_by_those_failures(
    client, verified_user
):
    verified_user("ann@example.com")
    bob = verified_user("bob@example.com")
    for _ in range(5):
        sign_in(client, "ann@example.com", "wrong")

    response = client.post(
        "/accounts/login/",
        {"login": "bob@example.com", "password": PASSWORD},
        REMOTE_ADDR="198.51.100.9",
    )

    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(bob.pk)


def test_one_address_is_limited_to_ten_failures_a_minute_across_accounts(client, verified_user):
    for n in range(10):
        verified_user(f"user{n}@example.com")
        sign_in(client, f"user{n}@example.com", "wrong")
    verified_user("last@example.com")

    response = sign_in(client, "last@example.com", PASSWORD)

    assert response.status_code == 200
    assert LOCKOUT in response.content.decode()
    assert "_auth_user_id" not in client.session


@override_settings(ACCOUNT_RATE_LIMITS={"login_failed": "10/m/ip,2/300s/key"})
def test_the_per_account_limit_comes_from_the_settings(client, verified_user):
    verified_user()
    sign_in(client, "ann@example.com", "wrong")
    sign_in(client, "ann@example.com", "wrong")

    response = sign_in(client, "ann@example.com", PASSWORD)

    assert LOCKOUT in response.content.decode()
