"""The audit list: every kind of event lands once, with the request's address and browser."""

from datetime import timedelta

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from django.utils import timezone

from accounts.models import ApiToken, AuditEvent
from accounts.selectors import audit_events_for_user
from accounts.services import api_token_create, api_token_set_status, audit_event_record
from tests.accounts.conftest import BROWSER, PASSWORD, sign_in, totp_code
from tests.factories import UserFactory
from tokenbyte.errors import ApplicationError

pytestmark = pytest.mark.django_db


def events(user) -> list[tuple[str, str | None, str]]:
    rows = AuditEvent.objects.filter(user=user).order_by("created_at", "id")
    return [(e.kind, e.ip, e.detail) for e in rows]


def test_creating_and_revoking_a_key_is_recorded_without_an_address():
    owner = UserFactory()

    token, _ = api_token_create(owner=owner, name="prod")
    api_token_set_status(token=token, status=ApiToken.Status.DISABLED)
    api_token_set_status(token=token, status=ApiToken.Status.REVOKED)
    api_token_set_status(token=token, status=ApiToken.Status.REVOKED)

    label = f"prod ({token.prefix}…)"
    assert events(owner) == [("key_created", None, label), ("key_revoked", None, label)]
    assert AuditEvent.objects.get(kind="key_created").user_agent == ""


def test_a_refused_key_records_nothing():
    owner = UserFactory()

    with pytest.raises(ApplicationError):
        api_token_create(owner=owner, name=" ")

    assert events(owner) == []


def test_password_change_and_sign_out_are_recorded(client, verified_user):
    user = verified_user()
    sign_in(client, user.email)

    changed = client.post(
        "/accounts/password/change/",
        {
            "oldpassword": PASSWORD,
            "password1": "another long phrase",
            "password2": "another long phrase",
        },
        HTTP_USER_AGENT=BROWSER,
        REMOTE_ADDR="203.0.113.7",
    )
    client.post("/accounts/logout/", REMOTE_ADDR="203.0.113.8")

    assert changed.status_code == 302
    assert events(user) == [
        ("signed_in", "203.0.113.7", "password"),
        ("password_changed", "203.0.113.7", "changed"),
        ("signed_out", "203.0.113.8", ""),
    ]


def test_enabling_and_disabling_the_authenticator_app_is_recorded(
    client, verified_user, django_capture_on_commit_callbacks
):
    user = verified_user()
    sign_in(client, user.email)
    # allauth asks for the password again before any authenticator change, even after login.
    client.post("/accounts/reauthenticate/", {"password": PASSWORD})
    client.get("/accounts/2fa/totp/activate/")
    secret = client.session["mfa.totp.secret"]

    with django_capture_on_commit_callbacks(execute=True):
        activated = client.post(
            "/accounts/2fa/totp/activate/", {"code": totp_code(secret)}, REMOTE_ADDR="203.0.113.7"
        )
    deactivated = client.post("/accounts/2fa/totp/deactivate/", REMOTE_ADDR="203.0.113.7")

    assert (activated.status_code, deactivated.status_code) == (302, 302)
    assert events(user) == [
        ("signed_in", "203.0.113.7", "password"),
        ("totp_enabled", "203.0.113.7", ""),
        ("recovery_codes_generated", "203.0.113.7", ""),
        ("totp_disabled", "203.0.113.7", ""),
    ]
    assert not Authenticator.objects.filter(user=user).exists()


def test_a_sign_in_with_the_authenticator_app_names_both_steps(client, verified_user):
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

    user = verified_user()
    secret = generate_totp_secret()
    TOTP.activate(user, secret)

    first = sign_in(client, user.email)
    wrong = client.post("/accounts/2fa/authenticate/", {"code": "000000"})
    second = client.post("/accounts/2fa/authenticate/", {"code": totp_code(secret)})

    assert first["Location"] == "/accounts/2fa/authenticate/"
    assert wrong.status_code == 200
    assert second.status_code == 302
    assert [(kind, detail) for kind, _, detail in events(user)] == [
        ("sign_in_failed", "wrong second-factor code"),
        ("signed_in", "password + authenticator app"),
    ]


def test_making_another_address_primary_is_recorded(client, verified_user):
    user = verified_user()
    EmailAddress.objects.create(user=user, email="ann@work.example", verified=True)
    sign_in(client, user.email)

    response = client.post(
        "/accounts/email/",
        {"email": "ann@work.example", "action_primary": ""},
        REMOTE_ADDR="203.0.113.7",
    )

    assert response.status_code == 302
    assert events(user)[-1] == (
        "email_changed",
        "203.0.113.7",
        "ann@example.com → ann@work.example",
    )


def test_the_audit_list_is_the_users_own_newest_first_and_capped():
    owner, other = UserFactory(), UserFactory()
    now = timezone.now()
    for minutes in range(52):
        event = audit_event_record(user=owner, kind="signed_in", detail=f"{minutes}")
        AuditEvent.objects.filter(pk=event.pk).update(created_at=now - timedelta(minutes=minutes))
    audit_event_record(user=other, kind="signed_in")

    listed = list(audit_events_for_user(user=owner))

    assert [e.detail for e in listed] == [str(m) for m in range(50)]


def test_the_service_refuses_an_unknown_kind_and_truncates_long_text(rf):
    user = UserFactory()
    request = rf.get("/", HTTP_USER_AGENT="x" * 400, REMOTE_ADDR="2001:db8::1")

    with pytest.raises(ApplicationError) as raised:
        audit_event_record(user=user, kind="made_up")
    event = audit_event_record(user=user, kind="signed_out", request=request, detail="y" * 300)

    assert raised.value.message == "unknown audit event kind: 'made_up'"
    assert (event.ip, event.user_agent, event.detail) == ("2001:db8::1", "x" * 255, "y" * 255)
    assert AuditEvent.objects.count() == 1


def test_passkeys_and_providers_are_recorded_from_allauths_signals(rf):
    # A real passkey needs a browser (tests/e2e); the signals are what allauth sends then.
    from allauth.mfa import signals as mfa_signals
    from allauth.socialaccount import signals as social_signals
    from allauth.socialaccount.models import SocialAccount, SocialLogin

    user = UserFactory()
    request = rf.get("/", REMOTE_ADDR="203.0.113.7")
    passkey = Authenticator.objects.create(
        user=user, type=Authenticator.Type.WEBAUTHN, data={"name": "Laptop"}
    )
    account = SocialAccount.objects.create(user=user, provider="github", uid="42")

    mfa_signals.authenticator_added.send(
        sender=Authenticator, request=request, user=user, authenticator=passkey
    )
    mfa_signals.authenticator_removed.send(
        sender=Authenticator, request=request, user=user, authenticator=passkey
    )
    social_signals.social_account_added.send(
        sender=SocialLogin, request=request, sociallogin=SocialLogin(user=user, account=account)
    )
    social_signals.social_account_removed.send(
        sender=SocialAccount, request=request, socialaccount=account
    )

    assert events(user) == [
        ("passkey_added", "203.0.113.7", "Laptop"),
        ("passkey_removed", "203.0.113.7", "Laptop"),
        ("social_linked", "203.0.113.7", "github"),
        ("social_unlinked", "203.0.113.7", "github"),
    ]
