"""/api/ organizations, members and invitations: the permission matrix over owner / admin /
member / outsider on every endpoint and method, the invitee's side of an invitation, and the
exact answers."""

from datetime import UTC, timedelta

import pytest
from django.conf import settings
from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken, Invitation, Membership, Organization
from accounts.scope import Scope
from accounts.services import (
    api_token_create,
    invitation_create,
    invitation_token,
    organization_create,
)
from billing.services import credit_grant, wallet_get_or_create
from tests.factories import PersonalAccessTokenFactory, UserFactory
from tests.organizations import join

pytestmark = pytest.mark.django_db

PERSONAS = ("owner", "admin", "member", "outsider")


def iso(value) -> str:
    """A datetime as DRF writes it (UTC, `Z`)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def owner_scope(org: Organization) -> Scope:
    return Scope(user=org.created_by, membership=Membership.objects.get(
        organization=org, user=org.created_by
    ))  # fmt: skip


@pytest.fixture
def org(owner):
    return organization_create(user=owner, name="Acme", time_zone="Europe/Paris")


@pytest.fixture
def people(org, owner, outsider):
    """The four personas and the rows the matrix acts on: a colleague (a member others may
    change or remove) and a pending link invitation."""
    admin = UserFactory(email="admin@example.com", name="Ada")
    member = UserFactory(email="member@example.com", name="Max")
    colleague = UserFactory(email="colleague@example.com", name="Col")
    join(org, admin, Membership.Role.ADMIN)
    join(org, member, Membership.Role.MEMBER)
    join(org, colleague, Membership.Role.MEMBER)
    invitation = invitation_create(scope=owner_scope(org))
    return {
        "owner": owner,
        "admin": admin,
        "member": member,
        "outsider": outsider,
        "colleague": colleague,
        "invitation": invitation,
    }


def org_state(org: Organization) -> dict:
    """Everything an organization endpoint could change, to assert a refusal changed nothing."""
    return {
        "organizations": list(Organization.objects.order_by("pk").values()),
        "memberships": list(Membership.objects.order_by("pk").values()),
        "invitations": list(Invitation.objects.order_by("pk").values()),
        "keys": list(ApiToken.objects.order_by("pk").values("pk", "status")),
    }


def paths(org: Organization, people: dict) -> dict:
    members = {m.user_id: m.pk for m in org.memberships.all()}
    return {
        "org": org.pk,
        "colleague": members[people["colleague"].pk],
        "owner_membership": members[people["owner"].pk],
        "invitation": people["invitation"].pk,
        "token": invitation_token(people["invitation"]),
    }


# (method, path, body, expected status of owner / admin / member / outsider)
MATRIX = [
    ("get", "/api/organizations/", None, (200, 200, 200, 200)),
    ("post", "/api/organizations/", {"name": "Beta"}, (201, 201, 201, 201)),
    ("get", "/api/organizations/{org}/", None, (200, 200, 200, 404)),
    ("patch", "/api/organizations/{org}/", {"name": "Acme 2"}, (200, 200, 403, 404)),
    ("patch", "/api/organizations/{org}/", {"member_keys_enabled": False}, (200, 200, 403, 404)),
    ("get", "/api/organizations/{org}/members/", None, (200, 200, 200, 404)),
    ("patch", "/api/organizations/{org}/members/{colleague}/", {"role": "admin"},
     (200, 403, 403, 404)),
    ("patch", "/api/organizations/{org}/members/{colleague}/",
     {"monthly_allowance_micros": 5_000_000}, (200, 200, 403, 404)),
    ("patch", "/api/organizations/{org}/members/{colleague}/", {"can_create_keys": False},
     (200, 200, 403, 404)),
    ("delete", "/api/organizations/{org}/members/{colleague}/", None, (204, 204, 403, 404)),
    # The only owner: leaving is refused to them (last_owner), removing them to everyone else.
    ("delete", "/api/organizations/{org}/members/{owner_membership}/", None,
     (400, 403, 403, 404)),
    ("get", "/api/organizations/{org}/invitations/", None, (200, 200, 403, 404)),
    ("post", "/api/organizations/{org}/invitations/", {}, (201, 201, 403, 404)),
    ("post", "/api/organizations/{org}/invitations/", {"email": "new@example.com"},
     (201, 201, 403, 404)),
    ("post", "/api/organizations/{org}/invitations/", {"role": "admin"}, (201, 403, 403, 404)),
    ("post", "/api/organizations/{org}/invitations/", {"role": "owner"}, (201, 403, 403, 404)),
    ("delete", "/api/organizations/{org}/invitations/{invitation}/", None,
     (204, 204, 403, 404)),
    # A link invitation: whoever holds it (signed in) may read it; members are members already.
    ("get", "/api/invitations/{token}/", None, (200, 200, 200, 200)),
    ("post", "/api/invitations/{token}/accept/", None, (409, 409, 409, 200)),
    ("post", "/api/invitations/{token}/decline/", None, (204, 204, 204, 204)),
]  # fmt: skip


def call(client: Client, method: str, path: str, body: dict | None = None, **headers):
    if method in ("get", "delete"):
        return getattr(client, method)(path, headers=headers)
    return getattr(client, method)(
        path, body or {}, content_type="application/json", headers=headers
    )


@pytest.mark.parametrize(
    ("method", "template", "body", "persona", "expected"),
    [
        (method, template, body, persona, statuses[i])
        for method, template, body, statuses in MATRIX
        for i, persona in enumerate(PERSONAS)
    ],
)
def test_the_permission_matrix(org, people, method, template, body, persona, expected):
    path = template.format(**paths(org, people))
    before = org_state(org)

    response = call(signed_in(people[persona]), method, path, body)

    assert response.status_code == expected, response.content
    if expected >= 400:
        error = response.json()["error"]
        assert error["code"] == {
            400: "last_owner", 403: "permission_denied", 404: "not_found",
            409: "already_member",
        }[expected]  # fmt: skip
        assert org_state(org) == before


@pytest.mark.parametrize(("method", "template", "body", "_"), MATRIX)
def test_every_endpoint_refuses_an_anonymous_caller_with_401(
    client, org, people, method, template, body, _
):
    before = org_state(org)

    response = call(client, method, template.format(**paths(org, people)), body)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert org_state(org) == before


def test_a_personal_access_token_reads_and_writes_as_its_user(client, org, people):
    headers = {"Authorization": f"Bearer {PersonalAccessTokenFactory(user=people['admin']).secret}"}

    listed = client.get("/api/organizations/", headers=headers)
    invited = client.post(
        f"/api/organizations/{org.pk}/invitations/", {}, content_type="application/json",
        headers=headers,
    )  # fmt: skip

    assert listed.status_code == 200
    assert [(o["name"], o["role"]) for o in listed.json()] == [("Acme", "admin")]
    assert invited.status_code == 201
    assert Invitation.objects.get(pk=invited.json()["id"]).invited_by == people["admin"]


# --- organizations -------------------------------------------------------------------------------


def test_the_organization_list_shows_the_role_members_and_the_balance_to_an_owner(
    org, people, owner
):
    credit_grant(wallet=wallet_get_or_create(organization=org), amount_micros=12_500_000,
                 reason="welcome")  # fmt: skip
    other = organization_create(user=owner, name="Zeta")

    response = signed_in(owner).get("/api/organizations/")

    membership = Membership.objects.get(organization=org, user=owner)
    assert response.json() == [
        {
            "id": org.pk,
            "name": "Acme",
            "slug": "acme",
            "time_zone": "Europe/Paris",
            "member_keys_enabled": True,
            "created_at": iso(org.created_at),
            "role": "owner",
            "membership_id": membership.pk,
            "member_count": 4,
            "balance_micros": 12_500_000,
            "balance_usd": "12.500000",
        },
        {
            "id": other.pk,
            "name": "Zeta",
            "slug": "zeta",
            "time_zone": "UTC",
            "member_keys_enabled": True,
            "created_at": iso(other.created_at),
            "role": "owner",
            "membership_id": Membership.objects.get(organization=other).pk,
            "member_count": 1,
            "balance_micros": 0,
            "balance_usd": "0.000000",
        },
    ]


def test_a_member_sees_the_organization_without_its_balance(org, people):
    response = signed_in(people["member"]).get(f"/api/organizations/{org.pk}/")

    body = response.json()
    assert (body["role"], body["member_count"]) == ("member", 4)
    assert (body["balance_micros"], body["balance_usd"]) == (None, None)


def test_an_outsider_lists_no_organization_of_others(org, people, outsider):
    assert signed_in(outsider).get("/api/organizations/").json() == []


def test_creating_an_organization_makes_the_caller_its_owner_with_a_wallet(outsider):
    outsider.time_zone = "Asia/Tokyo"
    outsider.save(update_fields=["time_zone"])

    response = signed_in(outsider).post(
        "/api/organizations/", {"name": "  Tokyo Lab "}, content_type="application/json"
    )

    org = Organization.objects.get(name="Tokyo Lab")
    assert response.status_code == 201
    assert response.json()["id"] == org.pk
    assert (response.json()["role"], response.json()["time_zone"]) == ("owner", "Asia/Tokyo")
    assert list(org.memberships.values_list("user__email", "role")) == [
        ("outsider@example.com", "owner")
    ]
    assert wallet_get_or_create(organization=org).balance_micros == 0


def test_an_unknown_time_zone_is_a_400_on_the_field(org, owner):
    response = signed_in(owner).patch(
        f"/api/organizations/{org.pk}/", {"time_zone": "Mars/Olympus"},
        content_type="application/json",
    )  # fmt: skip

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "time_zone": ["unknown time zone: 'Mars/Olympus'"]
    }
    org.refresh_from_db()
    assert org.time_zone == "Europe/Paris"


def test_an_admin_changes_the_settings_sent_and_only_those(org, people):
    response = signed_in(people["admin"]).patch(
        f"/api/organizations/{org.pk}/",
        {"time_zone": "America/New_York", "member_keys_enabled": False},
        content_type="application/json",
    )

    assert response.status_code == 200
    org.refresh_from_db()
    assert (org.name, org.time_zone, org.member_keys_enabled) == (
        "Acme", "America/New_York", False,
    )  # fmt: skip
    assert response.json()["member_keys_enabled"] is False


# --- members -------------------------------------------------------------------------------------


def test_the_member_list_shows_every_member_in_the_order_they_joined(org, people, owner):
    colleague = Membership.objects.get(user=people["colleague"])
    Membership.objects.filter(pk=colleague.pk).update(
        monthly_allowance_micros=20_000_000, allowance_used_micros=1_250_000
    )

    response = signed_in(owner).get(f"/api/organizations/{org.pk}/members/")

    body = response.json()
    assert (body["count"], body["next"], body["previous"]) == (4, None, None)
    assert [(m["email"], m["role"]) for m in body["results"]] == [
        ("owner@example.com", "owner"),
        ("admin@example.com", "admin"),
        ("member@example.com", "member"),
        ("colleague@example.com", "member"),
    ]
    colleague.refresh_from_db()
    assert body["results"][3] == {
        "id": colleague.pk,
        "user_id": people["colleague"].pk,
        "email": "colleague@example.com",
        "name": "Col",
        "role": "member",
        "joined_at": iso(colleague.created_at),
        "monthly_allowance_micros": 20_000_000,
        "allowance_used_micros": 1_250_000,
        "allowance_period_start": colleague.allowance_period_start.isoformat(),
        "can_create_keys": True,
        "keys_allowed": True,
    }


def test_a_member_sees_the_others_without_their_allowances(org, people):
    Membership.objects.filter(organization=org).update(
        monthly_allowance_micros=9_000_000, allowance_used_micros=3
    )

    body = signed_in(people["member"]).get(f"/api/organizations/{org.pk}/members/").json()

    allowances = {
        m["email"]: (m["monthly_allowance_micros"], m["allowance_used_micros"],
                     m["allowance_period_start"] is not None)
        for m in body["results"]
    }  # fmt: skip
    assert allowances == {
        "owner@example.com": (None, None, False),
        "admin@example.com": (None, None, False),
        "member@example.com": (9_000_000, 3, True),
        "colleague@example.com": (None, None, False),
    }


def test_the_member_list_pages_with_limit_and_offset(org, people, owner):
    body = signed_in(owner).get(f"/api/organizations/{org.pk}/members/?limit=2&offset=2").json()

    assert body["count"] == 4
    assert [m["email"] for m in body["results"]] == [
        "member@example.com", "colleague@example.com",
    ]  # fmt: skip


def test_an_owner_sets_a_role_an_allowance_and_stops_keys_in_one_patch(org, people, owner):
    colleague = Membership.objects.get(user=people["colleague"])

    response = signed_in(owner).patch(
        f"/api/organizations/{org.pk}/members/{colleague.pk}/",
        {"role": "admin", "monthly_allowance_micros": 7_000_000, "can_create_keys": False},
        content_type="application/json",
    )

    assert response.status_code == 200
    colleague.refresh_from_db()
    assert (colleague.role, colleague.monthly_allowance_micros, colleague.can_create_keys) == (
        "admin", 7_000_000, False,
    )  # fmt: skip
    body = response.json()
    assert (body["role"], body["monthly_allowance_micros"], body["can_create_keys"]) == (
        "admin", 7_000_000, False,
    )  # fmt: skip
    # An admin's keys work whatever can_create_keys says.
    assert body["keys_allowed"] is True


def test_a_null_allowance_removes_the_cap(org, people):
    colleague = Membership.objects.get(user=people["colleague"])
    Membership.objects.filter(pk=colleague.pk).update(monthly_allowance_micros=1_000_000)

    response = signed_in(people["admin"]).patch(
        f"/api/organizations/{org.pk}/members/{colleague.pk}/",
        {"monthly_allowance_micros": None}, content_type="application/json",
    )  # fmt: skip

    assert response.status_code == 200
    assert response.json()["monthly_allowance_micros"] is None
    colleague.refresh_from_db()
    assert colleague.monthly_allowance_micros is None


def test_a_negative_allowance_is_a_400_and_changes_nothing(org, people, owner):
    colleague = Membership.objects.get(user=people["colleague"])
    before = org_state(org)

    response = signed_in(owner).patch(
        f"/api/organizations/{org.pk}/members/{colleague.pk}/",
        {"monthly_allowance_micros": -1}, content_type="application/json",
    )  # fmt: skip

    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"monthly_allowance_micros"}
    assert org_state(org) == before


def test_an_admin_may_not_change_a_role_and_nothing_else_of_the_patch_happens(org, people):
    colleague = Membership.objects.get(user=people["colleague"])
    before = org_state(org)

    response = signed_in(people["admin"]).patch(
        f"/api/organizations/{org.pk}/members/{colleague.pk}/",
        {"role": "member", "monthly_allowance_micros": 1},
        content_type="application/json",
    )

    assert response.status_code == 403
    assert response.json()["error"] == {
        "type": "permission_error",
        "code": "permission_denied",
        "message": "Your role (admin) in Acme does not allow this.",
        "fields": {},
    }
    assert org_state(org) == before


def test_the_last_owner_cannot_step_down_or_leave(org, people, owner):
    mine = Membership.objects.get(organization=org, user=owner)
    client = signed_in(owner)
    before = org_state(org)

    demoted = client.patch(
        f"/api/organizations/{org.pk}/members/{mine.pk}/", {"role": "admin"},
        content_type="application/json",
    )  # fmt: skip
    left = client.delete(f"/api/organizations/{org.pk}/members/{mine.pk}/")

    for response in (demoted, left):
        assert response.status_code == 400
        assert response.json()["error"] == {
            "type": "invalid_request",
            "code": "last_owner",
            "message": "An organization needs an owner: make someone else owner first.",
            "fields": {},
        }
    assert org_state(org) == before


def test_an_owner_may_leave_once_there_is_another_owner(org, people, owner):
    colleague = Membership.objects.get(user=people["colleague"])
    mine = Membership.objects.get(organization=org, user=owner)
    client = signed_in(owner)

    promoted = client.patch(
        f"/api/organizations/{org.pk}/members/{colleague.pk}/", {"role": "owner"},
        content_type="application/json",
    )  # fmt: skip
    left = client.delete(f"/api/organizations/{org.pk}/members/{mine.pk}/")

    assert (promoted.status_code, left.status_code) == (200, 204)
    assert not Membership.objects.filter(pk=mine.pk).exists()
    assert client.get(f"/api/organizations/{org.pk}/").status_code == 404


def test_a_member_may_leave_but_not_remove_a_colleague(org, people):
    client = signed_in(people["member"])
    mine = Membership.objects.get(user=people["member"])
    colleague = Membership.objects.get(user=people["colleague"])

    refused = client.delete(f"/api/organizations/{org.pk}/members/{colleague.pk}/")
    left = client.delete(f"/api/organizations/{org.pk}/members/{mine.pk}/")

    assert (refused.status_code, left.status_code) == (403, 204)
    assert set(
        Membership.objects.filter(organization=org).values_list("user__email", flat=True)
    ) == {"owner@example.com", "admin@example.com", "colleague@example.com"}


def test_an_admin_removes_a_member_but_not_another_admin(org, people):
    other_admin = join(org, UserFactory(email="admin2@example.com"), Membership.Role.ADMIN)
    colleague = Membership.objects.get(user=people["colleague"])
    client = signed_in(people["admin"])

    refused = client.delete(f"/api/organizations/{org.pk}/members/{other_admin.pk}/")
    removed = client.delete(f"/api/organizations/{org.pk}/members/{colleague.pk}/")

    assert (refused.status_code, removed.status_code) == (403, 204)
    assert Membership.objects.filter(pk=other_admin.pk).exists()
    assert not Membership.objects.filter(pk=colleague.pk).exists()


def test_removing_a_member_revokes_their_organization_keys_and_only_those(org, people, owner):
    colleague = people["colleague"]
    api_token_create(owner=colleague, organization=org, name="team")
    api_token_create(owner=colleague, name="mine")
    api_token_create(owner=owner, organization=org, name="owner's")
    membership = Membership.objects.get(user=colleague)

    response = signed_in(owner).delete(f"/api/organizations/{org.pk}/members/{membership.pk}/")

    assert response.status_code == 204
    statuses = dict(ApiToken.objects.values_list("name", "status"))
    assert statuses == {"team": "revoked", "mine": "enabled", "owner's": "enabled"}
    assert not Membership.objects.filter(pk=membership.pk).exists()


def test_another_organizations_member_is_a_404(org, people, owner, outsider):
    elsewhere = organization_create(user=outsider, name="Elsewhere")
    theirs = Membership.objects.get(organization=elsewhere)
    before = org_state(org)

    response = signed_in(owner).patch(
        f"/api/organizations/{org.pk}/members/{theirs.pk}/", {"role": "member"},
        content_type="application/json",
    )  # fmt: skip

    assert response.status_code == 404
    assert org_state(org) == before


# --- invitations: the organization's side --------------------------------------------------------


def test_a_link_invitation_answers_with_its_url_and_lists_with_it_while_pending(org, people, owner):
    client = signed_in(owner)

    created = client.post(
        f"/api/organizations/{org.pk}/invitations/", {"role": "admin"},
        content_type="application/json",
    )  # fmt: skip

    invitation = Invitation.objects.get(pk=created.json()["id"])
    url = f"{settings.SITE_URL}/organization/invitations/{invitation_token(invitation)}/"
    assert created.status_code == 201
    assert created.json() == {
        "id": invitation.pk,
        "kind": "link",
        "email": "",
        "role": "admin",
        "state": "pending",
        "created_at": iso(invitation.created_at),
        "expires_at": iso(invitation.created_at + timedelta(days=7)),
        "invited_by": "owner@example.com",
        "accepted_by": None,
        "accepted_at": None,
        "declined_at": None,
        "revoked_at": None,
        "url": url,
    }
    listed = client.get(f"/api/organizations/{org.pk}/invitations/").json()
    assert listed["count"] == 2
    assert listed["results"][0] == created.json()


def test_an_email_invitation_is_emailed_and_its_link_is_not_in_the_answer(
    org, people, owner, django_capture_on_commit_callbacks
):
    from tokenbyte.celery import app

    previous, app.conf.task_always_eager = app.conf.task_always_eager, True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = signed_in(people["admin"]).post(
                f"/api/organizations/{org.pk}/invitations/",
                {"email": " New@Example.com "}, content_type="application/json",
            )  # fmt: skip
    finally:
        app.conf.task_always_eager = previous

    invitation = Invitation.objects.get(pk=response.json()["id"])
    body = response.json()
    assert (body["kind"], body["email"], body["role"], body["url"]) == (
        "email", "new@example.com", "member", None,
    )  # fmt: skip
    assert [(m.to, invitation_token(invitation) in m.body) for m in mail.outbox] == [
        (["new@example.com"], True)
    ]


def test_inviting_a_member_again_is_a_409(org, people, owner):
    response = signed_in(owner).post(
        f"/api/organizations/{org.pk}/invitations/", {"email": "member@example.com"},
        content_type="application/json",
    )  # fmt: skip

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "already_member"
    assert response.json()["error"]["fields"] == {
        "email": ["member@example.com is already a member of Acme."]
    }


def test_an_admin_may_not_invite_an_admin_the_answer_names_the_role_field(org, people):
    response = signed_in(people["admin"]).post(
        f"/api/organizations/{org.pk}/invitations/", {"role": "admin"},
        content_type="application/json",
    )  # fmt: skip

    assert response.json()["error"] == {
        "type": "permission_error",
        "code": "permission_denied",
        "message": "Only an owner can invite or make someone admin.",
        "fields": {"role": ["Only an owner can invite or make someone admin."]},
    }


def test_a_revoked_invitation_lists_as_revoked_and_its_link_stops(org, people, owner):
    invitation = people["invitation"]
    client = signed_in(owner)

    revoked = client.delete(f"/api/organizations/{org.pk}/invitations/{invitation.pk}/")
    again = client.delete(f"/api/organizations/{org.pk}/invitations/{invitation.pk}/")

    assert (revoked.status_code, again.status_code) == (204, 204)
    listed = client.get(f"/api/organizations/{org.pk}/invitations/").json()["results"]
    assert [(i["state"], i["url"]) for i in listed] == [("revoked", None)]
    opened = signed_in(people["outsider"]).get(f"/api/invitations/{invitation_token(invitation)}/")
    assert opened.status_code == 410


def test_revoking_an_accepted_invitation_is_a_409(org, people, owner, outsider):
    invitation = people["invitation"]
    signed_in(outsider).post(f"/api/invitations/{invitation_token(invitation)}/accept/")

    response = signed_in(owner).delete(f"/api/organizations/{org.pk}/invitations/{invitation.pk}/")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invitation_accepted"


def test_another_organizations_invitation_is_a_404(org, people, owner, outsider):
    elsewhere = organization_create(user=outsider, name="Elsewhere")
    theirs = invitation_create(scope=owner_scope(elsewhere))

    response = signed_in(owner).delete(f"/api/organizations/{org.pk}/invitations/{theirs.pk}/")

    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


# --- invitations: the invitee's side -------------------------------------------------------------


def test_an_invitee_reads_what_the_invitation_is(org, people, outsider):
    invitation = invitation_create(
        scope=owner_scope(org), email="outsider@example.com", role="admin"
    )

    response = signed_in(outsider).get(f"/api/invitations/{invitation_token(invitation)}/")

    assert response.json() == {
        "organization_id": org.pk,
        "organization_name": "Acme",
        "role": "admin",
        "state": "pending",
        "email": "outsider@example.com",
        "invited_by": "owner@example.com",
        "expires_at": iso(invitation.expires_at),
        "for_you": True,
    }


def test_accepting_a_link_joins_as_its_role_and_answers_with_the_organization(
    org, people, outsider
):
    token = invitation_token(people["invitation"])

    response = signed_in(outsider).post(f"/api/invitations/{token}/accept/")

    membership = Membership.objects.get(organization=org, user=outsider)
    assert response.status_code == 200
    assert (response.json()["id"], response.json()["role"]) == (org.pk, "member")
    assert (response.json()["membership_id"], response.json()["member_count"]) == (
        membership.pk, 5,
    )  # fmt: skip
    invitation = Invitation.objects.get(pk=people["invitation"].pk)
    assert (invitation.accepted_by, invitation.accepted_at is not None) == (outsider, True)


def test_a_used_link_is_refused_to_the_next_person_with_410(org, people, outsider):
    token = invitation_token(people["invitation"])
    signed_in(outsider).post(f"/api/invitations/{token}/accept/")
    late = UserFactory(email="late@example.com")
    client = signed_in(late)

    answers = [
        client.get(f"/api/invitations/{token}/"),
        client.post(f"/api/invitations/{token}/accept/"),
        client.post(f"/api/invitations/{token}/decline/"),
    ]

    assert [(r.status_code, r.json()["error"]["type"], r.json()["error"]["code"])
            for r in answers] == [(410, "gone", "invitation_accepted")] * 3  # fmt: skip
    assert answers[1].json()["error"]["message"] == (
        "This invitation is accepted: ask for a new one."
    )
    assert not Membership.objects.filter(user=late).exists()


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"expires_at": timezone.now() - timedelta(seconds=1)}, "invitation_expired"),
        ({"revoked_at": timezone.now()}, "invitation_revoked"),
        ({"declined_at": timezone.now()}, "invitation_declined"),
    ],
)
def test_an_expired_revoked_or_declined_invitation_is_refused_with_410(
    org, people, outsider, change, code
):
    invitation = people["invitation"]
    Invitation.objects.filter(pk=invitation.pk).update(**change)
    token = invitation_token(invitation)
    client = signed_in(outsider)
    before = org_state(org)

    answers = [
        client.get(f"/api/invitations/{token}/").status_code,
        client.post(f"/api/invitations/{token}/accept/").json()["error"]["code"],
        client.post(f"/api/invitations/{token}/decline/").status_code,
    ]

    assert answers == [410, code, 410]
    assert org_state(org) == before


def test_an_unknown_invitation_token_is_a_404(outsider):
    client = signed_in(outsider)

    answers = [
        client.get("/api/invitations/inv_0000/").status_code,
        client.post("/api/invitations/nonsense/accept/").status_code,
        client.post("/api/invitations/inv_0000/decline/").status_code,
    ]

    assert answers == [404, 404, 404]


def test_an_email_invitation_is_only_for_its_address(org, people, outsider):
    invitation = invitation_create(scope=owner_scope(org), email="someone@example.com")
    token = invitation_token(invitation)
    client = signed_in(outsider)
    before = org_state(org)

    read = client.get(f"/api/invitations/{token}/")
    accepted = client.post(f"/api/invitations/{token}/accept/")
    declined = client.post(f"/api/invitations/{token}/decline/")

    assert read.json()["for_you"] is False
    assert (accepted.status_code, declined.status_code) == (403, 403)
    assert accepted.json()["error"] == {
        "type": "permission_error",
        "code": "invitation_other_email",
        "message": "This invitation is for someone@example.com; you are signed in as "
        "outsider@example.com.",
        "fields": {},
    }
    assert org_state(org) == before


def test_declining_ends_the_invitation(org, people, outsider):
    token = invitation_token(people["invitation"])

    response = signed_in(outsider).post(f"/api/invitations/{token}/decline/")

    assert response.status_code == 204
    invitation = Invitation.objects.get(pk=people["invitation"].pk)
    assert invitation.declined_at is not None
    assert not Membership.objects.filter(user=outsider).exists()
