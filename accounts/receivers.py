"""allauth's signals, turned into the user's audit list (Profile).

House rule 3 keeps business logic out of Django signals; these are the exception because allauth
offers no other hook after a sign-in, a password or email change, an authenticator or a social
account change (its adapters only cover the steps before). Each receiver only calls the one
service, audit_event_record, and is connected in AccountsConfig.ready().
"""

from typing import Any

from allauth.account import signals as account_signals
from allauth.account.authentication import get_authentication_records
from allauth.mfa import signals as mfa_signals
from allauth.mfa.models import Authenticator
from allauth.socialaccount import signals as social_signals
from django.http import HttpRequest

from accounts.models import AuditEvent
from accounts.services import audit_event_record

Kind = AuditEvent.Kind

# How a sign-in's steps read in the audit list.
METHOD_NAMES = {"password": "password", "code": "email code", "password_reset": "password reset"}
AUTHENTICATOR_NAMES = {
    Authenticator.Type.TOTP: "authenticator app",
    Authenticator.Type.RECOVERY_CODES: "recovery code",
    Authenticator.Type.WEBAUTHN: "passkey",
}
ADDED = {
    Authenticator.Type.TOTP: Kind.TOTP_ENABLED,
    Authenticator.Type.RECOVERY_CODES: Kind.RECOVERY_CODES_GENERATED,
    Authenticator.Type.WEBAUTHN: Kind.PASSKEY_ADDED,
}
# Recovery codes go when the last other authenticator goes; that removal is the event shown.
REMOVED = {
    Authenticator.Type.TOTP: Kind.TOTP_DISABLED,
    Authenticator.Type.WEBAUTHN: Kind.PASSKEY_REMOVED,
}


def sign_in_methods(request: HttpRequest, user) -> str:
    """The steps of this session's sign-in, e.g. "password + authenticator app"."""
    names: list[str] = []
    for record in get_authentication_records(request, user):
        if record.get("reauthenticated"):
            continue
        method = record.get("method", "")
        if method == "mfa":
            name = AUTHENTICATOR_NAMES.get(record.get("type"), "second factor")
        elif method == "socialaccount":
            name = str(record.get("provider", "social account"))
        else:
            name = METHOD_NAMES.get(method, method)
        if name and name not in names:
            names.append(name)
    return " + ".join(names)


def _passkey_name(authenticator: Authenticator) -> str:
    return str(authenticator.data.get("name", "")) if authenticator.data else ""


def on_user_logged_in(*, request: HttpRequest, user, **_: Any) -> None:
    detail = sign_in_methods(request, user)
    audit_event_record(user=user, kind=Kind.SIGNED_IN, request=request, detail=detail)


def on_user_logged_out(*, request: HttpRequest, user, **_: Any) -> None:
    if user is not None and user.is_authenticated:
        audit_event_record(user=user, kind=Kind.SIGNED_OUT, request=request)


def on_password_changed(*, request: HttpRequest, user, **_: Any) -> None:
    audit_event_record(user=user, kind=Kind.PASSWORD_CHANGED, request=request, detail="changed")


def on_password_set(*, request: HttpRequest, user, **_: Any) -> None:
    audit_event_record(user=user, kind=Kind.PASSWORD_CHANGED, request=request, detail="set")


def on_password_reset(*, request: HttpRequest, user, **_: Any) -> None:
    audit_event_record(user=user, kind=Kind.PASSWORD_CHANGED, request=request, detail="reset")


def on_email_changed(
    *, request: HttpRequest, user, from_email_address, to_email_address, **_: Any
) -> None:
    old = from_email_address.email if from_email_address is not None else ""
    detail = f"{old} → {to_email_address.email}" if old else to_email_address.email
    audit_event_record(user=user, kind=Kind.EMAIL_CHANGED, request=request, detail=detail)


def on_authenticator_added(
    *, request: HttpRequest, user, authenticator: Authenticator, **_: Any
) -> None:
    kind = ADDED.get(authenticator.type)
    if kind is not None:
        detail = _passkey_name(authenticator) if kind == Kind.PASSKEY_ADDED else ""
        audit_event_record(user=user, kind=kind, request=request, detail=detail)


def on_authenticator_removed(
    *, request: HttpRequest, user, authenticator: Authenticator, **_: Any
) -> None:
    kind = REMOVED.get(authenticator.type)
    if kind is not None:
        detail = _passkey_name(authenticator) if kind == Kind.PASSKEY_REMOVED else ""
        audit_event_record(user=user, kind=kind, request=request, detail=detail)


def on_authenticator_reset(
    *, request: HttpRequest, user, authenticator: Authenticator, **_: Any
) -> None:
    if authenticator.type == Authenticator.Type.RECOVERY_CODES:
        audit_event_record(user=user, kind=Kind.RECOVERY_CODES_GENERATED, request=request)


def on_mfa_authentication_failed(*, request: HttpRequest, user, **_: Any) -> None:
    audit_event_record(
        user=user, kind=Kind.SIGN_IN_FAILED, request=request, detail="wrong second-factor code"
    )


def on_social_account_added(*, request: HttpRequest, sociallogin, **_: Any) -> None:
    account = sociallogin.account
    audit_event_record(
        user=sociallogin.user, kind=Kind.SOCIAL_LINKED, request=request, detail=account.provider
    )


def on_social_account_removed(*, request: HttpRequest, socialaccount, **_: Any) -> None:
    audit_event_record(
        user_id=socialaccount.user_id,
        kind=Kind.SOCIAL_UNLINKED,
        request=request,
        detail=socialaccount.provider,
    )


def connect() -> None:
    uid = "accounts.audit"
    pairs = [
        (account_signals.user_logged_in, on_user_logged_in),
        (account_signals.user_logged_out, on_user_logged_out),
        (account_signals.password_changed, on_password_changed),
        (account_signals.password_set, on_password_set),
        (account_signals.password_reset, on_password_reset),
        (account_signals.email_changed, on_email_changed),
        (mfa_signals.authenticator_added, on_authenticator_added),
        (mfa_signals.authenticator_removed, on_authenticator_removed),
        (mfa_signals.authenticator_reset, on_authenticator_reset),
        (mfa_signals.authentication_failed, on_mfa_authentication_failed),
        (social_signals.social_account_added, on_social_account_added),
        (social_signals.social_account_removed, on_social_account_removed),
    ]
    for signal, receiver in pairs:
        signal.connect(receiver, dispatch_uid=f"{uid}.{receiver.__name__}")
