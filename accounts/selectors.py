from django.db.models import Count, QuerySet
from django.http import HttpRequest

from accounts.models import ApiToken, AuditEvent, PersonalAccessToken, TokenGroup, User


def api_tokens_for_user(*, user: User) -> QuerySet[ApiToken]:
    """The user's API keys, newest first, with their group (one query)."""
    return (
        ApiToken.objects.filter(owner=user).select_related("group").order_by("-created_at", "-id")
    )


def token_groups_for_user(*, user: User) -> QuerySet[TokenGroup]:
    """The user's key groups by name, each with `key_count` (one query)."""
    return (
        TokenGroup.objects.filter(owner=user)
        .annotate(key_count=Count("tokens"))
        .order_by("name", "id")
    )


def audit_events_for_user(*, user: User, limit: int = 50) -> QuerySet[AuditEvent]:
    """The user's latest audit events, newest first (Profile shows 50)."""
    return AuditEvent.objects.filter(user=user).order_by("-created_at", "-id")[:limit]


def session_passed_mfa(*, request: HttpRequest) -> bool:
    """Whether this session's user proved a second factor through allauth.mfa: a TOTP or
    recovery code or a passkey after the first factor, a passwordless passkey sign-in (allauth
    requires user verification for it) or a reauthentication with one of them.

    allauth keeps the record of every authentication of the session server-side, in the
    session, and drops it with the session (sign-out, another user signing in).
    """
    from allauth.account.authentication import get_authentication_records

    user = request.user
    if not user.is_authenticated:
        return False
    records = get_authentication_records(request, user)
    return any(record.get("method") == "mfa" for record in records)


def access_tokens_for_user(*, user: User) -> QuerySet[PersonalAccessToken]:
    """The user's personal access tokens for /api/, newest first."""
    return PersonalAccessToken.objects.filter(user=user).order_by("-created_at", "-id")
