"""allauth adapters: who may sign up, the credit a new account starts with, what a failed sign-in
leaves behind, the passkey domain."""

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core import context
from allauth.mfa.adapter import DefaultMFAAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.conf import settings
from django.http import HttpRequest

from accounts.models import AuditEvent, User
from accounts.services import audit_event_record
from billing.services import signup_credit_grant


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        # allauth's social adapter asks this too, so SIGNUP_ENABLED=0 closes every sign-up path.
        return settings.SIGNUP_ENABLED

    def save_user(self, request: HttpRequest, user: User, form, commit: bool = True) -> User:
        user = super().save_user(request, user, form, commit=commit)
        if commit:
            signup_credit_grant(user=user)
        return user

    def authentication_failed(self, request: HttpRequest, **credentials: Any) -> None:
        # Shown to the owner in Profile; an unknown address leaves nothing (there is no owner).
        email = (credentials.get("email") or "").strip()
        user = User.objects.filter(email__iexact=email).first() if email else None
        if user is not None:
            audit_event_record(user=user, kind=AuditEvent.Kind.SIGN_IN_FAILED, request=request)


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def save_user(self, request: HttpRequest, sociallogin, form=None) -> User:
        # Also reached by a provider's automatic sign-up, which skips AccountAdapter.save_user.
        user = super().save_user(request, sociallogin, form=form)
        signup_credit_grant(user=user)
        return user


class MFAAdapter(DefaultMFAAdapter):
    def get_public_key_credential_rp_entity(self) -> dict[str, str]:
        host = context.request.get_host().partition(":")[0]
        return {"id": settings.WEBAUTHN_RP_ID or host, "name": settings.WEBAUTHN_RP_NAME}
