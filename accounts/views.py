import csv
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.socialaccount.models import SocialAccount
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from accounts.forms import AccessTokenForm, ApiTokenForm, ProfileForm, TokenGroupForm
from accounts.models import ApiToken, PersonalAccessToken, TokenGroup, User
from accounts.scope import Perm, Scope, member_keys_allowed, request_scope
from accounts.selectors import (
    MonthUsage,
    access_tokens_for_user,
    api_token_export_rows,
    api_token_month_usage_for_scope,
    api_tokens_for_scope,
    api_tokens_search,
    audit_events_for_user,
    token_group_month_usage_for_user,
    token_groups_for_user,
)
from accounts.services import (
    BATCH_MAX_IDS,
    access_token_create,
    access_token_revoke,
    api_token_create,
    api_token_delete,
    api_token_set_status,
    api_token_update,
    api_tokens_revoke,
    api_tokens_set_group,
    token_group_create,
    token_group_delete,
    token_group_update,
    user_profile_update,
)
from catalog.selectors import models_callable
from tokenbyte.errors import ApplicationError


def _get_token_in_scope(scope: Scope, token_id: int, *, manage: bool = False) -> ApiToken:
    """The key with this id among the scope's keys, and the user's own: editing and deleting are
    the owner's. With manage=True (disable, enable, revoke) an organization's owners and admins
    reach every member's key there. Anything else (another user's key, a key of another scope) is
    a 404, like a missing one."""
    tokens = api_tokens_for_scope(scope=scope)
    if not (manage and scope.can(Perm.MANAGE_KEYS)):
        tokens = tokens.filter(owner=scope.user)
    try:
        return tokens.get(pk=token_id)
    except ApiToken.DoesNotExist:
        raise Http404("No such API key.") from None


def _get_group_for_user(user: User, group_id: int) -> TokenGroup:
    """The user's key group with this id; another user's group is a 404, like a missing one."""
    try:
        return token_groups_for_user(user=user).get(pk=group_id)
    except TokenGroup.DoesNotExist:
        raise Http404("No such key group.") from None


def _get_access_token_for_user(user: User, token_id: int) -> PersonalAccessToken:
    """The user's personal access token with this id; another user's is a 404."""
    try:
        return access_tokens_for_user(user=user).get(pk=token_id)
    except PersonalAccessToken.DoesNotExist:
        raise Http404("No such access token.") from None


def _selected_ids(request: HttpRequest) -> list[int]:
    ids = []
    for value in request.POST.getlist("ids") or request.GET.getlist("ids"):
        try:
            ids.append(int(value))
        except ValueError:
            continue
    return ids[:BATCH_MAX_IDS]


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _keys_refusal(scope: Scope) -> str:
    """Why the scope's user may not create a key here, in words; empty when they may."""
    if scope.personal:
        return ""
    org, membership = scope.organization, scope.membership
    if member_keys_allowed(
        role=membership.role,
        member_keys_enabled=org.member_keys_enabled,
        can_create_keys=membership.can_create_keys,
    ):
        return ""
    if not org.member_keys_enabled:
        return f"{org} does not let members create keys: ask an owner or admin."
    return f"An owner or admin of {org} stopped your keys: ask them to allow them again."


def _scope_context(scope: Scope) -> dict:
    """What every tokens page says about the scope: whose keys, and the Member column."""
    return {
        "scope": scope,
        "organization": scope.organization,
        # An organization's owners and admins see every member's keys, with whose each is.
        "show_member": not scope.personal and scope.sees_all,
    }


# --- keys ----------------------------------------------------------------------------------------


@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    """The scope's keys with this month's usage per key; filters; a selection for batches."""
    scope = request_scope(request)
    status = request.GET.get("status", "")
    if status not in ApiToken.Status.values:
        status = ""
    # Groups are personal: an organization's keys have none.
    group_id = _int_or_none(request.GET.get("group")) if scope.personal else None
    q = request.GET.get("q", "").strip()
    tokens = list(api_tokens_search(scope=scope, status=status, group_id=group_id, q=q))
    usage = api_token_month_usage_for_scope(scope=scope)
    for token in tokens:
        token.month = usage.get(token.pk, MonthUsage())
    context = {
        **_scope_context(scope),
        "tokens": tokens,
        "groups": list(token_groups_for_user(user=request.user)) if scope.personal else [],
        "statuses": ApiToken.Status.choices,
        "filters": {"status": status, "group": group_id, "q": q},
        "filtered": bool(status or group_id is not None or q),
        "keys_refusal": _keys_refusal(scope),
    }
    return render(request, "accounts/token_list.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def token_create(request: HttpRequest) -> HttpResponse:
    """New key: the user's own, or in an organization's scope one spending from its wallet.
    The key itself is rendered once, in this POST's answer, and kept nowhere."""
    scope = request_scope(request)
    refusal = _keys_refusal(scope)
    if refusal:
        messages.error(request, refusal)
        return redirect("tokens")
    form = ApiTokenForm(request.POST or None, user=request.user, with_group=scope.personal)
    if request.method == "POST" and form.is_valid():
        try:
            token, key = api_token_create(
                owner=request.user, organization=scope.organization, **form.service_kwargs()
            )
        except ApplicationError as exc:
            form.add_service_error(exc)
        else:
            sample = token.allowed_models[0] if token.allowed_models else None
            if sample is None:
                first = models_callable().values_list("model_id", flat=True).first()
                sample = first or "gpt-4o-mini"
            response = render(
                request,
                "accounts/token_created.html",
                {**_scope_context(scope), "token": token, "key": key, "sample_model": sample},
            )
            # The page holds a secret: no cache may keep it, not even the back button's.
            response["Cache-Control"] = "no-store"
            return response
    context = {**_scope_context(scope), "form": form, "token": None}
    return render(request, "accounts/token_form.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def token_edit(request: HttpRequest, token_id: int) -> HttpResponse:
    scope = request_scope(request)
    token = _get_token_in_scope(scope, token_id)
    if token.status == ApiToken.Status.REVOKED:
        messages.error(request, f"Key {token.name} is revoked; a revoked key cannot be edited.")
        return redirect("tokens")
    form = ApiTokenForm(
        request.POST or None, user=request.user, token=token, with_group=scope.personal
    )
    if request.method == "POST" and form.is_valid():
        try:
            changed = api_token_update(token=token, **form.service_kwargs())
        except ApplicationError as exc:
            form.add_service_error(exc)
        else:
            if changed:
                messages.success(request, f"Key {token.name} is saved.")
            return redirect("tokens")
    context = {**_scope_context(scope), "form": form, "token": token}
    return render(request, "accounts/token_form.html", context)


@login_required
@require_POST
def token_set_status(request: HttpRequest, token_id: int) -> HttpResponse:
    """Enable or disable a key (revoking is final and has its own flow)."""
    scope = request_scope(request)
    token = _get_token_in_scope(scope, token_id, manage=True)
    status = request.POST.get("status", "")
    if status not in (ApiToken.Status.ENABLED, ApiToken.Status.DISABLED):
        return HttpResponseBadRequest("status must be enabled or disabled")
    changed = api_token_set_status(token=token, status=status)
    if request.headers.get("HX-Request"):
        # htmx swaps the key's row in place; the page keeps its scroll and the other rows.
        token.month = api_token_month_usage_for_scope(scope=scope).get(token.pk, MonthUsage())
        context = {**_scope_context(scope), "row": token}
        return render(request, "accounts/_token_row.html", context)
    if changed:
        messages.success(request, f"Key {token.name} is now {token.get_status_display().lower()}.")
    return redirect("tokens")


@login_required
@require_http_methods(["GET", "POST"])
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    """Revoke a key for good, after a confirmation page."""
    scope = request_scope(request)
    token = _get_token_in_scope(scope, token_id, manage=True)
    if request.method == "POST":
        if api_token_set_status(token=token, status=ApiToken.Status.REVOKED):
            messages.success(request, f"Key {token.name} is revoked.")
        return redirect("tokens")
    context = {**_scope_context(scope), "tokens": [token], "action": "revoke"}
    return render(request, "accounts/token_confirm.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def token_delete(request: HttpRequest, token_id: int) -> HttpResponse:
    """Delete a key, after a confirmation page; its logs stay, under the key's name."""
    scope = request_scope(request)
    token = _get_token_in_scope(scope, token_id)
    if request.method == "POST":
        api_token_delete(token=token)
        messages.success(request, f"Key {token.name} is deleted.")
        return redirect("tokens")
    context = {**_scope_context(scope), "tokens": [token], "action": "delete"}
    return render(request, "accounts/token_confirm.html", context)


@login_required
@require_POST
def token_batch(request: HttpRequest) -> HttpResponse:
    """The selection's actions: revoke (confirmed on a second page) or export as CSV."""
    scope = request_scope(request)
    ids = _selected_ids(request)
    action = request.POST.get("action", "")
    if action == "export":
        return _export_response(scope, ids)
    if action != "revoke":
        return HttpResponseBadRequest("action must be revoke or export")
    if not ids:
        messages.error(request, "Select at least one key first.")
        return redirect("tokens")
    if request.POST.get("confirm") != "yes":
        tokens = list(api_tokens_for_scope(scope=scope).filter(pk__in=ids))
        if not tokens:
            raise Http404("No such API key.")
        context = {**_scope_context(scope), "tokens": tokens, "action": "revoke", "batch": True}
        return render(request, "accounts/token_confirm.html", context)
    result = api_tokens_revoke(owner=request.user, ids=ids, scope=scope)
    count = len(result.changed)
    messages.success(request, f"{count} key{'' if count == 1 else 's'} revoked.")
    return redirect("tokens")


class _Echo:
    """A file-like object csv.writer writes to that hands each line back."""

    def write(self, value: str) -> str:
        return value


def _export_response(scope: Scope, ids: list[int] | None) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    rows = api_token_export_rows(scope=scope, ids=ids or None)
    response = StreamingHttpResponse(
        (writer.writerow(row) for row in rows), content_type="text/csv; charset=utf-8"
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    whose = "keys" if scope.personal else f"{scope.organization.slug}-keys"
    response["Content-Disposition"] = f'attachment; filename="tokenbyte-{whose}-{stamp}.csv"'
    return response


@login_required
def token_export(request: HttpRequest) -> StreamingHttpResponse:
    """Every key's metadata of the scope (or the `ids` given) as CSV: never a key, never its
    digest."""
    return _export_response(request_scope(request), _selected_ids(request))


# --- groups --------------------------------------------------------------------------------------
# Key groups are personal: an organization's keys answer to its wallet and member allowances
# instead. In an organization's scope the group pages send the user back to the keys.


def _groups_are_personal(request: HttpRequest) -> HttpResponse | None:
    scope = request_scope(request)
    if scope.personal:
        return None
    messages.info(
        request,
        f"Key groups hold personal keys only; {scope.organization}'s keys have none. "
        "Switch to Personal to manage your groups.",
    )
    return redirect("tokens")


@login_required
def token_group_list(request: HttpRequest) -> HttpResponse:
    if away := _groups_are_personal(request):
        return away
    user = request.user
    groups = list(token_groups_for_user(user=user))
    usage = token_group_month_usage_for_user(user=user)
    for group in groups:
        group.month = usage.get(group.pk, MonthUsage())
    tokens = list(
        api_tokens_for_scope(scope=request_scope(request)).exclude(status=ApiToken.Status.REVOKED)
    )
    return render(
        request,
        "accounts/token_group_list.html",
        {"groups": groups, "tokens": tokens},
    )


@login_required
@require_http_methods(["GET", "POST"])
def group_create(request: HttpRequest) -> HttpResponse:
    if away := _groups_are_personal(request):
        return away
    form = TokenGroupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            group = token_group_create(owner=request.user, **form.service_kwargs())
        except ApplicationError as exc:
            form.add_service_error(exc)
        else:
            messages.success(request, f"Group {group.name} is created.")
            return redirect("token_groups")
    return render(request, "accounts/token_group_form.html", {"form": form, "group": None})


@login_required
@require_http_methods(["GET", "POST"])
def group_edit(request: HttpRequest, group_id: int) -> HttpResponse:
    if away := _groups_are_personal(request):
        return away
    group = _get_group_for_user(request.user, group_id)
    form = TokenGroupForm(request.POST or None, group=group)
    if request.method == "POST" and form.is_valid():
        try:
            changed = token_group_update(group=group, **form.service_kwargs())
        except ApplicationError as exc:
            form.add_service_error(exc)
        else:
            if changed:
                messages.success(request, f"Group {group.name} is saved.")
            return redirect("token_groups")
    return render(request, "accounts/token_group_form.html", {"form": form, "group": group})


@login_required
@require_http_methods(["GET", "POST"])
def group_delete(request: HttpRequest, group_id: int) -> HttpResponse:
    if away := _groups_are_personal(request):
        return away
    group = _get_group_for_user(request.user, group_id)
    if request.method == "POST":
        moved = token_group_delete(group=group)
        messages.success(
            request,
            f"Group {group.name} is deleted; its {moved} key{'' if moved == 1 else 's'} "
            "now belong to no group.",
        )
        return redirect("token_groups")
    return render(request, "accounts/token_group_delete.html", {"group": group})


@login_required
@require_POST
def group_move(request: HttpRequest) -> HttpResponse:
    """Move the selected personal keys into a group, or out of any (group empty)."""
    if away := _groups_are_personal(request):
        return away
    group_id = _int_or_none(request.POST.get("group"))
    group = _get_group_for_user(request.user, group_id) if group_id else None
    ids = _selected_ids(request)
    if not ids:
        messages.error(request, "Select at least one key to move.")
    else:
        result = api_tokens_set_group(owner=request.user, ids=ids, group=group)
        count = len(result.changed)
        where = f"into {group.name}" if group else "out of their groups"
        messages.success(request, f"{count} key{'' if count == 1 else 's'} moved {where}.")
    return redirect("tokens" if request.POST.get("next") == "tokens" else "token_groups")


# --- profile -------------------------------------------------------------------------------------


def _zone_of(user: User) -> ZoneInfo:
    try:
        return ZoneInfo(user.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _profile_page(
    request: HttpRequest,
    *,
    form: ProfileForm | None = None,
    access_form: AccessTokenForm | None = None,
    new_access_token: tuple[PersonalAccessToken, str] | None = None,
    status: int = 200,
) -> HttpResponse:
    user = request.user
    context = {
        "form": form or ProfileForm.for_user(user),
        "access_form": access_form or AccessTokenForm(user=user),
        "access_tokens": list(access_tokens_for_user(user=user)),
        "new_access_token": new_access_token,
        "now": timezone.now(),
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
    response = render(request, "accounts/profile.html", context, status=status)
    if new_access_token is not None:
        response["Cache-Control"] = "no-store"
    return response


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    """Who the user is and how they sign in (managed by allauth's pages), their settings, their
    API access tokens, and the latest events of their account."""
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
        return _profile_page(request, form=form)
    return _profile_page(request)


@login_required
@require_POST
def access_token_create_view(request: HttpRequest) -> HttpResponse:
    """New personal access token: shown once, in this POST's answer."""
    form = AccessTokenForm(request.POST, user=request.user)
    if form.is_valid():
        try:
            created = access_token_create(user=request.user, **form.cleaned_data)
        except ApplicationError as exc:
            field = exc.extra.get("param")
            form.add_error(field if field in form.fields else None, exc.message)
        else:
            return _profile_page(request, new_access_token=created)
    return _profile_page(request, access_form=form, status=400)


@login_required
@require_POST
def access_token_revoke_view(request: HttpRequest, token_id: int) -> HttpResponse:
    token = _get_access_token_for_user(request.user, token_id)
    if access_token_revoke(token=token):
        messages.success(request, f"Access token {token.name} is revoked.")
    return redirect("/profile/#access-tokens")
