"""allauth adapters: who may sign up, the credit a new account starts with, what a failed sign-in
leaves behind, the passkey domain."""

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core import context
from allauth.mfa.adapter import DefaultMFAAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.conf import settings
from django.http import HttpRequest
from django.urls import reverse

from accounts.models import AuditEvent, Invitation, User
from accounts.services import (
    audit_event_record,
    invitation_for_token,
    invitation_state,
    invitation_token,
)
from billing.services import signup_credit_grant

# The token of the invitation a visitor opened (accounts/org_views.py keeps it in the session).
INVITATION_SESSION_KEY = "tb_invitation"


def session_invitation(request: HttpRequest) -> Invitation | None:
    """The invitation the visitor opened, while it is still pending."""
    session = getattr(request, "session", None)
    token = session.get(INVITATION_SESSION_KEY) if session is not None else None
    invitation = invitation_for_token(token=token) if isinstance(token, str) else None
    if invitation is None or invitation_state(invitation) != "pending":
        return None
    return invitation


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        # allauth's social adapter asks this too, so SIGNUP_ENABLED=0 closes every sign-up path
        # but one: a visitor holding a pending invitation signs up on the way to accepting it.
        return settings.SIGNUP_ENABLED or session_invitation(request) is not None

    def get_login_redirect_url(self, request: HttpRequest) -> str:
        # Back to the invitation after signing in without a `next` (the sign-in that follows
        # confirming a new account's email address).
        invitation = session_invitation(request)
        if invitation is not None:
            return reverse("invitation", kwargs={"token": invitation_token(invitation)})
        return super().get_login_redirect_url(request)

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
