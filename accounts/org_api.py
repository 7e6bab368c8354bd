"""The organizations part of /api/: organizations, their members and invitations, and the
invitee's side of an invitation (read, accept, decline by its token).

Who may do what is accounts/scope.py's matrix, checked by the services; an organization the
caller is not a member of is a 404, like any object of someone else's.
"""

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Invitation, Membership, User
from accounts.scope import Perm, Scope, member_keys_allowed, role_can
from accounts.selectors import (
    invitations_for_organization,
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
    invitation_url,
    member_remove,
    member_role_set,
    member_update,
    organization_create,
    organization_update,
)
from tokenbyte.api import ErrorSerializer, Pagination
from tokenbyte.errors import ApplicationError
from tokenbyte.money import micros_to_usd

INVITATION_STATES = ("pending", "accepted", "declined", "revoked", "expired")
INVITATION_KINDS = ("email", "link")

# --- access helpers: one per object, anything outside the caller's reach is a 404 ---------------


def _get_membership_for_user(user: User, organization_id: int) -> Membership:
    """The user's membership of this organization (annotated like the list); a non-member
    gets a 404, like for a missing organization."""
    return get_object_or_404(memberships_for_user(user=user), organization_id=organization_id)


def _get_scope_for_user(user: User, organization_id: int) -> Scope:
    return Scope(user=user, membership=_get_membership_for_user(user, organization_id))


def _get_member_in_scope(scope: Scope, member_id: int) -> Membership:
    """A membership of the scope's organization; another organization's is a 404."""
    members = memberships_for_organization(organization_id=scope.organization_id)
    return get_object_or_404(members, pk=member_id)


def _get_invitation_in_scope(scope: Scope, invitation_id: int) -> Invitation:
    """An invitation of the scope's organization; another organization's is a 404."""
    invitations = invitations_for_organization(organization_id=scope.organization_id)
    return get_object_or_404(invitations, pk=invitation_id)


def _get_pending_invitation(token: str) -> Invitation:
    """The pending invitation of this token: unknown is a 404, an accepted, declined, revoked
    or expired one a 410 with code invitation_<state>."""
    invitation = invitation_for_token(token=token)
    if invitation is None:
        raise ApplicationError("No such invitation.", code="not_found")
    state = invitation_state(invitation)
    if state != "pending":
        raise ApplicationError(
            f"This invitation is {state}: ask for a new one.", code=f"invitation_{state}"
        )
    return invitation


# --- organizations -------------------------------------------------------------------------------


class OrganizationOutput(serializers.Serializer):
    """An organization as the caller sees it (from their membership of it)."""

    id = serializers.IntegerField(source="organization.id")
    name = serializers.CharField(source="organization.name")
    slug = serializers.CharField(source="organization.slug")
    time_zone = serializers.CharField(
        source="organization.time_zone",
        help_text="IANA zone; member allowances restart on the first of the month there.",
    )
    member_keys_enabled = serializers.BooleanField(
        source="organization.member_keys_enabled",
        help_text="Whether members (not only owners and admins) may have keys on the wallet.",
    )
    created_at = serializers.DateTimeField(source="organization.created_at")
    role = serializers.ChoiceField(choices=Membership.Role.choices, help_text="Your role.")
    membership_id = serializers.IntegerField(
        source="id", help_text="Your membership: DELETE it under members/ to leave."
    )
    member_count = serializers.IntegerField()
    balance_micros = serializers.SerializerMethodField(
        help_text="The organization wallet's balance, micro-USD; null unless your role may top "
        "it up (owner, admin)."
    )
    balance_usd = serializers.SerializerMethodField()

    class Meta:
        ref_name = "Organization"

    def _balance(self, membership: Membership) -> int | None:
        if not role_can(membership.role, Perm.TOP_UP):
            return None
        wallet = getattr(membership.organization, "wallet", None)
        return wallet.balance_micros if wallet is not None else 0

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_balance_micros(self, membership: Membership) -> int | None:
        return self._balance(membership)

    @extend_schema_field(
        {"type": "string", "pattern": r"^-?\d+\.\d{6}$", "nullable": True, "example": "12.500000"}
    )
    def get_balance_usd(self, membership: Membership) -> str | None:
        balance = self._balance(membership)
        return None if balance is None else f"{micros_to_usd(balance):f}"


def _organization_answer(user: User, organization_id: int, **kwargs) -> Response:
    membership = _get_membership_for_user(user, organization_id)
    return Response(OrganizationOutput(membership).data, **kwargs)


class OrganizationListApi(APIView):
    """The organizations you belong to, with your role in each; or create one (you become its
    owner; it gets its own wallet)."""

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=120)
        time_zone = serializers.CharField(
            max_length=64, required=False, allow_blank=True,
            help_text="An IANA time zone name, e.g. Europe/Paris; yours when absent.",
        )  # fmt: skip

        class Meta:
            ref_name = "OrganizationCreate"

    @extend_schema(
        responses={200: OrganizationOutput(many=True)}, operation_id="organizations_list"
    )
    def get(self, request: Request) -> Response:
        memberships = memberships_for_user(user=request.user)
        return Response(OrganizationOutput(memberships, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: OrganizationOutput, 400: ErrorSerializer},
        operation_id="organizations_create",
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        org = organization_create(user=request.user, **data.validated_data)
        return _organization_answer(request.user, org.pk, status=status.HTTP_201_CREATED)


class OrganizationDetailApi(APIView):
    """One of your organizations; PATCH changes its settings (owners and admins), only the
    fields sent."""

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=120, required=False)
        time_zone = serializers.CharField(
            max_length=64, required=False,
            help_text="An IANA time zone name. The current allowance period keeps its start.",
        )  # fmt: skip
        member_keys_enabled = serializers.BooleanField(
            required=False, help_text="Whether members may have keys spending from the wallet."
        )

        class Meta:
            ref_name = "OrganizationUpdate"

    @extend_schema(
        responses={200: OrganizationOutput, 404: ErrorSerializer},
        operation_id="organizations_retrieve",
    )
    def get(self, request: Request, organization_id: int) -> Response:
        return _organization_answer(request.user, organization_id)

    @extend_schema(
        request=InputSerializer,
        responses={200: OrganizationOutput, 400: ErrorSerializer, 403: ErrorSerializer,
                   404: ErrorSerializer},
        operation_id="organizations_update",
    )  # fmt: skip
    def patch(self, request: Request, organization_id: int) -> Response:
        scope = _get_scope_for_user(request.user, organization_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        organization_update(scope=scope, **data.validated_data)
        return _organization_answer(request.user, organization_id)


# --- members -------------------------------------------------------------------------------------


class MemberOutput(serializers.ModelSerializer):
    """A member. Money in micro-USD. A caller who may not set allowances (a member) sees the
    three allowance fields of the other members as null; their own are always shown."""

    user_id = serializers.IntegerField()
    email = serializers.EmailField(source="user.email")
    name = serializers.CharField(source="user.name")
    joined_at = serializers.DateTimeField(source="created_at")
    monthly_allowance_micros = serializers.IntegerField(
        allow_null=True, help_text="The monthly spending cap, micro-USD; null = no cap."
    )
    allowance_used_micros = serializers.IntegerField(
        allow_null=True,
        help_text="Spent this period plus what calls in flight hold, micro-USD.",
    )
    allowance_period_start = serializers.DateField(
        allow_null=True, help_text="The first day the period counts (organization's zone)."
    )
    keys_allowed = serializers.SerializerMethodField(
        help_text="Whether this member's organization keys work now: always for owners and "
        "admins; for a member while the organization lets members have keys and "
        "can_create_keys is on."
    )

    class Meta:
        model = Membership
        ref_name = "Member"
        fields = [
            "id", "user_id", "email", "name", "role", "joined_at", "monthly_allowance_micros",
            "allowance_used_micros", "allowance_period_start", "can_create_keys", "keys_allowed",
        ]  # fmt: skip
        read_only_fields = fields

    def get_keys_allowed(self, membership: Membership) -> bool:
        return member_keys_allowed(
            role=membership.role,
            member_keys_enabled=membership.organization.member_keys_enabled,
            can_create_keys=membership.can_create_keys,
        )

    def to_representation(self, membership: Membership) -> dict:
        data = super().to_representation(membership)
        scope: Scope = self.context["scope"]
        if membership.user_id != scope.user.pk and not scope.can(Perm.SET_ALLOWANCE):
            for field in ("monthly_allowance_micros", "allowance_used_micros",
                          "allowance_period_start"):  # fmt: skip
                data[field] = None
        return data


class MemberListApi(APIView):
    """The organization's members in the order they joined (every member may read it)."""

    pagination_class = Pagination

    @extend_schema(
        responses={200: MemberOutput(many=True), 404: ErrorSerializer},
        operation_id="organization_members_list",
    )
    def get(self, request: Request, organization_id: int) -> Response:
        scope = _get_scope_for_user(request.user, organization_id)
        paginator = self.pagination_class()
        members = memberships_for_organization(organization_id=scope.organization_id)
        page = paginator.paginate_queryset(members, request, view=self)
        output = MemberOutput(page, many=True, context={"scope": scope})
        return paginator.get_paginated_response(output.data)


class MemberDetailApi(APIView):
    """Change a member (PATCH, only the fields sent): `role` (owners), the monthly allowance
    and whether their keys may work (owners and admins). DELETE removes the member and revokes
    their organization keys; on your own membership it is leaving. An organization keeps at
    least one owner (400 last_owner)."""

    class InputSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=Membership.Role.choices, required=False)
        monthly_allowance_micros = serializers.IntegerField(
            required=False, allow_null=True, min_value=0,
            help_text="The monthly spending cap, micro-USD; null = no cap.",
        )  # fmt: skip
        can_create_keys = serializers.BooleanField(
            required=False, help_text="Off stops this member's organization keys."
        )

        class Meta:
            ref_name = "MemberUpdate"

    @extend_schema(
        request=InputSerializer,
        responses={200: MemberOutput, 400: ErrorSerializer, 403: ErrorSerializer,
                   404: ErrorSerializer},
        operation_id="organization_members_update",
    )  # fmt: skip
    def patch(self, request: Request, organization_id: int, member_id: int) -> Response:
        scope = _get_scope_for_user(request.user, organization_id)
        membership = _get_member_in_scope(scope, member_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        # One answer for the whole body: a refused role change leaves the allowance as it was.
        with transaction.atomic():
            if "role" in changes:
                member_role_set(scope=scope, membership=membership, role=changes.pop("role"))
            if changes:
                member_update(scope=scope, membership=membership, **changes)
        membership = _get_member_in_scope(scope, member_id)
        return Response(MemberOutput(membership, context={"scope": scope}).data)

    @extend_schema(
        request=None,
        responses={204: None, 400: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer},
        operation_id="organization_members_delete",
    )
    def delete(self, request: Request, organization_id: int, member_id: int) -> Response:
        scope = _get_scope_for_user(request.user, organization_id)
        membership = _get_member_in_scope(scope, member_id)
        member_remove(scope=scope, membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- invitations (the organization's side) -------------------------------------------------------


class InvitationOutput(serializers.ModelSerializer):
    kind = serializers.SerializerMethodField(
        help_text="email: sent to one address; link: a single-use link to share."
    )
    state = serializers.SerializerMethodField()
    invited_by = serializers.SerializerMethodField(help_text="The inviter's email.")
    accepted_by = serializers.SerializerMethodField(help_text="Who joined with it (email).")
    url = serializers.SerializerMethodField(
        help_text="The link of a pending link invitation (null otherwise): share it."
    )

    class Meta:
        model = Invitation
        fields = [
            "id", "kind", "email", "role", "state", "created_at", "expires_at", "invited_by",
            "accepted_by", "accepted_at", "declined_at", "revoked_at", "url",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=INVITATION_KINDS))
    def get_kind(self, invitation: Invitation) -> str:
        return "email" if invitation.email else "link"

    @extend_schema_field(serializers.ChoiceField(choices=INVITATION_STATES))
    def get_state(self, invitation: Invitation) -> str:
        return invitation_state(invitation)

    @extend_schema_field(serializers.EmailField(allow_null=True))
    def get_invited_by(self, invitation: Invitation) -> str | None:
        return invitation.invited_by.email if invitation.invited_by else None

    @extend_schema_field(serializers.EmailField(allow_null=True))
    def get_accepted_by(self, invitation: Invitation) -> str | None:
        return invitation.accepted_by.email if invitation.accepted_by else None

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_url(self, invitation: Invitation) -> str | None:
        if invitation.email or invitation_state(invitation) != "pending":
            return None
        return invitation_url(invitation)


class InvitationListApi(APIView):
    """The organization's invitations, newest first (owners and admins); or invite: with an
    email the link is emailed to that address, without one you get a single-use link to share
    (`url`). Both expire after 7 days; only owners may invite as admin or owner."""

    pagination_class = Pagination

    class InputSerializer(serializers.Serializer):
        email = serializers.EmailField(
            required=False, allow_blank=True, help_text="Absent or empty: a link to share."
        )
        role = serializers.ChoiceField(
            choices=Membership.Role.choices, default=Membership.Role.MEMBER
        )

        class Meta:
            ref_name = "InvitationCreate"

    @extend_schema(
        responses={200: InvitationOutput(many=True), 403: ErrorSerializer, 404: ErrorSerializer},
        operation_id="organization_invitations_list",
    )
    def get(self, request: Request, organization_id: int) -> Response:
        scope = _get_scope_for_user(request.user, organization_id)
        scope.require(Perm.INVITE)
        paginator = self.pagination_class()
        invitations = invitations_for_organization(organization_id=scope.organization_id)
        page = paginator.paginate_queryset(invitations, request, view=self)
        return paginator.get_paginated_response(InvitationOutput(page, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: InvitationOutput, 400: ErrorSerializer, 403: ErrorSerializer,
                   404: ErrorSerializer},
        operation_id="organization_invitations_create",
    )  # fmt: skip
    def post(self, request: Request, organization_id: int) -> Response:
        scope = _get_scope_for_user(request.user, organization_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation = invitation_create(scope=scope, **data.validated_data)
        invitation = _get_invitation_in_scope(scope, invitation.pk)
        return Response(InvitationOutput(invitation).data, status=status.HTTP_201_CREATED)


class InvitationDetailApi(APIView):
    """Revoke an invitation (owners and admins): its link stops working. Revoking a revoked or
    expired one is harmless (204); an accepted or declined one is a 409."""

    @extend_schema(
        request=None,
        responses={204: None, 403: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer},
        operation_id="organization_invitations_revoke",
    )
    def delete(self, request: Request, organization_id: int, invitation_id: int) -> Response:
        scope = _get_scope_for_user(request.user, organization_id)
        invitation = _get_invitation_in_scope(scope, invitation_id)
        if not invitation_revoke(scope=scope, invitation=invitation):
            state = invitation_state(invitation)
            if state in ("accepted", "declined"):
                raise ApplicationError(
                    f"This invitation is {state}; there is nothing to revoke.",
                    code=f"invitation_{state}",
                    extra={"status": status.HTTP_409_CONFLICT},
                )
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- invitations (the invitee's side, by the link's token) ---------------------------------------


class InvitationByTokenOutput(serializers.Serializer):
    organization_id = serializers.IntegerField(source="organization.id")
    organization_name = serializers.CharField(source="organization.name")
    role = serializers.ChoiceField(choices=Membership.Role.choices)
    state = serializers.SerializerMethodField()
    email = serializers.CharField(
        help_text="The address it was sent to; empty for a link anyone signed in may accept."
    )
    invited_by = serializers.SerializerMethodField(help_text="The inviter's email.")
    expires_at = serializers.DateTimeField()
    for_you = serializers.SerializerMethodField(
        help_text="Whether you, signed in as you are, may accept it."
    )

    class Meta:
        ref_name = "InvitationByToken"

    @extend_schema_field(serializers.ChoiceField(choices=INVITATION_STATES))
    def get_state(self, invitation: Invitation) -> str:
        return invitation_state(invitation)

    @extend_schema_field(serializers.EmailField(allow_null=True))
    def get_invited_by(self, invitation: Invitation) -> str | None:
        return invitation.invited_by.email if invitation.invited_by else None

    def get_for_you(self, invitation: Invitation) -> bool:
        user = self.context["user"]
        return not invitation.email or invitation.email == user.email.lower()


_TOKEN_ERRORS = {
    404: ErrorSerializer,
    410: ErrorSerializer,
}


class InvitationByTokenApi(APIView):
    """What an invitation is (the token is the `inv_…` end of its link): which organization,
    as which role, for which address. Unknown: 404; accepted, declined, revoked or expired:
    410 with code invitation_<state>."""

    @extend_schema(
        responses={200: InvitationByTokenOutput, **_TOKEN_ERRORS},
        operation_id="invitations_retrieve",
    )
    def get(self, request: Request, token: str) -> Response:
        invitation = _get_pending_invitation(token)
        context = {"user": request.user}
        return Response(InvitationByTokenOutput(invitation, context=context).data)


class InvitationAcceptApi(APIView):
    """Join the organization as the invitation's role. Single use; an email invitation only for
    its address (403 invitation_other_email); 409 already_member when you are one."""

    @extend_schema(
        request=None,
        responses={200: OrganizationOutput, 403: ErrorSerializer, 409: ErrorSerializer,
                   **_TOKEN_ERRORS},
        operation_id="invitations_accept",
    )  # fmt: skip
    def post(self, request: Request, token: str) -> Response:
        invitation = _get_pending_invitation(token)
        membership = invitation_accept(invitation=invitation, user=request.user)
        return _organization_answer(request.user, membership.organization_id)


class InvitationDeclineApi(APIView):
    """Decline the invitation: it cannot be used any more."""

    @extend_schema(
        request=None,
        responses={204: None, 403: ErrorSerializer, **_TOKEN_ERRORS},
        operation_id="invitations_decline",
    )
    def post(self, request: Request, token: str) -> Response:
        invitation = _get_pending_invitation(token)
        invitation_decline(invitation=invitation, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
