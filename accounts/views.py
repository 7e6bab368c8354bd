from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.socialaccount.models import SocialAccount
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.forms import ProfileForm
from accounts.models import ApiToken, User
from accounts.selectors import api_tokens_for_user, audit_events_for_user, token_groups_for_user
from accounts.services import api_token_set_status, user_profile_update
from tokenbyte.errors import ApplicationError


def _get_token_for_user(user: User, token_id: int) -> ApiToken:
    """The user's key with this id; another user's key is a 404, like a missing one."""
    try:
        return api_tokens_for_user(user=user).get(pk=token_id)
    except ApiToken.DoesNotExist:
        raise Http404("No such API key.") from None


@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    tokens = list(api_tokens_for_user(user=request.user))
    return render(request, "accounts/token_list.html", {"tokens": tokens})


@login_required
@require_POST
def token_set_status(request: HttpRequest, token_id: int) -> HttpResponse:
    """Enable or disable a key (revoking is final and has its own flow)."""
    token = _get_token_for_user(request.user, token_id)
    status = request.POST.get("status", "")
    if status not in (ApiToken.Status.ENABLED, ApiToken.Status.DISABLED):
        return HttpResponseBadRequest("status must be enabled or disabled")
    changed = api_token_set_status(token=token, status=status)
    if request.headers.get("HX-Request"):
        # htmx swaps the key's row in place; the page keeps its scroll and the other rows.
        return render(request, "accounts/_token_row.html", {"row": token})
    if changed:
        messages.success(request, f"Key {token.name} is now {token.get_status_display().lower()}.")
    return redirect("tokens")


@login_required
def token_group_list(request: HttpRequest) -> HttpResponse:
    groups = list(token_groups_for_user(user=request.user))
    return render(request, "accounts/token_group_list.html", {"groups": groups})


# --- profile -------------------------------------------------------------------------------------


def _zone_of(user: User) -> ZoneInfo:
    try:
        return ZoneInfo(user.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    """Who the user is and how they sign in (managed by allauth's pages), their settings, and
    the latest events of their account."""
    user = request.user
    if request.method == "POST":
        form = ProfileForm.for_user(user, data=request.POST)
        if form.is_valid():
            try:
                changed = user_profile_update(user=user, **form.cleaned_data)
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                if changed:
                    messages.success(request, "Your profile is saved.")
                return redirect("profile")
    else:
        form = ProfileForm.for_user(user)
    context = {
        "form": form,
        "zone": _zone_of(user),
        "email_addresses": EmailAddress.objects.filter(user=user).order_by("-primary", "email"),
        "social_accounts": SocialAccount.objects.filter(user=user).order_by("provider"),
        "passkeys": Authenticator.objects.filter(
            user=user, type=Authenticator.Type.WEBAUTHN
        ).order_by("created_at"),
        "totp_enabled": Authenticator.objects.filter(
            user=user, type=Authenticator.Type.TOTP
        ).exists(),
        "recovery_codes_enabled": Authenticator.objects.filter(
            user=user, type=Authenticator.Type.RECOVERY_CODES
        ).exists(),
        "audit_events": audit_events_for_user(user=user, limit=50),
    }
    return render(request, "accounts/profile.html", context)
