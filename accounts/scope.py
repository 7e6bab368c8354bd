"""Whose data a console page or API call works on: the user's own (personal), or one of their
organizations', and what their role there lets them do.

The permission matrix below is the one source of every organization permission: views, API
views and services ask `can()`, and the README's table is written from it
(tests/accounts/test_scope.py compares the two).
"""

from dataclasses import dataclass
from enum import StrEnum

from django.db.models import Q
from django.http import Http404, HttpRequest

from accounts.models import Membership, Organization, User
from tokenbyte.errors import ApplicationError

OWNER, ADMIN, MEMBER = Membership.Role.OWNER, Membership.Role.ADMIN, Membership.Role.MEMBER
# The session key holding the console's current organization (absent: personal).
SESSION_KEY = "tb_organization"


class Perm(StrEnum):
    VIEW = "view"  # see the organization, its members and one's own allowance
    EDIT = "edit"  # rename, time zone, whether members may have keys
    INVITE = "invite"  # invite by email or link, revoke invitations
    REMOVE_MEMBER = "remove_member"  # remove a member (role "member")
    REMOVE_ADMIN = "remove_admin"  # remove an admin or another owner
    SET_ROLE = "set_role"
    SET_ALLOWANCE = "set_allowance"
    TOP_UP = "top_up"  # top up the wallet, set its alert, see its ledger and receipts
    ALL_LOGS = "all_logs"  # see every member's calls, usage and keys (members see their own)
    MANAGE_KEYS = "manage_keys"  # disable or revoke another member's organization keys
    OWN_KEYS = "own_keys"  # create keys spending from the wallet (members: if allowed)


PERMISSIONS: dict[Perm, frozenset[str]] = {
    Perm.VIEW: frozenset({OWNER, ADMIN, MEMBER}),
    Perm.EDIT: frozenset({OWNER, ADMIN}),
    Perm.INVITE: frozenset({OWNER, ADMIN}),
    Perm.REMOVE_MEMBER: frozenset({OWNER, ADMIN}),
    Perm.REMOVE_ADMIN: frozenset({OWNER}),
    Perm.SET_ROLE: frozenset({OWNER}),
    Perm.SET_ALLOWANCE: frozenset({OWNER, ADMIN}),
    Perm.TOP_UP: frozenset({OWNER, ADMIN}),
    Perm.ALL_LOGS: frozenset({OWNER, ADMIN}),
    Perm.MANAGE_KEYS: frozenset({OWNER, ADMIN}),
    Perm.OWN_KEYS: frozenset({OWNER, ADMIN, MEMBER}),
}


def role_can(role: str, perm: Perm) -> bool:
    return role in PERMISSIONS[perm]


def member_keys_allowed(*, role: str, member_keys_enabled: bool, can_create_keys: bool) -> bool:
    """Whether a member's organization keys work: owners' and admins' always do; a member's
    while the organization lets members have keys and nobody stopped this member's.

    The relay applies the same rule in its key lookup (relay/keys.py), so a lowered role stops
    the keys within the key cache's second."""
    if role in (OWNER, ADMIN):
        return True
    return member_keys_enabled and can_create_keys


@dataclass(frozen=True)
class Scope:
    """The user, and the organization with their membership when not personal."""

    user: User
    membership: Membership | None = None

    @property
    def organization(self) -> Organization | None:
        return self.membership.organization if self.membership is not None else None

    @property
    def organization_id(self) -> int | None:
        return self.membership.organization_id if self.membership is not None else None

    @property
    def personal(self) -> bool:
        return self.membership is None

    @property
    def role(self) -> str | None:
        return self.membership.role if self.membership is not None else None

    def can(self, perm: Perm) -> bool:
        """Personal scope: the user owns everything in it."""
        return self.membership is None or role_can(self.membership.role, perm)

    def require(self, perm: Perm) -> None:
        if not self.can(perm):
            raise ApplicationError(
                f"Your role ({self.role}) in {self.organization} does not allow this.",
                code="permission_denied",
            )

    @property
    def sees_all(self) -> bool:
        """Whether this scope's lists show every member's rows (else only the user's own)."""
        return self.can(Perm.ALL_LOGS)

    def rows(self, *, user_field: str = "user", org_field: str = "organization") -> Q:
        """The filter of request logs, keys and the like that belong to this scope: personal
        rows have no organization; an organization's are all its members' (owners, admins) or
        the user's own there (members)."""
        if self.membership is None:
            return Q(**{user_field: self.user.pk, f"{org_field}__isnull": True})
        rows = Q(**{f"{org_field}_id": self.membership.organization_id})
        if not self.sees_all:
            rows &= Q(**{user_field: self.user.pk})
        return rows


def membership_for(*, user: User, organization_id: int) -> Membership | None:
    return (
        Membership.objects.select_related("organization")
        .filter(user=user, organization_id=organization_id)
        .first()
    )


def request_scope(request: HttpRequest) -> Scope:
    """The console's current scope: the organization chosen with the switcher, while the user
    is still a member of it (a removed member falls back to personal on their next page)."""
    cached = getattr(request, "_tb_scope", None)
    if cached is not None:
        return cached
    user = request.user
    membership = None
    org_id = request.session.get(SESSION_KEY)
    if isinstance(org_id, int):
        membership = membership_for(user=user, organization_id=org_id)
        if membership is None:
            request.session.pop(SESSION_KEY, None)
    scope = Scope(user=user, membership=membership)
    request._tb_scope = scope
    return scope


def scope_switch(request: HttpRequest, *, organization_id: int | None) -> Scope:
    """Make an organization (None: personal) the console's scope; a non-member gets a 404."""
    request.__dict__.pop("_tb_scope", None)
    if organization_id is None:
        request.session.pop(SESSION_KEY, None)
        return request_scope(request)
    if membership_for(user=request.user, organization_id=organization_id) is None:
        raise Http404("No such organization.")
    request.session[SESSION_KEY] = organization_id
    return request_scope(request)


def scope_for(*, user: User, organization_id: int | str | None) -> Scope:
    """The scope an API call names with `?organization=<id>` (absent or empty: personal); an
    organization the user is not a member of is a 404, like any object of someone else's."""
    if organization_id in (None, ""):
        return Scope(user=user)
    try:
        org_id = int(organization_id)
    except (TypeError, ValueError):
        raise Http404("No such organization.") from None
    membership = membership_for(user=user, organization_id=org_id)
    if membership is None:
        raise Http404("No such organization.")
    return Scope(user=user, membership=membership)
