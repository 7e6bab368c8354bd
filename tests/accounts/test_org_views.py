"""The organization pages: the permission matrix over owner / admin / member / outsider on every
view, the scope switcher, the members' and invitations' actions, and the invitation page an
invitee opens (signed in or not, sign-up on the way included)."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from allauth.account.models import EmailAddress
from django.contrib.messages import get_messages
from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts.adapters import INVITATION_SESSION_KEY, AccountAdapter
from accounts.models import ApiToken, Invitation, Membership, Organization, User
from accounts.scope import SESSION_KEY, Scope, membership_for
from accounts.selectors import scope_choices_for_user
from accounts.services import (
    invitation_accept,
    invitation_create,
    invitation_decline,
    invitation_revoke,
    invitation_token,
    organization_create,
)
from billing.models import Wallet
from billing.services import credit_grant, wallet_get_or_create
from tests.factories import ApiTokenFactory, MembershipFactory, UserFactory
from tests.organizations import console, new_member

pytestmark = pytest.mark.django_db
ROLES = ("owner", "admin", "member", "outsider")


@pytest.fixture
def eager_tasks():
    """Run queued Celery tasks in-process (the invitation email)."""
    from tokenbyte.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture
def org(owner):
    return organization_create(user=owner, name="Acme Research", time_zone="Europe/Paris")


def scope_of(user, org) -> Scope:
    return Scope(user=user, membership=membership_for(user=user, organization_id=org.pk))


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- the permission matrix ----------------------------------------------------------------------

# (what, method, path, data, expected status for owner, admin, member, outsider). Paths name
# {org}, {target} (a member), {other_admin}, {invitation} (a pending link) and {token} (its).
MATRIX = [
    ("organization page", "get", "/organization/", {}, (200, 200, 200, 200)),
    ("switch", "post", "/organization/switch/", {"organization": "{org}"}, (302, 302, 302, 404)),
    ("create", "post", "/organization/create/", {"name": "New", "time_zone": "UTC"}, (302,) * 4),
    (
        "settings",
        "post",
        "/organization/settings/",
        {"name": "Acme Labs", "time_zone": "UTC", "member_keys_enabled": "on"},
        (302, 302, 403, 404),
    ),
    ("member page", "get", "/organization/members/{target}/", {}, (200, 200, 403, 404)),
    (
        "member role",
        "post",
        "/organization/members/{target}/role/",
        {"role": "admin"},
        (302, 403, 403, 404),
    ),
    (
        "member allowance",
        "post",
        "/organization/members/{target}/allowance/",
        {"allowance_usd": "5"},
        (302, 302, 403, 404),
    ),
    (
        "member keys",
        "post",
        "/organization/members/{target}/keys/",
        {"can_create_keys": "no"},
        (302, 302, 403, 404),
    ),
    ("remove page", "get", "/organization/members/{target}/remove/", {}, (200, 200, 403, 404)),
    ("remove member", "post", "/organization/members/{target}/remove/", {}, (302, 302, 403, 404)),
    (
        "remove admin",
        "post",
        "/organization/members/{other_admin}/remove/",
        {},
        (302, 403, 403, 404),
    ),
    (
        "invite by email",
        "post",
        "/organization/invitations/",
        {"kind": "email", "email-email": "new@example.com", "email-role": "member"},
        (302, 302, 403, 404),
    ),
    (
        "invite by link",
        "post",
        "/organization/invitations/",
        {"kind": "link", "link-role": "member"},
        (302, 302, 403, 404),
    ),
    (
        "invite an admin",
        "post",
        "/organization/invitations/",
        {"kind": "link", "link-role": "admin"},
        (302, 400, 403, 404),
    ),
    (
        "revoke invitation",
        "post",
        "/organization/invitations/{invitation}/revoke/",
        {},
        (302, 302, 403, 404),
    ),
    ("invitation page", "get", "/organization/invitations/{token}/", {}, (200, 200, 200, 200)),
    ("accept", "post", "/organization/invitations/{token}/accept/", {}, (302,) * 4),
    ("decline", "post", "/organization/invitations/{token}/decline/", {}, (302,) * 4),
]


@pytest.mark.parametrize(
    ("what", "method", "path", "data", "role", "expected"),
    [
        pytest.param(what, method, path, data, role, status, id=f"{what}-{role}")
        for what, method, path, data, statuses in MATRIX
        for role, status in zip(ROLES, statuses, strict=True)
    ],
)
def test_the_permission_matrix(
    what, method, path, data, role, expected, org, owner, admin, member, outsider
):
    target = new_member(org, "target@example.com")
    other_admin = new_member(org, "admin2@example.com", "admin")
    invitation = invitation_create(scope=scope_of(owner, org), role="member")
    ids = {
        "org": org.pk,
        "target": Membership.objects.get(user=target).pk,
        "other_admin": Membership.objects.get(user=other_admin).pk,
        "invitation": invitation.pk,
        "token": invitation_token(invitation),
    }
    user = {"owner": owner, "admin": admin, "member": member, "outsider": outsider}[role]
    client = console(user, org if role != "outsider" else None)
    if role == "outsider":
        # Even a session naming the organization (stale or forged) gives an outsider nothing.
        session = client.session
        session[SESSION_KEY] = org.pk
        session.save()
    data = {key: str(value).format(**ids) for key, value in data.items()}

    response = getattr(client, method)(path.format(**ids), data)

    assert response.status_code == expected, response.content.decode()[:2000]


def test_a_managers_action_on_another_organizations_member_is_a_404(org, owner, member):
    other = organization_create(user=owner, name="Other")
    stranger = new_member(other, "stranger@example.com")
    theirs = Membership.objects.get(user=stranger)
    invitation = invitation_create(scope=scope_of(owner, other))
    client = console(owner, org)

    responses = [
        client.get(f"/organization/members/{theirs.pk}/"),
        client.post(f"/organization/members/{theirs.pk}/allowance/", {"allowance_usd": "1"}),
        client.post(f"/organization/members/{theirs.pk}/remove/"),
        client.post(f"/organization/invitations/{invitation.pk}/revoke/"),
    ]

    assert [r.status_code for r in responses] == [404, 404, 404, 404]
    theirs.refresh_from_db()
    assert theirs.monthly_allowance_micros is None
    assert Invitation.objects.get(pk=invitation.pk).revoked_at is None


def test_an_owner_in_personal_scope_has_no_organization_pages(org, owner, member):
    client = console(owner)
    target = Membership.objects.get(user=member)

    responses = [
        client.post("/organization/settings/", {"name": "X", "time_zone": "UTC"}),
        client.get(f"/organization/members/{target.pk}/"),
        client.post("/organization/invitations/", {"kind": "link", "link-role": "member"}),
    ]

    assert [r.status_code for r in responses] == [404, 404, 404]
    assert Organization.objects.get(pk=org.pk).name == "Acme Research"
    assert Invitation.objects.count() == 0


def test_a_member_is_shown_why_an_action_is_refused(org, member, admin):
    client = console(member, org)

    response = client.post("/organization/settings/", {"name": "Mine now", "time_zone": "UTC"})

    assert response.status_code == 403
    assert "Your role (member) in Acme Research does not allow this." in response.content.decode()
    assert Organization.objects.get(pk=org.pk).name == "Acme Research"


# --- the switcher and the header ---------------------------------------------------------------


def test_the_switcher_lists_personal_and_each_organization_with_the_role(org, owner):
    other = organization_create(user=UserFactory(email="boss@example.com"), name="Beta Labs")
    MembershipFactory(organization=other, user=owner, role="member")
    client = console(owner, org)

    content = client.get("/organization/").content.decode()

    switcher = content.split('class="switcher"')[1].split("</details>")[0]
    options = re.findall(
        r'<button type="submit" name="organization" value="(\d*)"( aria-current="true")?>'
        r'<span class="switcher-option-name">([^<]+)</span> '
        r'<span class="switcher-option-role">([^<]+)</span>',
        switcher,
    )
    assert options == [
        ("", "", "Personal", "Your own account"),
        (str(org.pk), ' aria-current="true"', "Acme Research", "Owner"),
        (str(other.pk), "", "Beta Labs", "Member"),
    ]
    assert '<span class="switcher-name">Acme Research</span>' in switcher
    assert '<input type="hidden" name="next" value="/organization/">' in switcher


def test_the_navigation_has_organization_before_profile(owner_client):
    content = owner_client.get("/organization/").content.decode()

    nav = content.split('<ul class="nav-links">')[1].split("</ul>")[0]
    labels = re.findall(r">([A-Za-z]+)</a></li>", nav)
    assert labels[-2:] == ["Organization", "Profile"]
    assert '<a href="/organization/" aria-current="page">Organization</a>' in nav


def test_the_headers_balance_is_the_scopes_wallet(org, owner):
    credit_grant(wallet=wallet_get_or_create(user=owner), amount_micros=1_000_000, reason="t")
    credit_grant(wallet=Wallet.objects.get(organization=org), amount_micros=12_500_000, reason="t")
    client = console(owner)

    personal = client.get("/organization/").content.decode()
    client.post("/organization/switch/", {"organization": org.pk})
    in_org = client.get("/organization/").content.decode()

    balance = re.compile(
        r'class="account-balance"[^>]*><span class="visually-hidden">Balance </span>([^<]+)</a>'
    )
    assert balance.search(personal).group(1) == "$1.00"
    assert balance.search(in_org).group(1) == "$12.50"


def test_the_switcher_and_the_balance_cost_one_query(org, owner, django_assert_num_queries):
    credit_grant(wallet=wallet_get_or_create(user=owner), amount_micros=2_000_000, reason="t")
    credit_grant(wallet=Wallet.objects.get(organization=org), amount_micros=7_000_000, reason="t")
    other = organization_create(user=UserFactory(email="boss@example.com"), name="alpha labs")
    MembershipFactory(organization=other, user=owner, role="admin")

    with django_assert_num_queries(1):
        choices = scope_choices_for_user(user=owner)

    assert [(c.organization_id, c.name, c.role_label, c.balance_micros) for c in choices] == [
        (None, "Personal", "", 2_000_000),
        (org.pk, "Acme Research", "Owner", 7_000_000),
        (other.pk, "alpha labs", "Admin", 0),
    ]


@pytest.mark.parametrize(
    ("next_url", "expected"),
    [
        ("/logs/?model=gpt-4o", "/logs/?model=gpt-4o"),
        ("https://evil.example.com/", "/dashboard/"),
        ("//evil.example.com/", "/dashboard/"),
        ("/\\evil.example.com/", "/dashboard/"),
        ("dashboard", "/dashboard/"),
        ("", "/dashboard/"),
    ],
)
def test_switching_keeps_a_local_next_only(org, owner, next_url, expected):
    client = console(owner)

    response = client.post("/organization/switch/", {"organization": org.pk, "next": next_url})

    assert (response.status_code, response["Location"]) == (302, expected)
    assert client.session[SESSION_KEY] == org.pk
    assert messages_of(response) == ["You are working in Acme Research."]


def test_switching_back_to_personal_and_to_a_non_member_organization(org, owner, outsider):
    theirs = organization_create(user=outsider, name="Not yours")
    client = console(owner, org)

    personal = client.post("/organization/switch/", {"organization": ""})
    assert SESSION_KEY not in client.session
    assert messages_of(personal) == ["You are working in your personal account."]
    assert client.post("/organization/switch/", {"organization": theirs.pk}).status_code == 404
    assert client.post("/organization/switch/", {"organization": "acme"}).status_code == 404
    assert client.get("/organization/switch/").status_code == 405
    assert SESSION_KEY not in client.session


# --- personal scope: the list, creating, invitations for the user ------------------------------


def test_the_personal_page_lists_the_users_organizations_and_invitations(org, owner, outsider):
    new_member(org, "member@example.com")
    credit_grant(wallet=Wallet.objects.get(organization=org), amount_micros=3_000_000, reason="t")
    other = organization_create(user=outsider, name="Beta Labs")
    invitation = invitation_create(scope=scope_of(outsider, other), email="OWNER@example.com")
    client = console(owner)

    response = client.get("/organization/")

    assert response.status_code == 200
    assert [m.organization.name for m in response.context["memberships"]] == ["Acme Research"]
    content = response.content.decode()
    row = content.split(f'id="organization-{org.pk}"')[1].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert [re.sub(r"<[^>]+>", "", c).strip() for c in cells[:4]] == [
        "Acme Research", "Owner", "2", "$3.00",
    ]  # fmt: skip
    token = invitation_token(invitation)
    received = content.split(f'id="received-{invitation.pk}"')[1].split("</li>")[0]
    assert "<strong>Beta Labs</strong> invites you to join as <strong>member</strong>" in received
    assert f'action="/organization/invitations/{token}/accept/"' in received
    assert f'action="/organization/invitations/{token}/decline/"' in received
    assert "Not yours" not in content


def test_an_invitation_for_an_organization_the_user_is_in_is_not_offered(org, owner, admin):
    invitation = Invitation.objects.create(
        organization=org, email="admin@example.com", token_digest="x" * 64,
        expires_at=timezone.now() + timedelta(days=1),
    )  # fmt: skip

    response = console(admin).get("/organization/")

    assert response.context["invitations"] == []
    assert f'id="received-{invitation.pk}"' not in response.content.decode()


def test_creating_an_organization_makes_the_user_its_owner_and_works_in_it(owner):
    client = console(owner)

    response = client.post(
        "/organization/create/", {"name": "Gamma Works", "time_zone": "America/New_York"}
    )

    org = Organization.objects.get(name="Gamma Works")
    assert (response.status_code, response["Location"]) == (302, "/organization/")
    assert org.time_zone == "America/New_York"
    assert Membership.objects.get(organization=org).user == owner
    assert Wallet.objects.get(organization=org).balance_micros == 0
    assert client.session[SESSION_KEY] == org.pk
    page = client.get("/organization/")
    assert page.context["organization"] == org
    assert "<h1>Gamma Works</h1>" in page.content.decode()


def test_the_create_form_defaults_to_the_users_time_zone_and_shows_errors(owner):
    owner.time_zone = "Asia/Tokyo"
    owner.save(update_fields=["time_zone"])
    client = console(owner)

    form = client.get("/organization/").context["create_form"]
    response = client.post("/organization/create/", {"name": " ", "time_zone": "Mars/Olympus"})

    assert form["time_zone"].value() == "Asia/Tokyo"
    assert response.status_code == 400
    assert set(response.context["create_form"].errors) == {"name", "time_zone"}
    assert Organization.objects.count() == 0


# --- the organization page ----------------------------------------------------------------------


def test_the_owner_sees_members_with_allowances_and_every_control(org, owner, admin):
    new_member(
        org,
        "capped@example.com",
        monthly_allowance_micros=20_000_000,
        allowance_used_micros=4_250_000,
    )
    new_member(org, "stopped@example.com", can_create_keys=False)
    client = console(owner, org)

    response = client.get("/organization/")

    content = response.content.decode()
    rows = {}
    for membership in Membership.objects.filter(organization=org).select_related("user"):
        row = content.split(f'id="member-{membership.pk}"')[1].split("</tr>")[0]
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        rows[membership.user.email] = [
            re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", c)).strip() for c in cells
        ]
    joined = timezone.now().strftime("%Y-%m-%d")
    assert rows["capped@example.com"][1:6] == [
        "Member",
        joined,
        "$20.00",
        "$4.25 of $20.00",
        "Allowed",
    ]
    assert rows["stopped@example.com"][1:6] == ["Member", joined, "No cap", "$0.00", "Stopped"]
    assert rows["owner@example.com"][0] == "owner@example.com You"
    assert rows["owner@example.com"][6] == "Manage Leave"
    assert rows["admin@example.com"][6] == "Manage Remove"
    assert 'href="/usage/?by=member"' in content
    assert 'id="invitations"' in content and 'id="settings"' in content
    assert '<dd><a href="/wallet/">$0.00</a></dd>' in content


def test_a_member_sees_the_table_but_only_leave(org, owner, member):
    new_member(org, "other@example.com")
    client = console(member, org)

    response = client.get("/organization/")

    content = response.content.decode()
    assert response.status_code == 200
    assert len(response.context["members"]) == 3
    assert "Manage" not in content
    assert "Remove" not in content
    own = Membership.objects.get(user=member)
    assert f'href="/organization/members/{own.pk}/remove/">Leave</a>' in content
    assert content.count(">Leave</a>") == 1
    assert 'id="invitations"' not in content and 'id="settings"' not in content
    assert "/usage/?by=member" not in content


def test_an_admin_may_remove_members_but_not_owners_or_admins(org, owner, admin, member):
    new_member(org, "admin2@example.com", "admin")
    content = console(admin, org).get("/organization/").content.decode()

    def actions(user_email):
        membership = Membership.objects.get(user__email=user_email)
        row = content.split(f'id="member-{membership.pk}"')[1].split("</tr>")[0]
        return re.findall(r">(Manage|Remove|Leave)</a>", row)

    assert actions("owner@example.com") == ["Manage"]
    assert actions("admin2@example.com") == ["Manage"]
    assert actions("member@example.com") == ["Manage", "Remove"]
    assert actions("admin@example.com") == ["Manage", "Leave"]


def test_an_owner_saves_the_settings(org, owner):
    client = console(owner, org)

    response = client.post(
        "/organization/settings/", {"name": "Acme Labs", "time_zone": "Asia/Tokyo"}
    )

    org.refresh_from_db()
    assert (response.status_code, response["Location"]) == (302, "/organization/")
    assert (org.name, org.time_zone, org.member_keys_enabled) == ("Acme Labs", "Asia/Tokyo", False)
    assert messages_of(response) == ["The settings of Acme Labs are saved."]


def test_invalid_settings_are_shown_in_the_form(org, owner):
    response = console(owner, org).post(
        "/organization/settings/", {"name": "", "time_zone": "Nowhere", "member_keys_enabled": "on"}
    )

    assert response.status_code == 400
    assert set(response.context["settings_form"].errors) == {"name", "time_zone"}
    assert Organization.objects.get(pk=org.pk).name == "Acme Research"


# --- members ------------------------------------------------------------------------------------


def test_an_owner_sets_an_allowance_in_usd_and_clears_it(org, owner, member):
    target = Membership.objects.get(user=member)
    client = console(owner, org)

    response = client.post(
        f"/organization/members/{target.pk}/allowance/", {"allowance_usd": "12.5"}
    )
    target.refresh_from_db()
    assert target.monthly_allowance_micros == 12_500_000
    assert (response.status_code, response["Location"]) == (
        302,
        f"/organization/members/{target.pk}/",
    )
    page = client.get(f"/organization/members/{target.pk}/").content.decode()
    assert 'name="allowance_usd" value="12.5"' in page

    client.post(f"/organization/members/{target.pk}/allowance/", {"allowance_usd": ""})
    target.refresh_from_db()
    assert target.monthly_allowance_micros is None


@pytest.mark.parametrize("value", ["-1", "0.0000001", "lots"])
def test_a_wrong_allowance_is_a_form_error(org, owner, member, value):
    target = Membership.objects.get(user=member)

    response = console(owner, org).post(
        f"/organization/members/{target.pk}/allowance/", {"allowance_usd": value}
    )

    assert response.status_code == 400
    assert list(response.context["allowance_form"].errors) == ["allowance_usd"]
    target.refresh_from_db()
    assert target.monthly_allowance_micros is None


def test_an_admin_stops_and_allows_a_members_keys(org, admin, member):
    target = Membership.objects.get(user=member)
    client = console(admin, org)

    stopped = client.post(f"/organization/members/{target.pk}/keys/", {"can_create_keys": "no"})
    target.refresh_from_db()
    assert target.can_create_keys is False
    assert messages_of(stopped) == [
        "The keys of member@example.com are stopped: the relay refuses them."
    ]

    client.post(f"/organization/members/{target.pk}/keys/", {"can_create_keys": "yes"})
    target.refresh_from_db()
    assert target.can_create_keys is True


def test_an_owner_changes_a_role_and_the_last_owner_cannot_step_down(org, owner, member):
    target = Membership.objects.get(user=member)
    own = Membership.objects.get(user=owner)
    client = console(owner, org)

    promoted = client.post(f"/organization/members/{target.pk}/role/", {"role": "admin"})
    refused = client.post(f"/organization/members/{own.pk}/role/", {"role": "member"})

    assert messages_of(promoted) == ["member@example.com is now admin."]
    assert refused.status_code == 400
    assert refused.context["role_form"].non_field_errors() == [
        "An organization needs an owner: make someone else owner first."
    ]
    assert dict(Membership.objects.filter(organization=org).values_list("user__email", "role")) == {
        "owner@example.com": "owner", "member@example.com": "admin",
    }  # fmt: skip


def test_an_owner_who_steps_down_goes_back_to_the_organization_page(org, owner):
    new_member(org, "second@example.com", "owner")
    own = Membership.objects.get(user=owner)
    client = console(owner, org)

    response = client.post(f"/organization/members/{own.pk}/role/", {"role": "member"})

    assert (response.status_code, response["Location"]) == (302, "/organization/")
    assert Membership.objects.get(pk=own.pk).role == "member"


def test_the_member_page_shows_only_the_controls_of_the_role(org, owner, admin, member):
    target = Membership.objects.get(user=member)

    as_owner = console(owner, org).get(f"/organization/members/{target.pk}/").content.decode()
    as_admin = console(admin, org).get(f"/organization/members/{target.pk}/").content.decode()

    for content in (as_owner, as_admin):
        assert f'action="/organization/members/{target.pk}/allowance/"' in content
        assert f'action="/organization/members/{target.pk}/keys/"' in content
        assert f'href="/organization/members/{target.pk}/remove/"' in content
    assert f'action="/organization/members/{target.pk}/role/"' in as_owner
    assert f'action="/organization/members/{target.pk}/role/"' not in as_admin


def test_removing_a_member_confirms_then_revokes_their_organization_keys(org, owner, member):
    target = Membership.objects.get(user=member)
    org_key = ApiTokenFactory(owner=member, organization=org)
    personal_key = ApiTokenFactory(owner=member)
    client = console(owner, org)

    confirm = client.get(f"/organization/members/{target.pk}/remove/")
    assert "Remove member@example.com from Acme Research?" in confirm.content.decode()
    assert Membership.objects.filter(pk=target.pk).exists()

    response = client.post(f"/organization/members/{target.pk}/remove/")

    assert (response.status_code, response["Location"]) == (302, "/organization/")
    assert messages_of(response) == [
        "member@example.com is removed from Acme Research (1 organization key revoked)."
    ]
    assert not Membership.objects.filter(pk=target.pk).exists()
    assert ApiToken.objects.get(pk=org_key.pk).status == "revoked"
    assert ApiToken.objects.get(pk=personal_key.pk).status == "enabled"


def test_a_member_leaves_and_works_in_the_personal_account_again(org, member):
    own = Membership.objects.get(user=member)
    client = console(member, org)

    assert (
        "Leave Acme Research?"
        in client.get(f"/organization/members/{own.pk}/remove/").content.decode()
    )
    response = client.post(f"/organization/members/{own.pk}/remove/")

    assert messages_of(response) == ["You left Acme Research (0 organization keys revoked)."]
    assert SESSION_KEY not in client.session
    assert not Membership.objects.filter(pk=own.pk).exists()
    assert client.get("/organization/").context.get("organization") is None


def test_the_last_owner_cannot_leave(org, owner):
    own = Membership.objects.get(user=owner)
    client = console(owner, org)

    response = client.post(f"/organization/members/{own.pk}/remove/")

    assert messages_of(response) == [
        "An organization needs an owner: make someone else owner first."
    ]
    assert Membership.objects.filter(pk=own.pk).exists()
    assert client.session[SESSION_KEY] == org.pk


def test_a_removed_members_next_page_falls_back_to_personal(org, owner, member):
    client = console(member, org)
    console(owner, org).post(
        f"/organization/members/{Membership.objects.get(user=member).pk}/remove/"
    )

    response = client.get("/organization/")

    assert response.context.get("organization") is None
    assert SESSION_KEY not in client.session


# --- invitations from the organization's side ---------------------------------------------------


@pytest.mark.usefixtures("eager_tasks")
def test_an_invitation_by_email_is_sent_and_listed(
    org, owner, settings, django_capture_on_commit_callbacks
):
    settings.SITE_URL = "https://console.example.com"
    client = console(owner, org)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/organization/invitations/",
            {"kind": "email", "email-email": "New.Person@Example.com", "email-role": "admin"},
        )

    invitation = Invitation.objects.get()
    assert (invitation.email, invitation.role, invitation.invited_by) == (
        "new.person@example.com",
        "admin",
        owner,
    )
    assert (response.status_code, response["Location"]) == (302, "/organization/#invitations")
    assert messages_of(response) == ["An invitation is on its way to new.person@example.com."]
    (message,) = mail.outbox
    assert message.to == ["new.person@example.com"]
    assert (
        f"https://console.example.com/organization/invitations/{invitation_token(invitation)}/"
        in message.body
    )
    page = client.get("/organization/")
    row = page.content.decode().split(f'id="invitation-{invitation.pk}"')[1].split("</tr>")[0]
    assert "new.person@example.com" in row and "Pending" in row and "Revoke" in row
    # An emailed link is its addressee's: the page never shows it.
    assert invitation_token(invitation) not in page.content.decode()


def test_an_email_invitation_needs_an_address(org, owner):
    response = console(owner, org).post(
        "/organization/invitations/", {"kind": "email", "email-email": "", "email-role": "member"}
    )

    assert response.status_code == 400
    assert list(response.context["email_form"].errors) == ["email"]
    assert Invitation.objects.count() == 0


def test_inviting_a_member_again_is_a_form_error(org, owner, member):
    response = console(owner, org).post(
        "/organization/invitations/",
        {"kind": "email", "email-email": "member@example.com", "email-role": "member"},
    )

    assert response.status_code == 400
    assert response.context["email_form"].errors == {
        "email": ["member@example.com is already a member of Acme Research."]
    }


def test_a_link_is_shown_to_copy_and_can_be_shown_again(org, owner, settings):
    settings.SITE_URL = "https://console.example.com"
    client = console(owner, org)

    response = client.post("/organization/invitations/", {"kind": "link", "link-role": "member"})

    invitation = Invitation.objects.get()
    url = f"https://console.example.com/organization/invitations/{invitation_token(invitation)}/"
    assert invitation.email == ""
    assert response["Location"] == f"/organization/?link={invitation.pk}#new-link"
    shown = client.get(response["Location"])
    content = shown.content.decode()
    card = content.split('id="new-link"')[1].split("</div>\n  <div")[0]
    assert f'value="{url}"' in card
    assert shown["Cache-Control"] == "no-store"
    # Later, the list still has it while it is pending.
    again = client.get("/organization/").content.decode()
    assert 'id="new-link"' not in again
    row = again.split(f'id="invitation-{invitation.pk}"')[1].split("</tr>")[0]
    assert "Anyone with the link" in row and f'value="{url}"' in row


def test_the_list_shows_each_state_with_times_in_the_users_zone(org, owner):
    owner.time_zone = "Asia/Tokyo"
    owner.save(update_fields=["time_zone"])
    scope = scope_of(owner, org)
    pending = invitation_create(scope=scope, email="pending@example.com")
    accepted = invitation_create(scope=scope)
    invitation_accept(invitation=accepted, user=UserFactory(email="joined@example.com"))
    declined = invitation_create(scope=scope, email="declined@example.com")
    invitation_decline(invitation=declined, user=UserFactory(email="declined@example.com"))
    revoked = invitation_create(scope=scope, email="revoked@example.com")
    invitation_revoke(scope=scope, invitation=revoked)
    expired = invitation_create(scope=scope, email="expired@example.com")
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    Invitation.objects.filter(pk=pending.pk).update(
        expires_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    )

    response = console(owner, org).get("/organization/")

    states = {inv.pk: inv.state for inv in response.context["invitations"]}
    assert states == {
        pending.pk: "pending", accepted.pk: "accepted", declined.pk: "declined",
        revoked.pk: "revoked", expired.pk: "expired",
    }  # fmt: skip
    assert response.context["invitations"][0].pk == pending.pk
    content = response.content.decode()
    row = content.split(f'id="invitation-{pending.pk}"')[1].split("</tr>")[0]
    assert "2030-01-02 12:04:05" in row
    accepted_row = content.split(f'id="invitation-{accepted.pk}"')[1].split("</tr>")[0]
    assert "by joined@example.com" in accepted_row and "Revoke" not in accepted_row


def test_revoking_an_invitation_stops_its_link(org, admin):
    invitation = invitation_create(scope=scope_of(admin, org))
    client = console(admin, org)

    response = client.post(f"/organization/invitations/{invitation.pk}/revoke/")
    again = client.post(f"/organization/invitations/{invitation.pk}/revoke/")

    assert messages_of(response) == ["The link: invitation revoked; its link no longer works."]
    # (The first message is still unread: no page was shown in between.)
    assert messages_of(again)[-1:] == ["That invitation was no longer pending."]
    token = invitation_token(invitation)
    assert Client().get(f"/organization/invitations/{token}/").status_code == 410


# --- the invitation page ------------------------------------------------------------------------


def test_a_signed_out_visitor_sees_who_invites_them_and_how_to_join(org, owner):
    invitation = invitation_create(
        scope=scope_of(owner, org), email="new@example.com", role="admin"
    )
    token = invitation_token(invitation)
    client = Client()

    response = client.get(f"/organization/invitations/{token}/")

    content = response.content.decode()
    assert response.status_code == 200
    assert (
        "<strong>owner@example.com</strong> invites you to join <strong>Acme Research</strong>"
        in content
    )
    assert "as <strong>admin</strong>" in content
    assert "This invitation is for new@example.com." in content
    path = f"/organization/invitations/{token}/"
    assert f'href="/accounts/login/?next={path.replace("/", "%2F")}"' in content
    assert (
        f'href="/accounts/signup/?next={path.replace("/", "%2F")}&amp;email=new%40example.com"'
        in content
    )
    assert client.session[INVITATION_SESSION_KEY] == token
    assert client.session["account_verified_email"] == "new@example.com"


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("expired", "This invitation has expired."),
        ("revoked", "This invitation was withdrawn by the organization."),
        ("accepted", "This invitation has already been used: an invitation works once."),
        ("declined", "This invitation was declined."),
    ],
)
def test_a_dead_invitation_is_a_410_page_saying_why(org, owner, state, message):
    invitation = invitation_create(scope=scope_of(owner, org))
    stamp = {"expired": "expires_at", "revoked": "revoked_at", "accepted": "accepted_at",
             "declined": "declined_at"}[state]  # fmt: skip
    Invitation.objects.filter(pk=invitation.pk).update(
        **{stamp: timezone.now() - timedelta(minutes=1)}
    )

    response = Client().get(f"/organization/invitations/{invitation_token(invitation)}/")

    assert response.status_code == 410
    assert message in response.content.decode()
    assert "Sign in to accept" not in response.content.decode()


def test_an_unknown_invitation_is_a_404_page(owner):
    response = Client().get(
        "/organization/invitations/inv_0123456789abcdef0123456789abcdef01234567/"
    )
    junk = console(owner).get("/organization/invitations/not-a-token/")

    assert (response.status_code, junk.status_code) == (404, 404)
    assert "This invitation link is not valid" in response.content.decode()


def test_a_signed_in_invitee_accepts_and_works_in_the_organization(org, owner):
    invitee = UserFactory(email="new@example.com")
    invitation = invitation_create(
        scope=scope_of(owner, org), email="new@example.com", role="admin"
    )
    token = invitation_token(invitation)
    client = console(invitee)

    page = client.get(f"/organization/invitations/{token}/").content.decode()
    assert "Accept and join" in page and "Decline" in page
    response = client.post(f"/organization/invitations/{token}/accept/")

    assert (response.status_code, response["Location"]) == (302, "/organization/")
    assert messages_of(response) == ["Welcome to Acme Research: you joined as admin."]
    assert Membership.objects.get(user=invitee).role == "admin"
    assert client.session[SESSION_KEY] == org.pk
    assert INVITATION_SESSION_KEY not in client.session
    assert client.post(f"/organization/invitations/{token}/accept/").status_code == 410


def test_declining_leaves_the_organization_as_it_was(org, owner):
    invitee = UserFactory(email="new@example.com")
    invitation = invitation_create(scope=scope_of(owner, org), email="new@example.com")
    client = console(invitee)

    response = client.post(f"/organization/invitations/{invitation_token(invitation)}/decline/")

    assert messages_of(response) == ["You declined the invitation to Acme Research."]
    assert not Membership.objects.filter(user=invitee).exists()
    assert Invitation.objects.get(pk=invitation.pk).declined_at is not None
    assert SESSION_KEY not in client.session


def test_the_wrong_account_is_told_which_address_the_invitation_is_for(org, owner, outsider):
    invitation = invitation_create(scope=scope_of(owner, org), email="new@example.com")
    token = invitation_token(invitation)
    client = console(outsider)

    page = client.get(f"/organization/invitations/{token}/")
    refused = client.post(f"/organization/invitations/{token}/accept/")

    assert page.status_code == 200
    text = (
        "This invitation is for <strong>new@example.com</strong>, and you are signed in as "
        "outsider@example.com."
    )
    assert text in page.content.decode()
    assert "Accept and join" not in page.content.decode()
    assert refused.status_code == 403
    assert text in refused.content.decode()
    assert not Membership.objects.filter(user=outsider).exists()


def test_a_member_opening_a_link_is_offered_the_organization(org, owner, member):
    token = invitation_token(invitation_create(scope=scope_of(owner, org)))
    client = console(member)

    page = client.get(f"/organization/invitations/{token}/").content.decode()
    response = client.post(f"/organization/invitations/{token}/accept/")

    assert "You are already a member of Acme Research." in page
    assert messages_of(response) == ["You are already a member of Acme Research."]
    assert client.session[SESSION_KEY] == org.pk
    assert Membership.objects.filter(user=member).count() == 1


def test_answering_signed_out_leads_back_to_the_invitation(org, owner):
    token = invitation_token(invitation_create(scope=scope_of(owner, org)))

    response = Client().post(f"/organization/invitations/{token}/accept/")

    assert (response.status_code, response["Location"]) == (
        302,
        f"/organization/invitations/{token}/",
    )
    assert Membership.objects.filter(organization=org).count() == 1


# --- sign-up on the way -------------------------------------------------------------------------


def test_a_pending_invitation_opens_sign_up_while_it_is_closed(org, owner, settings):
    settings.SIGNUP_ENABLED = False
    invitation = invitation_create(scope=scope_of(owner, org))
    client = Client()

    closed = client.get("/accounts/signup/")
    client.get(f"/organization/invitations/{invitation_token(invitation)}/")
    opened = client.get("/accounts/signup/")
    invitation_revoke(scope=scope_of(owner, org), invitation=invitation)
    closed_again = client.get("/accounts/signup/")

    assert "account/signup_closed.html" in [t.name for t in closed.templates]
    assert 'name="password1"' in opened.content.decode()
    assert "account/signup_closed.html" in [t.name for t in closed_again.templates]


def test_the_adapter_opens_sign_up_for_a_pending_invitation_only(org, owner, rf, settings):
    settings.SIGNUP_ENABLED = False
    invitation = invitation_create(scope=scope_of(owner, org))
    request = rf.get("/accounts/signup/")
    request.session = {}
    adapter = AccountAdapter()

    assert adapter.is_open_for_signup(request) is False
    request.session[INVITATION_SESSION_KEY] = invitation_token(invitation)
    assert adapter.is_open_for_signup(request) is True
    request.session[INVITATION_SESSION_KEY] = "inv_" + "0" * 40
    assert adapter.is_open_for_signup(request) is False
    request.session[INVITATION_SESSION_KEY] = invitation_token(invitation)
    invitation_decline(invitation=invitation, user=UserFactory())
    assert adapter.is_open_for_signup(request) is False
    settings.SIGNUP_ENABLED = True
    assert adapter.is_open_for_signup(request) is True


def test_an_emailed_invitee_signs_up_on_the_way_and_joins(org, owner, settings):
    settings.SIGNUP_ENABLED = False
    invitation = invitation_create(scope=scope_of(owner, org), email="new@example.com")
    token = invitation_token(invitation)
    path = f"/organization/invitations/{token}/"
    client = Client()
    client.get(path)

    signup = client.post(
        f"/accounts/signup/?next={path}",
        {"email": "new@example.com", "password1": "a long new passphrase",
         "password2": "a long new passphrase", "next": path},
    )  # fmt: skip

    # The emailed link proved the address: no confirmation email, signed in, back here.
    assert (signup.status_code, signup["Location"]) == (302, path)
    user = User.objects.get(email="new@example.com")
    assert EmailAddress.objects.get(user=user).verified is True
    assert mail.outbox == []
    accepted = client.post(f"{path}accept/")
    assert accepted["Location"] == "/organization/"
    assert Membership.objects.get(user=user).organization == org


def test_a_link_invitee_confirms_the_address_and_sign_in_returns_to_the_invitation(
    org, owner, settings
):
    settings.SIGNUP_ENABLED = False
    token = invitation_token(invitation_create(scope=scope_of(owner, org)))
    path = f"/organization/invitations/{token}/"
    client = Client()
    client.get(path)

    client.post(
        "/accounts/signup/",
        {"email": "linked@example.com", "password1": "a long new passphrase",
         "password2": "a long new passphrase"},
    )  # fmt: skip
    assert User.objects.filter(email="linked@example.com").exists()
    (message,) = mail.outbox
    confirm = re.search(r"/accounts/confirm-email/[^\s/]+/", message.body).group(0)
    client.post(confirm)
    signed = client.post(
        "/accounts/login/", {"login": "linked@example.com", "password": "a long new passphrase"}
    )

    assert (signed.status_code, signed["Location"]) == (302, path)
