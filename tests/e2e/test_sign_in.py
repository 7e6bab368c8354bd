"""Sign-in in a real browser: sign-up with verification, password, OIDC, passkeys, TOTP."""

import re
import time

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.socialaccount.models import SocialAccount
from playwright.sync_api import expect

from tests.e2e.helpers import PASSWORD, add_virtual_authenticator, shoot, totp_code

pytestmark = pytest.mark.timeout(60)


def sign_in_with_password(page, email: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()


def sign_out(page, site: str) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{site}/accounts/login/")


def reauthenticate(page, password: str = PASSWORD) -> None:
    # Adding a passkey or an authenticator app asks for the password again, even right after
    # signing in.
    expect(page).to_have_url(re.compile(r"/accounts/reauthenticate/"))
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Confirm").click()


def add_passwordless_passkey(page, site: str, name: str, *, password: str) -> None:
    page.goto("/accounts/2fa/webauthn/add/")
    reauthenticate(page, password)
    expect(page).to_have_url(f"{site}/accounts/2fa/webauthn/add/")
    page.get_by_label("Name").fill(name)
    # Unticked, the passkey would only be a second factor after the password.
    page.get_by_label("Passwordless").check()
    shoot(page, "passkey-add")
    # The page creates the credential in JavaScript, then submits itself.
    with page.expect_navigation():
        page.get_by_role("button", name="Add").click()
    # The first authenticator comes with recovery codes, shown once.
    expect(page).to_have_url(f"{site}/accounts/2fa/recovery-codes/")


def sign_in_with_passkey(page, site: str) -> None:
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in with a passkey").click()
    expect(page).to_have_url(f"{site}/dashboard/")


def audit_list(page) -> list[tuple[str, str, str]]:
    """Profile's account activity, newest first: (event, detail, IP address) per row."""
    page.goto("/profile/")
    table = page.get_by_role("region", name="Account activity").get_by_role("table")
    rows = table.get_by_role("row").all()[1:]
    cells = [row.get_by_role("cell").all_inner_texts() for row in rows]
    for row in cells:
        assert "HeadlessChrome/" in row[4], row
    return [(event, detail, ip) for _, event, detail, ip, _ in cells]


def test_a_new_user_signs_up_verifies_the_email_and_lands_on_the_console(page, site, mailoutbox):
    page.goto("/accounts/signup/")
    shoot(page, "signup")
    page.get_by_label("Email").fill("newcomer@example.com")
    page.get_by_label(re.compile(r"^Password:?$")).fill("a long new passphrase")
    page.get_by_label("Password (again)").fill("a long new passphrase")
    page.get_by_role("button", name="Sign Up").click()

    expect(page).to_have_url(f"{site}/accounts/confirm-email/")
    shoot(page, "verification-sent")
    assert [message.to for message in mailoutbox] == [["newcomer@example.com"]]
    links = re.findall(rf"{re.escape(site)}/accounts/confirm-email/[^\s/]+/", mailoutbox[0].body)
    assert len(links) == 1
    assert not EmailAddress.objects.get(email="newcomer@example.com").verified

    page.goto(links[0])
    shoot(page, "confirm-email")
    page.get_by_role("button", name="Confirm").click()

    # Confirming does not sign in (allauth's ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION is off): the
    # link alone must not open the account.
    expect(page).to_have_url(f"{site}/accounts/login/")
    expect(page.get_by_role("status")).to_have_text("You have confirmed newcomer@example.com.")
    assert EmailAddress.objects.get(email="newcomer@example.com").verified
    page.get_by_label("Email").fill("newcomer@example.com")
    page.get_by_label("Password").fill("a long new passphrase")
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{site}/dashboard/")
    expect(page.get_by_role("navigation", name="Console")).to_contain_text("newcomer@example.com")


def test_a_new_user_adds_a_passkey_and_signs_back_in_with_it_alone(page, site, mailoutbox):
    # The definition of done, in one go: sign up, verify, add a passkey, sign out, and
    # sign back in with nothing but the passkey.
    add_virtual_authenticator(page)
    page.goto("/accounts/signup/")
    page.get_by_label("Email").fill("journey@example.com")
    page.get_by_label(re.compile(r"^Password:?$")).fill("a long new passphrase")
    page.get_by_label("Password (again)").fill("a long new passphrase")
    page.get_by_role("button", name="Sign Up").click()
    expect(page).to_have_url(f"{site}/accounts/confirm-email/")
    (link,) = re.findall(rf"{re.escape(site)}/accounts/confirm-email/[^\s/]+/", mailoutbox[0].body)
    page.goto(link)
    page.get_by_role("button", name="Confirm").click()
    page.get_by_label("Email").fill("journey@example.com")
    page.get_by_label("Password").fill("a long new passphrase")
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{site}/dashboard/")

    add_passwordless_passkey(page, site, "Phone", password="a long new passphrase")
    page.goto("/dashboard/")
    sign_out(page, site)
    sign_in_with_passkey(page, site)

    expect(page.get_by_role("navigation", name="Console")).to_contain_text("journey@example.com")
    assert audit_list(page) == [
        ("Signed in", "passkey", "127.0.0.1"),
        ("Signed out", "", "127.0.0.1"),
        ("Recovery codes generated", "", "127.0.0.1"),
        ("Passkey added", "Phone", "127.0.0.1"),
        ("Signed in", "password", "127.0.0.1"),
    ]


def test_it_signs_in_with_a_password_and_out_again(page, site, verified_user):
    page.goto("/dashboard/")
    expect(page).to_have_url(f"{site}/accounts/login/?next=/dashboard/")
    shoot(page, "login")

    sign_in_with_password(page, verified_user.email)
    expect(page).to_have_url(f"{site}/dashboard/")
    expect(page.get_by_role("navigation", name="Console")).to_contain_text(verified_user.email)

    sign_out(page, site)
    page.goto("/dashboard/")
    expect(page).to_have_url(f"{site}/accounts/login/?next=/dashboard/")


def test_a_wrong_password_is_refused_and_shows_in_the_audit_list(page, site, verified_user):
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(verified_user.email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign In", exact=True).click()

    expect(
        page.get_by_text("The email address and/or password you specified are not correct.")
    ).to_be_visible()
    expect(page).to_have_url(f"{site}/accounts/login/")
    page.goto("/dashboard/")
    expect(page).to_have_url(f"{site}/accounts/login/?next=/dashboard/")

    sign_in_with_password(page, verified_user.email)
    expect(page).to_have_url(f"{site}/dashboard/")
    assert audit_list(page) == [
        ("Signed in", "password", "127.0.0.1"),
        ("Sign-in failed", "", "127.0.0.1"),
    ]


def test_it_signs_in_with_openid_connect(page, site, settings, oidc_provider):
    settings.SOCIALACCOUNT_PROVIDERS = {
        "openid_connect": {
            "APPS": [
                {
                    "provider_id": "oidc",
                    "name": "Mock OIDC",
                    "client_id": "tokenbyte-e2e",
                    "secret": "e2e-secret",
                    "settings": {"server_url": oidc_provider["url"], "oauth_pkce_enabled": True},
                }
            ]
        }
    }
    page.goto("/accounts/login/")
    page.get_by_role("link", name="Mock OIDC").click()
    # allauth asks before leaving for the provider (a GET must not start a login).
    page.get_by_role("button", name="Continue").click()

    expect(page).to_have_url(re.compile(rf"^{re.escape(oidc_provider['url'])}/oauth2/authorize\?"))
    assert "code_challenge=" in page.url
    page.get_by_role("button", name=oidc_provider["sub"]).click()

    expect(page).to_have_url(f"{site}/dashboard/")
    expect(page.get_by_role("navigation", name="Console")).to_contain_text(oidc_provider["email"])
    account = SocialAccount.objects.get()
    assert (account.provider, account.uid, account.user.email) == (
        "oidc",
        oidc_provider["sub"],
        oidc_provider["email"],
    )
    assert audit_list(page) == [("Signed in", "oidc", "127.0.0.1")]


def test_a_passwordless_passkey_signs_in_alone_and_shows_in_the_audit_list(
    page, site, verified_user
):
    cdp, authenticator_id = add_virtual_authenticator(page)
    sign_in_with_password(page, verified_user.email)
    expect(page).to_have_url(f"{site}/dashboard/")

    add_passwordless_passkey(page, site, "Laptop", password=PASSWORD)

    credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})
    assert [c["isResidentCredential"] for c in credentials["credentials"]] == [True]
    passkey = Authenticator.objects.get(user=verified_user, type=Authenticator.Type.WEBAUTHN)
    assert (passkey.wrap().name, passkey.wrap().is_passwordless) == ("Laptop", True)

    page.goto("/dashboard/")
    sign_out(page, site)
    sign_in_with_passkey(page, site)
    expect(page.get_by_role("navigation", name="Console")).to_contain_text(verified_user.email)
    assert audit_list(page) == [
        ("Signed in", "passkey", "127.0.0.1"),
        ("Signed out", "", "127.0.0.1"),
        ("Recovery codes generated", "", "127.0.0.1"),
        ("Passkey added", "Laptop", "127.0.0.1"),
        ("Signed in", "password", "127.0.0.1"),
    ]
    shoot(page, "profile-with-passkey")


@pytest.mark.timeout(90)
def test_an_authenticator_apps_code_completes_the_sign_in_and_shows_in_the_audit_list(
    page, site, verified_user
):
    sign_in_with_password(page, verified_user.email)
    expect(page).to_have_url(f"{site}/dashboard/")
    page.goto("/accounts/2fa/totp/activate/")
    reauthenticate(page, PASSWORD)
    expect(page).to_have_url(f"{site}/accounts/2fa/totp/activate/")
    shoot(page, "totp-activate")
    secret = page.get_by_label("Authenticator secret").input_value()
    # The code must still be current when the server checks it.
    if time.time() % 30 > 27:
        time.sleep(30 - time.time() % 30 + 0.2)
    enrolled_at = time.time()
    page.get_by_label("Authenticator code").fill(totp_code(secret, at=enrolled_at))
    page.get_by_role("button", name="Activate").click()
    expect(page).to_have_url(f"{site}/accounts/2fa/recovery-codes/")
    assert (
        Authenticator.objects.filter(user=verified_user, type=Authenticator.Type.TOTP).count() == 1
    )

    page.goto("/dashboard/")
    sign_out(page, site)
    sign_in_with_password(page, verified_user.email)
    expect(page).to_have_url(f"{site}/accounts/2fa/authenticate/")
    shoot(page, "totp-authenticate")
    wrong = f"{(int(totp_code(secret)) + 1) % 1_000_000:06d}"
    page.get_by_label("Code").fill(wrong)
    page.get_by_role("button", name="Sign In").click()
    expect(page.get_by_text("Incorrect code.")).to_be_visible()

    # A code is accepted once, and the one enrolment used is still current: wait for the next.
    time.sleep(max(0.0, (enrolled_at // 30 + 1) * 30 - time.time() + 0.2))
    page.get_by_label("Code").fill(totp_code(secret))
    page.get_by_role("button", name="Sign In").click()
    expect(page).to_have_url(f"{site}/dashboard/")
    expect(page.get_by_role("navigation", name="Console")).to_contain_text(verified_user.email)
    assert audit_list(page) == [
        ("Signed in", "password + authenticator app", "127.0.0.1"),
        ("Sign-in failed", "wrong second-factor code", "127.0.0.1"),
        ("Signed out", "", "127.0.0.1"),
        ("Recovery codes generated", "", "127.0.0.1"),
        ("Authenticator app enabled", "", "127.0.0.1"),
        ("Signed in", "password", "127.0.0.1"),
    ]
