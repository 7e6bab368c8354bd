"""The organization services: creating one, invitations (single use, expiry, who may accept),
the last owner, who may grant which role, removal and members' settings."""

import threading
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from accounts.models import ApiToken, AuditEvent, Invitation, Membership, Organization
from accounts.scope import Scope, membership_for
from accounts.services import (
    invitation_accept,
    invitation_create,
    invitation_decline,
    invitation_email_send,
    invitation_for_token,
    invitation_revoke,
    invitation_state,
    invitation_token,
    member_remove,
    member_role_set,
    member_update,
    organization_create,
)
from billing.models import Wallet
from tests.factories import ApiTokenFactory, MembershipFactory, UserFactory
from tokenbyte.errors import ApplicationError

pytestmark = pytest.mark.django_db


def scope_of(user, organization) -> Scope:
    return Scope(user=user, membership=membership_for(user=user, organization_id=organization.pk))


@pytest.fixture
def org(owner):
    return organization_create(user=owner, name="Acme Research", time_zone="Europe/Paris")


def link(org, user, role="member") -> Invitation:
    return invitation_create(scope=scope_of(user, org), role=role)


# --- organization_create -------------------------------------------------------------------------


def test_creating_an_organization_gives_it_an_empty_wallet_and_makes_the_creator_its_owner(owner):
    org = organization_create(user=owner, name="  Acme Research ", time_zone="Europe/Paris")

    assert (org.name, org.slug, org.time_zone, org.created_by) == (
        "Acme Research", "acme-research", "Europe/Paris", owner,
    )  # fmt: skip
    (membership,) = Membership.objects.filter(organization=org)
    assert (membership.user, membership.role, membership.monthly_allowance_micros) == (
        owner, "owner", None,
    )  # fmt: skip
    paris_today = timezone.now().astimezone(ZoneInfo("Europe/Paris")).date()
    assert membership.allowance_period_start == paris_today.replace(day=1)
    wallet = Wallet.objects.get(organization=org)
    assert (wallet.user, wallet.balance_micros) == (None, 0)
    assert (
        AuditEvent.objects.filter(user=owner, kind="org_created", detail="Acme Research").count()
        == 1
    )


def test_two_organizations_of_one_name_get_distinct_slugs_and_the_users_time_zone(owner):
    owner.time_zone = "Asia/Tokyo"
    owner.save(update_fields=["time_zone"])

    first = organization_create(user=owner, name="Acme")
    second = organization_create(user=owner, name="Acme")

    assert [(o.slug, o.time_zone) for o in (first, second)] == [
        ("acme", "Asia/Tokyo"), ("acme-2", "Asia/Tokyo"),
    ]  # fmt: skip


def test_an_organization_needs_a_name_and_a_known_time_zone(owner):
    with pytest.raises(ApplicationError) as blank:
        organization_create(user=owner, name="   ")
    with pytest.raises(ApplicationError) as zone:
        organization_create(user=owner, name="Acme", time_zone="Mars/Olympus")

    assert (blank.value.extra, zone.value.extra) == ({"param": "name"}, {"param": "time_zone"})
    assert Organization.objects.count() == 0
    assert Wallet.objects.filter(organization__isnull=False).count() == 0


# --- invitations ---------------------------------------------------------------------------------


def test_a_link_invitation_is_single_use(org, owner):
    invitation = link(org, owner)
    first, second = UserFactory(email="first@example.com"), UserFactory(email="second@example.com")

    membership = invitation_accept(invitation=invitation, user=first)
    with pytest.raises(ApplicationError) as refused:
        invitation_accept(invitation=invitation, user=second)

    assert (membership.user, membership.role) == (first, "member")
    assert refused.value.code == "invitation_accepted"
    assert not Membership.objects.filter(user=second).exists()
    invitation.refresh_from_db()
    assert (invitation.accepted_by, invitation_state(invitation)) == (first, "accepted")


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_accepts_of_one_link_make_exactly_one_member(owner):
    org = organization_create(user=owner, name="Acme")
    invitation = link(org, owner)
    users = [UserFactory(email=f"racer{n}@example.com") for n in range(2)]
    barrier = threading.Barrier(len(users))
    outcomes: list[str] = []

    def accept(user):
        try:
            barrier.wait(timeout=10)
            invitation_accept(invitation=invitation, user=user)
            outcomes.append("joined")
        except ApplicationError as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=accept, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes) == ["invitation_accepted", "joined"]
    assert Membership.objects.filter(organization=org, role="member").count() == 1
    invitation.refresh_from_db()
    assert invitation.accepted_by in users


def test_an_expired_invitation_cannot_be_accepted(org, owner):
    invitation = link(org, owner)
    Invitation.objects.filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    invitation.refresh_from_db()

    with pytest.raises(ApplicationError) as refused:
        invitation_accept(invitation=invitation, user=UserFactory())

    assert (refused.value.code, invitation_state(invitation)) == ("invitation_expired", "expired")
    assert Membership.objects.filter(organization=org).count() == 1


def test_a_revoked_invitation_cannot_be_accepted_and_revoking_twice_changes_nothing(org, owner):
    invitation = link(org, owner)

    assert invitation_revoke(scope=scope_of(owner, org), invitation=invitation) is True
    assert invitation_revoke(scope=scope_of(owner, org), invitation=invitation) is False
    with pytest.raises(ApplicationError) as refused:
        invitation_accept(invitation=invitation, user=UserFactory())

    assert refused.value.code == "invitation_revoked"
    assert Membership.objects.filter(organization=org).count() == 1


def test_a_declined_invitation_cannot_be_accepted_afterwards(org, owner):
    invitee = UserFactory(email="invitee@example.com")
    invitation = invitation_create(scope=scope_of(owner, org), email="Invitee@Example.com")

    invitation_decline(invitation=invitation, user=invitee)
    with pytest.raises(ApplicationError) as refused:
        invitation_accept(invitation=invitation, user=invitee)

    assert refused.value.code == "invitation_declined"
    assert not Membership.objects.filter(user=invitee).exists()


def test_an_email_invitation_is_for_its_address_only(org, owner):
    invitation = invitation_create(scope=scope_of(owner, org), email="Invitee@Example.com")
    stranger = UserFactory(email="stranger@example.com")

    with pytest.raises(ApplicationError) as refused:
        invitation_accept(invitation=invitation, user=stranger)

    assert invitation.email == "invitee@example.com"
    assert refused.value.code == "invitation_other_email"
    assert refused.value.message == (
        "This invitation is for invitee@example.com; you are signed in as stranger@example.com."
    )
    assert invitation_state(Invitation.objects.get(pk=invitation.pk)) == "pending"


def test_a_member_cannot_be_invited_again_nor_accept_a_link(org, owner, member):
    with pytest.raises(ApplicationError) as invited:
        invitation_create(scope=scope_of(owner, org), email="member@example.com")
    invitation = link(org, owner)
    with pytest.raises(ApplicationError) as accepted:
        invitation_accept(invitation=invitation, user=member)

    assert (invited.value.code, accepted.value.code) == ("already_member", "already_member")
    assert invitation_state(Invitation.objects.get(pk=invitation.pk)) == "pending"
    assert Invitation.objects.filter(email="member@example.com").count() == 0


def test_a_new_invitation_to_an_address_revokes_its_pending_one(org, owner):
    first = invitation_create(scope=scope_of(owner, org), email="invitee@example.com")
    second = invitation_create(scope=scope_of(owner, org), email="invitee@example.com")

    first.refresh_from_db()
    assert (invitation_state(first), invitation_state(second)) == ("revoked", "pending")


def test_the_invitation_token_finds_its_invitation_and_nothing_else(org, owner):
    invitation = link(org, owner)
    token = invitation_token(invitation)

    assert token.startswith("inv_") and len(token) == 44
    assert invitation_for_token(token=token) == invitation
    assert invitation_for_token(token=token[:-1] + ("0" if token[-1] != "0" else "1")) is None
    assert invitation_for_token(token="sk-" + token[4:]) is None
    assert Invitation.objects.get(pk=invitation.pk).token_digest != token


def test_the_invitation_email_carries_the_link(org, owner, settings):
    settings.SITE_URL = "https://console.example.com"
    invitation = invitation_create(scope=scope_of(owner, org), email="invitee@example.com")

    assert invitation_email_send(invitation_id=invitation.pk) is True

    (message,) = mail.outbox
    assert message.to == ["invitee@example.com"]
    assert message.subject == "You are invited to join Acme Research on TokenByte"
    url = f"https://console.example.com/organization/invitations/{invitation_token(invitation)}/"
    assert url in message.body
    assert "owner@example.com invited you to join Acme Research on TokenByte as member." in (
        message.body
    )


def test_a_revoked_invitation_is_not_emailed(org, owner):
    invitation = invitation_create(scope=scope_of(owner, org), email="invitee@example.com")
    invitation_revoke(scope=scope_of(owner, org), invitation=invitation)

    assert invitation_email_send(invitation_id=invitation.pk) is False
    assert mail.outbox == []


# --- roles ---------------------------------------------------------------------------------------


def test_an_admin_cannot_grant_admin_or_owner(org, admin, member):
    membership = Membership.objects.get(user=member)
    for role in ("admin", "owner"):
        with pytest.raises(ApplicationError) as invited:
            invitation_create(scope=scope_of(admin, org), email="new@example.com", role=role)
        assert (invited.value.code, invited.value.extra) == ("permission_denied", {"param": "role"})
    with pytest.raises(ApplicationError) as promoted:
        member_role_set(scope=scope_of(admin, org), membership=membership, role="admin")

    assert promoted.value.code == "permission_denied"
    assert Invitation.objects.count() == 0
    assert Membership.objects.get(user=member).role == "member"
    # An admin invites members, by email or link.
    assert link(org, admin).role == "member"


def test_an_owner_grants_any_role(org, owner, member):
    membership = Membership.objects.get(user=member)

    assert (
        member_role_set(scope=scope_of(owner, org), membership=membership, role="admin").role
        == "admin"
    )
    assert link(org, owner, role="owner").role == "owner"
    assert AuditEvent.objects.get(user=member, kind="org_role_changed").detail == (
        "Acme Research: member → admin by owner@example.com"
    )


def test_the_last_owner_can_neither_leave_nor_step_down(org, owner):
    own = Membership.objects.get(user=owner)

    with pytest.raises(ApplicationError) as left:
        member_remove(scope=scope_of(owner, org), membership=own)
    with pytest.raises(ApplicationError) as stepped_down:
        member_role_set(scope=scope_of(owner, org), membership=own, role="admin")

    assert (left.value.code, stepped_down.value.code) == ("last_owner", "last_owner")
    assert Membership.objects.get(pk=own.pk).role == "owner"


def test_with_a_second_owner_the_first_may_step_down(org, owner):
    second = UserFactory(email="second@example.com")
    MembershipFactory(organization=org, user=second, role="owner")
    own = Membership.objects.get(user=owner)

    member_role_set(scope=scope_of(owner, org), membership=own, role="member")

    assert dict(Membership.objects.filter(organization=org).values_list("user__email", "role")) == {
        "owner@example.com": "member", "second@example.com": "owner",
    }  # fmt: skip


# --- removal -------------------------------------------------------------------------------------


def test_removing_a_member_revokes_their_organization_keys_only(org, owner, member):
    other_org = organization_create(user=member, name="Side project")
    org_key = ApiTokenFactory(owner=member, organization=org, name="org-key")
    personal_key = ApiTokenFactory(owner=member, name="personal-key")
    side_key = ApiTokenFactory(owner=member, organization=other_org, name="side-key")
    owners_key = ApiTokenFactory(owner=owner, organization=org, name="owners-key")

    revoked = member_remove(
        scope=scope_of(owner, org), membership=Membership.objects.get(user=member, organization=org)
    )

    assert revoked == 1
    statuses = dict(ApiToken.objects.values_list("name", "status"))
    assert statuses == {
        "org-key": "revoked",
        "personal-key": "enabled",
        "side-key": "enabled",
        "owners-key": "enabled",
    }
    assert not Membership.objects.filter(organization=org, user=member).exists()
    assert AuditEvent.objects.get(user=member, kind="org_left").detail == (
        "removed from Acme Research by owner@example.com"
    )
    assert {org_key.pk, personal_key.pk, side_key.pk, owners_key.pk} == set(
        ApiToken.objects.values_list("pk", flat=True)
    )


def test_an_admin_removes_members_but_not_admins_or_owners(org, owner, admin, member):
    second_admin = UserFactory(email="admin2@example.com")
    MembershipFactory(organization=org, user=second_admin, role="admin")
    scope = scope_of(admin, org)

    for user in (second_admin, owner):
        with pytest.raises(ApplicationError) as refused:
            member_remove(
                scope=scope, membership=Membership.objects.get(user=user, organization=org)
            )
        assert refused.value.code == "permission_denied"
    member_remove(scope=scope, membership=Membership.objects.get(user=member))

    emails = Membership.objects.filter(organization=org).values_list("user__email", flat=True)
    assert sorted(emails) == ["admin2@example.com", "admin@example.com", "owner@example.com"]


def test_a_member_may_leave_but_not_remove_anyone(org, owner, member):
    scope = scope_of(member, org)
    with pytest.raises(ApplicationError) as refused:
        member_remove(scope=scope, membership=Membership.objects.get(user=owner))

    member_remove(scope=scope, membership=Membership.objects.get(user=member))

    assert refused.value.code == "permission_denied"
    assert list(
        Membership.objects.filter(organization=org).values_list("user__email", flat=True)
    ) == ["owner@example.com"]
    assert AuditEvent.objects.get(user=member, kind="org_left").detail == "left Acme Research"


# --- member_update -------------------------------------------------------------------------------


def test_an_owner_or_admin_sets_a_members_allowance_and_stops_their_keys(org, owner, admin, member):
    membership = Membership.objects.get(user=member)

    member_update(
        scope=scope_of(admin, org), membership=membership, monthly_allowance_micros=25_000_000
    )
    member_update(scope=scope_of(owner, org), membership=membership, can_create_keys=False)
    membership.refresh_from_db()
    assert (membership.monthly_allowance_micros, membership.can_create_keys) == (25_000_000, False)

    member_update(scope=scope_of(owner, org), membership=membership, monthly_allowance_micros=None)
    membership.refresh_from_db()
    assert (membership.monthly_allowance_micros, membership.can_create_keys) == (None, False)


def test_member_update_refuses_a_member_a_negative_allowance_and_another_organization(
    org, owner, member
):
    membership = Membership.objects.get(user=member)
    other = organization_create(user=owner, name="Other")

    with pytest.raises(ApplicationError) as by_member:
        member_update(
            scope=scope_of(member, org), membership=membership, monthly_allowance_micros=1
        )
    with pytest.raises(ApplicationError) as negative:
        member_update(
            scope=scope_of(owner, org), membership=membership, monthly_allowance_micros=-1
        )
    with pytest.raises(ApplicationError) as elsewhere:
        member_update(scope=scope_of(owner, other), membership=membership, can_create_keys=False)

    assert (by_member.value.code, negative.value.code, elsewhere.value.code) == (
        "permission_denied", "invalid", "not_found",
    )  # fmt: skip
    membership.refresh_from_db()
    assert (membership.monthly_allowance_micros, membership.can_create_keys) == (None, True)


def test_a_joining_member_starts_the_month_of_the_organizations_time_zone(org, owner):
    invitee = UserFactory(email="late@example.com")

    membership = invitation_accept(invitation=link(org, owner), user=invitee)

    assert membership.allowance_period_start.day == 1
    assert isinstance(membership.allowance_period_start, date)
    assert (membership.allowance_used_micros, membership.can_create_keys) == (0, True)
