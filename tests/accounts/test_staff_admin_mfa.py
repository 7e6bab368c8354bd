"""One authenticator for both doors: a staff member who signed in to the console with allauth's
second factor opens /admin/ without a django-otp device; a password alone still does not."""

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.accounts.conftest import sign_in, totp_code

pytestmark = pytest.mark.django_db


@pytest.fixture
def with_totp():
    def enrol(user) -> str:
        secret = generate_totp_secret()
        TOTP.activate(user, secret)
        return secret

    return enrol


def sign_in_with_code(client, user, secret: str):
    assert sign_in(client, user.email)["Location"] == "/accounts/2fa/authenticate/"
    response = client.post("/accounts/2fa/authenticate/", {"code": totp_code(secret)})
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)


def test_staff_signed_in_with_their_allauth_authenticator_open_the_admin(
    client, verified_user, with_totp
):
    staff = verified_user("ops@example.com", is_staff=True, is_superuser=True)
    secret = with_totp(staff)

    sign_in_with_code(client, staff, secret)
    response = client.get("/admin/")

    assert response.status_code == 200
    assert not TOTPDevice.objects.exists()


def test_staff_signed_in_with_a_password_alone_are_sent_to_the_admin_login(client, verified_user):
    verified_user("ops@example.com", is_staff=True, is_superuser=True)

    sign_in(client, "ops@example.com")
    response = client.get("/admin/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/"


def test_a_customer_with_a_second_factor_is_not_let_into_the_admin(
    client, verified_user, with_totp
):
    customer = verified_user("ann@example.com")
    secret = with_totp(customer)

    sign_in_with_code(client, customer, secret)
    response = client.get("/admin/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/"


def test_signing_out_closes_the_admin_again(client, verified_user, with_totp):
    staff = verified_user("ops@example.com", is_staff=True, is_superuser=True)
    sign_in_with_code(client, staff, with_totp(staff))
    assert client.get("/admin/").status_code == 200

    client.post("/accounts/logout/")
    sign_in(client, staff.email, "wrong password")
    response = client.get("/admin/")

    assert response.status_code == 302


def test_the_admins_own_totp_login_still_works(staff_client):
    assert staff_client.get("/admin/").status_code == 200
