"""The console's organization pages: the scope switcher, an organization's members, settings and
invitations, and the invitation page an invitee opens (signed in or not).

Thin: the services in accounts/services.py decide (and check the permission matrix of
accounts/scope.py again); here an ApplicationError "permission_denied" becomes a 403 page,
"not_found" a 404 and any other a form error. An object outside the scope's organization is a
404, through one lookup helper per object.
"""

from collections.abc import Callable
from functools import wraps

from allauth.account.adapter import get_adapter
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_http_methods, require_POST

from accounts.adapters import INVITATION_SESSION_KEY
from accounts.models import Invitation, Membership, User
from accounts.org_forms import (
    InvitationForm,
    MemberAllowanceForm,
    MemberKeysForm,
    MemberRoleForm,
    OrganizationCreateForm,
    OrganizationSettingsForm,
)
from accounts.scope import Perm, Scope, member_keys_allowed, request_scope, scope_switch
from accounts.selectors import (
    invitations_for_organization,
    invitations_pending_for_email,
    memberships_for_organization,
    memberships_for_user,
)
from accounts.services import (
    invitation_accept,
    invitation_create,
    invitation_decline,
    invitation_for_token,
    invitation_revoke,
    invitation_state,
    invitation_token,
    invitation_url,
    member_remove,
    member_role_set,
    member_update,
    organization_create,
    organization_update,
)
from billing.selectors import wallet_balance_micros_for_scope
from tokenbyte.errors import ApplicationError

# The invitations the organization page lists (pending ones first).
INVITATIONS_SHOWN = 50
# Where the switcher sends the user when `next` is missing or not a local URL.
SWITCH_FALLBACK = "/dashboard/"


def _denied(request: HttpRequest, message: str) -> HttpResponse:
    return render(request, "accounts/organization_denied.html", {"message": message}, status=403)


def _refused(exc: ApplicationError) -> bool:
    """A refusal of who is asking (403) or of what they asked for (404), not of the input."""
    return exc.status in (403, 404)


def _application_errors(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A service's refusal is a 403 page or a 404 (tokenbyte.errors.STATUS_OF_CODE); any
    other ApplicationError reaching here is the view's to show as a form error."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except ApplicationError as exc:
            if exc.status == 403:
                return _denied(request, exc.message)
            if exc.status == 404:
                raise Http404(exc.message) from None
            raise

    return wrapped


def _form_error(form, exc: ApplicationError) -> None:
    if _refused(exc):
        raise exc
    form.add_service_error(exc)


def _org_scope(request: HttpRequest) -> Scope:
    """The console's scope, which must be an organization's: in personal scope the pages of
    an organization do not exist (404)."""
    scope = request_scope(request)
    if scope.personal:
        raise Http404("No organization is selected.")
    return scope


def _get_membership_in_scope(scope: Scope, pk: int) -> Membership:
    """A membership of the scope's organization; any other (or none in personal scope) is a 404."""
    if scope.personal:
        raise Http404("No such member.")
    try:
        return memberships_for_organization(organization_id=scope.organization_id).get(pk=pk)
    except Membership.DoesNotExist:
        raise Http404("No such member.") from None


def _get_invitation_in_scope(scope: Scope, pk: int) -> Invitation:
    """An invitation of the scope's organization; any other is a 404."""
    if scope.personal:
        raise Http404("No such invitation.")
    try:
        return invitations_for_organization(organization_id=scope.organization_id).get(pk=pk)
    except Invitation.DoesNotExist:
        raise Http404("No such invitation.") from None


def _safe_next(request: HttpRequest, fallback: str = SWITCH_FALLBACK) -> str:
    url = request.POST.get("next", "")
    local = url.startswith("/") and url_has_allowed_host_and_scheme(
        url, allowed_hosts=None, require_https=request.is_secure()
    )
    return url if local else fallback


# --- the scope switcher and creating an organization --------------------------------------------


@login_required
@require_POST
def organization_switch(request: HttpRequest) -> HttpResponse:
    """Work in an organization (or, `organization` empty, in the personal account); a
    non-member's organization is a 404."""
    raw = request.POST.get("organization", "")
    try:
        organization_id = int(raw) if raw else None
    except ValueError:
        raise Http404("No such organization.") from None
    scope = scope_switch(request, organization_id=organization_id)
    where = scope.organization.name if scope.organization else "your personal account"
    messages.success(request, f"You are working in {where}.")
    return redirect(_safe_next(request))


@login_required
@require_POST
@_application_errors
def organization_create_view(request: HttpRequest) -> HttpResponse:
    form = OrganizationCreateForm(request.POST, user=request.user)
    if form.is_valid():
        try:
            organization = organization_create(user=request.user, **form.cleaned_data)
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            scope_switch(request, organization_id=organization.pk)
            messages.success(
                request,
                f"{organization.name} is created, with its own wallet: top it up, then invite "
                "your colleagues.",
            )
            return redirect("organization")
    return _personal_page(request, create_form=form, status=400)


# --- the organization page ----------------------------------------------------------------------


@login_required
@require_http_methods(["GET"])
def organization_home(request: HttpRequest) -> HttpResponse:
    """Personal scope: the user's organizations, a form to create one and the invitations
    waiting for them. An organization's scope: its page."""
    scope = request_scope(request)
    if scope.personal:
        return _personal_page(request)
    return _organization_page(request, scope)


def _personal_page(
    request: HttpRequest, *, create_form: OrganizationCreateForm | None = None, status: int = 200
) -> HttpResponse:
    user = request.user
    memberships = list(memberships_for_user(user=user))
    joined = {m.organization_id for m in memberships}
    invitations = [
        inv
        for inv in invitations_pending_for_email(email=user.email)
        if inv.organization_id not in joined
    ]
    for invitation in invitations:
        invitation.token = invitation_token(invitation)
    context = {
        "memberships": memberships,
        "invitations": invitations,
        "create_form": create_form or OrganizationCreateForm(user=user),
    }
    return render(request, "accounts/organization_list.html", context, status=status)


def _member_rows(scope: Scope) -> list[Membership]:
    organization = scope.organization
    rows = list(memberships_for_organization(organization_id=organization.pk))
    for member in rows:
        member.is_self = member.user_id == scope.user.pk
        member.keys_work = member_keys_allowed(
            role=member.role,
            member_keys_enabled=organization.member_keys_enabled,
            can_create_keys=member.can_create_keys,
        )
        member.manageable = scope.can(Perm.SET_ALLOWANCE) or scope.can(Perm.SET_ROLE)
        removal = Perm.REMOVE_MEMBER if member.role == Membership.Role.MEMBER else Perm.REMOVE_ADMIN
        member.removable = member.is_self or scope.can(removal)
    return rows


def _invitation_rows(scope: Scope) -> list[Invitation]:
    rows = list(
        invitations_for_organization(organization_id=scope.organization_id)[:INVITATIONS_SHOWN]
    )
    for invitation in rows:
        invitation.state = invitation_state(invitation)
        # Only a link's URL is shown again: an emailed one is the addressee's alone.
        shareable = not invitation.email and invitation.state == "pending"
        invitation.url = invitation_url(invitation) if shareable else ""
    # Pending first, then the newest.
    rows.sort(key=lambda inv: inv.state != "pending")
    return rows


def _organization_page(
    request: HttpRequest,
    scope: Scope,
    *,
    settings_form: OrganizationSettingsForm | None = None,
    email_form: InvitationForm | None = None,
    link_form: InvitationForm | None = None,
    status: int = 200,
) -> HttpResponse:
    organization = scope.organization
    context = {
        "scope": scope,
        "organization": organization,
        "membership": scope.membership,
        "members": _member_rows(scope),
        "wallet_balance_micros": wallet_balance_micros_for_scope(scope=scope),
        "can_edit": scope.can(Perm.EDIT),
        "can_invite": scope.can(Perm.INVITE),
        "sees_all": scope.sees_all,
    }
    if context["can_edit"]:
        context["settings_form"] = settings_form or OrganizationSettingsForm.for_organization(
            organization
        )
    shown_link = False
    if context["can_invite"]:
        invitations = _invitation_rows(scope)
        context["invitations"] = invitations
        context["email_form"] = email_form or InvitationForm(scope=scope, link=False)
        context["link_form"] = link_form or InvitationForm(scope=scope, link=True)
        new_link = request.GET.get("link", "")
        context["new_link"] = next(
            (inv for inv in invitations if inv.url and str(inv.pk) == new_link), None
        )
        shown_link = any(inv.url for inv in invitations)
    response = render(request, "accounts/organization.html", context, status=status)
    if shown_link:
        # The page shows invitation links, which let anyone join: no cache may keep it.
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
@_application_errors
def organization_settings(request: HttpRequest) -> HttpResponse:
    scope = _org_scope(request)
    scope.require(Perm.EDIT)
    form = OrganizationSettingsForm(request.POST)
    if form.is_valid():
        try:
            organization = organization_update(scope=scope, **form.cleaned_data)
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, f"The settings of {organization.name} are saved.")
            return redirect("organization")
    return _organization_page(request, scope, settings_form=form, status=400)


# --- members ------------------------------------------------------------------------------------


def _member_page(
    request: HttpRequest,
    scope: Scope,
    member: Membership,
    *,
    role_form: MemberRoleForm | None = None,
    allowance_form: MemberAllowanceForm | None = None,
    status: int = 200,
) -> HttpResponse:
    organization = scope.organization
    context = {
        "scope": scope,
        "organization": organization,
        "member": member,
        "is_self": member.user_id == scope.user.pk,
        "keys_work": member_keys_allowed(
            role=member.role,
            member_keys_enabled=organization.member_keys_enabled,
            can_create_keys=member.can_create_keys,
        ),
        "can_set_role": scope.can(Perm.SET_ROLE),
        "can_set_allowance": scope.can(Perm.SET_ALLOWANCE),
        "role_form": role_form or MemberRoleForm(initial={"role": member.role}),
        "allowance_form": allowance_form or MemberAllowanceForm.for_membership(member),
        "removable": scope.can(
            Perm.REMOVE_MEMBER if member.role == Membership.Role.MEMBER else Perm.REMOVE_ADMIN
        ),
    }
    return render(request, "accounts/organization_member.html", context, status=status)


def _require_manager(scope: Scope) -> None:
    """A member's page is for those who change roles or allowances (owners, admins)."""
    if not scope.can(Perm.SET_ROLE):
        scope.require(Perm.SET_ALLOWANCE)


@login_required
@require_http_methods(["GET"])
@_application_errors
def member_detail(request: HttpRequest, member_id: int) -> HttpResponse:
    scope = _org_scope(request)
    member = _get_membership_in_scope(scope, member_id)
    _require_manager(scope)
    return _member_page(request, scope, member)


def _after_member_change(scope: Scope, member: Membership) -> HttpResponse:
    # Someone who lowered their own role may no longer open members' pages.
    if member.user_id == scope.user.pk:
        return redirect("organization")
    return redirect("organization_member", member_id=member.pk)


@login_required
@require_POST
@_application_errors
def member_role(request: HttpRequest, member_id: int) -> HttpResponse:
    scope = _org_scope(request)
    member = _get_membership_in_scope(scope, member_id)
    scope.require(Perm.SET_ROLE)
    form = MemberRoleForm(request.POST)
    if form.is_valid():
        try:
            member = member_role_set(scope=scope, membership=member, role=form.cleaned_data["role"])
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            messages.success(
                request, f"{member.user.email} is now {member.get_role_display().lower()}."
            )
            return _after_member_change(scope, member)
    return _member_page(request, scope, member, role_form=form, status=400)


@login_required
@require_POST
@_application_errors
def member_allowance(request: HttpRequest, member_id: int) -> HttpResponse:
    scope = _org_scope(request)
    member = _get_membership_in_scope(scope, member_id)
    scope.require(Perm.SET_ALLOWANCE)
    form = MemberAllowanceForm(request.POST)
    if form.is_valid():
        try:
            member = member_update(
                scope=scope, membership=member, monthly_allowance_micros=form.allowance_micros()
            )
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, f"The monthly allowance of {member.user.email} is saved.")
            return _after_member_change(scope, member)
    return _member_page(request, scope, member, allowance_form=form, status=400)


@login_required
@require_POST
@_application_errors
def member_keys(request: HttpRequest, member_id: int) -> HttpResponse:
    """Stop a member's organization keys (they keep the membership) or allow them again."""
    scope = _org_scope(request)
    member = _get_membership_in_scope(scope, member_id)
    scope.require(Perm.SET_ALLOWANCE)
    form = MemberKeysForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose whether the member's keys may work.")
        return redirect("organization_member", member_id=member.pk)
    allowed = form.cleaned_data["can_create_keys"]
    member = member_update(scope=scope, membership=member, can_create_keys=allowed)
    if allowed:
        messages.success(request, f"The keys of {member.user.email} may work again.")
    else:
        messages.success(
            request, f"The keys of {member.user.email} are stopped: the relay refuses them."
        )
    return _after_member_change(scope, member)


@login_required
@require_http_methods(["GET", "POST"])
@_application_errors
def member_remove_view(request: HttpRequest, member_id: int) -> HttpResponse:
    """Remove a member, or leave (one's own membership), after a confirmation page."""
    scope = _org_scope(request)
    member = _get_membership_in_scope(scope, member_id)
    leaving = member.user_id == scope.user.pk
    if not leaving:
        scope.require(
            Perm.REMOVE_MEMBER if member.role == Membership.Role.MEMBER else Perm.REMOVE_ADMIN
        )
    organization = scope.organization
    if request.method == "GET":
        context = {"member": member, "organization": organization, "leaving": leaving}
        return render(request, "accounts/organization_remove.html", context)
    try:
        revoked = member_remove(scope=scope, membership=member)
    except ApplicationError as exc:
        if _refused(exc):
            raise
        messages.error(request, exc.message)
        return redirect("organization")
    keys = f"{revoked} organization key{'' if revoked == 1 else 's'} revoked"
    if leaving:
        scope_switch(request, organization_id=None)
        messages.success(request, f"You left {organization.name} ({keys}).")
    else:
        messages.success(
            request, f"{member.user.email} is removed from {organization.name} ({keys})."
        )
    return redirect("organization")


# --- invitations, from the organization's side --------------------------------------------------


@login_required
@require_POST
@_application_errors
def invitation_create_view(request: HttpRequest) -> HttpResponse:
    """Invite by email (`kind` email) or make a shareable link (`kind` link)."""
    scope = _org_scope(request)
    scope.require(Perm.INVITE)
    link = request.POST.get("kind") == "link"
    form = InvitationForm(request.POST, scope=scope, link=link)
    if form.is_valid():
        try:
            invitation = invitation_create(scope=scope, **form.service_kwargs())
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            if link:
                messages.success(request, "The link is ready: copy it and share it.")
                return redirect(f"{reverse('organization')}?link={invitation.pk}#new-link")
            messages.success(request, f"An invitation is on its way to {invitation.email}.")
            return redirect(f"{reverse('organization')}#invitations")
    forms = {"link_form": form} if link else {"email_form": form}
    return _organization_page(request, scope, status=400, **forms)


@login_required
@require_POST
@_application_errors
def invitation_revoke_view(request: HttpRequest, invitation_id: int) -> HttpResponse:
    scope = _org_scope(request)
    invitation = _get_invitation_in_scope(scope, invitation_id)
    if invitation_revoke(scope=scope, invitation=invitation):
        who = invitation.email or "The link"
        messages.success(request, f"{who}: invitation revoked; its link no longer works.")
    else:
        messages.error(request, "That invitation was no longer pending.")
    return redirect(f"{reverse('organization')}#invitations")


# --- the invitation page the invitee opens ------------------------------------------------------

DEAD_MESSAGES = {
    "accepted": "This invitation has already been used: an invitation works once.",
    "declined": "This invitation was declined.",
    "revoked": "This invitation was withdrawn by the organization.",
    "expired": "This invitation has expired.",
}


def _invitation_page(
    request: HttpRequest, invitation: Invitation | None, token: str, *, status: int = 200
) -> HttpResponse:
    state = invitation_state(invitation) if invitation is not None else "unknown"
    user = request.user
    path = reverse("invitation", kwargs={"token": token})
    context = {"invitation": invitation, "state": state, "token": token, "path": path}
    if state in DEAD_MESSAGES:
        context["dead_message"] = DEAD_MESSAGES[state]
    if state == "pending":
        signup = {"next": path, **({"email": invitation.email} if invitation.email else {})}
        context["login_url"] = f"{reverse('account_login')}?{urlencode({'next': path})}"
        context["signup_url"] = f"{reverse('account_signup')}?{urlencode(signup)}"
        if user.is_authenticated:
            context["wrong_email"] = bool(invitation.email) and (
                invitation.email != user.email.lower()
            )
            context["already_member"] = Membership.objects.filter(
                organization_id=invitation.organization_id, user=user
            ).exists()
    return render(request, "accounts/organization_invitation.html", context, status=status)


def _remember_invitation(request: HttpRequest, invitation: Invitation, token: str) -> None:
    """Keep the invitation for the way through sign-up: it opens sign-up while pending (see
    AccountAdapter.is_open_for_signup), and an emailed link proves its address, so signing up
    with that address needs no second confirmation email."""
    request.session[INVITATION_SESSION_KEY] = token
    if invitation.email and not request.user.is_authenticated:
        get_adapter(request).stash_verified_email(request, invitation.email)


def _forget_invitation(request: HttpRequest) -> None:
    request.session.pop(INVITATION_SESSION_KEY, None)


@require_http_methods(["GET"])
def invitation_detail(request: HttpRequest, token: str) -> HttpResponse:
    """Who invites the visitor to what. 404 for an unknown token, 410 for a dead invitation."""
    invitation = invitation_for_token(token=token)
    if invitation is None:
        return _invitation_page(request, None, token, status=404)
    state = invitation_state(invitation)
    if state != "pending":
        _forget_invitation(request)
        return _invitation_page(request, invitation, token, status=410)
    _remember_invitation(request, invitation, token)
    return _invitation_page(request, invitation, token)


def _invitation_answer(request: HttpRequest, token: str, *, accept: bool) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect("invitation", token=token)
    invitation = invitation_for_token(token=token)
    if invitation is None:
        return _invitation_page(request, None, token, status=404)
    user: User = request.user
    try:
        if accept:
            membership = invitation_accept(invitation=invitation, user=user)
        else:
            invitation_decline(invitation=invitation, user=user)
    except ApplicationError as exc:
        if exc.code == "already_member":
            _forget_invitation(request)
            scope_switch(request, organization_id=invitation.organization_id)
            messages.info(request, exc.message)
            return redirect("organization")
        if exc.code == "invitation_other_email":
            return _invitation_page(request, invitation, token, status=403)
        if exc.code.startswith("invitation_"):
            _forget_invitation(request)
            invitation.refresh_from_db()
            return _invitation_page(request, invitation, token, status=410)
        raise
    _forget_invitation(request)
    organization = invitation.organization
    if not accept:
        messages.success(request, f"You declined the invitation to {organization.name}.")
        return redirect("organization")
    scope_switch(request, organization_id=organization.pk)
    messages.success(
        request,
        f"Welcome to {organization.name}: you joined as {membership.get_role_display().lower()}.",
    )
    return redirect("organization")


@require_POST
def invitation_accept_view(request: HttpRequest, token: str) -> HttpResponse:
    return _invitation_answer(request, token, accept=True)


@require_POST
def invitation_decline_view(request: HttpRequest, token: str) -> HttpResponse:
    return _invitation_answer(request, token, accept=False)
