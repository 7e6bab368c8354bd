"""Keys in an organization's scope (issue 14), console and /api/: members create keys spending
from the organization's wallet; owners and admins see every member's keys with whose they are and
may disable, enable or revoke them, never edit or delete them; personal scope never shows an
organization's key. Personas: owner, admin, member (and a second member), outsider."""

import csv
import io
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken, AuditEvent, Membership, Organization, User
from accounts.scope import Scope
from accounts.services import (
    api_token_create,
    api_token_set_group,
    api_tokens_revoke,
    api_tokens_set_group,
    organization_create,
)
from tests.factories import (
    ApiTokenFactory,
    ModelFactory,
    PersonalAccessTokenFactory,
    TokenGroupFactory,
    UsageRollupFactory,
)
from tests.organizations import console, new_member
from tokenbyte.errors import ApplicationError

pytestmark = pytest.mark.django_db


# --- the organization and its people -------------------------------------------------------------


@pytest.fixture
def org(owner) -> Organization:
    return organization_create(user=owner, name="Acme", time_zone="UTC")


@pytest.fixture
def other_member(org) -> User:
    return new_member(org, "other@example.com", Membership.Role.MEMBER)


@pytest.fixture
def people(owner, admin, member, other_member, outsider) -> dict[str, User]:
    return {
        "owner": owner,
        "admin": admin,
        "member": member,
        "other_member": other_member,
        "outsider": outsider,
    }


def org_key(org: Organization, owner: User, name: str, **fields) -> ApiToken:
    return ApiTokenFactory(owner=owner, organization=org, name=name, **fields)


def names(response) -> list[str]:
    return [token.name for token in response.context["tokens"]]


def csv_rows(response) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


# --- the list follows the scope ------------------------------------------------------------------


def test_personal_scope_lists_only_keys_with_no_organization(owner, org):
    ApiTokenFactory(owner=owner, name="mine")
    org_key(org, owner, "acme-web")

    response = console(owner).get("/tokens/")

    assert names(response) == ["mine"]
    assert "acme-web" not in response.content.decode()


def test_an_owner_sees_every_members_key_with_a_member_column(owner, org, member, outsider):
    org_key(org, member, "member-ci")
    org_key(org, owner, "owner-web")
    ApiTokenFactory(owner=owner, name="owners-personal")
    ApiTokenFactory(owner=outsider, name="elsewhere")

    response = console(owner, org).get("/tokens/")

    assert sorted(names(response)) == ["member-ci", "owner-web"]
    assert response.context["show_member"] is True
    content = response.content.decode()
    assert '<th scope="col">Member</th>' in content
    assert "member@example.com" in content
    assert "Acme" in content
    # No groups in an organization's scope: no group filter, no Groups tab.
    assert 'id="filter-group"' not in content
    assert "/tokens/groups/" not in content


def test_an_admin_sees_every_members_key_too(admin, org, member, owner):
    org_key(org, member, "member-ci")
    org_key(org, owner, "owner-web")

    response = console(admin, org).get("/tokens/")

    assert sorted(names(response)) == ["member-ci", "owner-web"]


def test_a_member_sees_only_their_own_organization_keys(member, other_member, owner, org):
    org_key(org, member, "mine")
    org_key(org, other_member, "theirs")
    org_key(org, owner, "owners")
    ApiTokenFactory(owner=member, name="my-personal")

    response = console(member, org).get("/tokens/")

    assert names(response) == ["mine"]
    assert response.context["show_member"] is False
    assert '<th scope="col">Member</th>' not in response.content.decode()


def test_an_outsider_naming_the_organization_stays_in_personal_scope(outsider, org, member):
    org_key(org, member, "member-ci")
    ApiTokenFactory(owner=outsider, name="outsiders")

    response = console(outsider, org).get("/tokens/")

    assert names(response) == ["outsiders"]
    assert response.context["organization"] is None


def test_month_usage_per_key_counts_the_organizations_calls_only(owner, org, member):
    key = org_key(org, member, "member-ci")
    personal = ApiTokenFactory(owner=owner, name="mine")
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    UsageRollupFactory(user=member, organization_id=org.pk, key_id=key.pk, hour=hour,
                       requests=3, cost_micros=1_500_000)  # fmt: skip
    UsageRollupFactory(user=owner, key_id=personal.pk, hour=hour, requests=2, cost_micros=700)
    # Before this month: not counted.
    UsageRollupFactory(user=member, organization_id=org.pk, key_id=key.pk,
                       hour=hour - timedelta(days=40), requests=9)  # fmt: skip

    in_org = console(owner, org).get("/tokens/")
    personal_page = console(owner).get("/tokens/")

    [row] = in_org.context["tokens"]
    assert (row.month.requests, row.month.cost_micros) == (3, 1_500_000)
    assert "$1.50" in in_org.content.decode()
    [mine] = personal_page.context["tokens"]
    assert (mine.month.requests, mine.month.cost_micros) == (2, 700)


# --- creating a key ------------------------------------------------------------------------------


def test_a_member_creates_an_organization_key_in_its_scope(member, org):
    ModelFactory(model_id="gpt-test")
    client = console(member, org)

    form = client.get("/tokens/new/")
    response = client.post("/tokens/new/", {"name": "member-ci", "quota_reset": "manual"})

    assert 'name="group"' not in form.content.decode()
    assert response.status_code == 200
    token = ApiToken.objects.get(name="member-ci")
    assert (token.owner, token.organization, token.group) == (member, org, None)
    content = response.content.decode()
    assert response.context["key"] in content
    assert "its calls spend from the organization's wallet" in content
    assert response["Cache-Control"] == "no-store"


def test_a_key_created_in_personal_scope_is_personal(member, org):
    response = console(member).post("/tokens/new/", {"name": "mine", "quota_reset": "manual"})

    assert response.status_code == 200
    assert ApiToken.objects.get(name="mine").organization is None


@pytest.mark.parametrize(
    ("org_setting", "member_setting", "message"),
    [
        (False, True, "Acme does not let members create keys: ask an owner or admin."),
        (True, False, "An owner or admin of Acme stopped your keys: ask them to allow them again."),
    ],
)
def test_a_member_whose_keys_are_not_allowed_cannot_create_one(
    member, org, org_setting, member_setting, message
):
    Organization.objects.filter(pk=org.pk).update(member_keys_enabled=org_setting)
    Membership.objects.filter(user=member).update(can_create_keys=member_setting)
    client = console(member, org)

    listing = client.get("/tokens/")
    form = client.get("/tokens/new/", follow=True)
    posted = client.post("/tokens/new/", {"name": "sneaky", "quota_reset": "manual"}, follow=True)

    assert message in listing.content.decode()
    assert 'href="/tokens/new/"' not in listing.content.decode()
    assert form.redirect_chain == [("/tokens/", 302)]
    assert [str(m) for m in form.context["messages"]] == [message]
    assert posted.redirect_chain == [("/tokens/", 302)]
    assert not ApiToken.objects.filter(name="sneaky").exists()


def test_an_owner_may_create_keys_even_when_members_may_not(owner, org):
    Organization.objects.filter(pk=org.pk).update(member_keys_enabled=False)

    response = console(owner, org).post("/tokens/new/", {"name": "ops", "quota_reset": "manual"})

    assert response.status_code == 200
    assert ApiToken.objects.get(name="ops").organization == org


# --- the permission matrix on one member's key ---------------------------------------------------
# Owners and admins may disable, enable and revoke a member's key; only the member edits or deletes
# it; another member and an outsider do not even see it.

VIEWS = {
    "edit": ("get", "/tokens/{pk}/edit/", {}),
    "disable": ("post", "/tokens/{pk}/status/", {"status": "disabled"}),
    "revoke page": ("get", "/tokens/{pk}/revoke/", {}),
    "revoke": ("post", "/tokens/{pk}/revoke/", {}),
    "delete page": ("get", "/tokens/{pk}/delete/", {}),
    "delete": ("post", "/tokens/{pk}/delete/", {}),
}
EXPECTED = {
    # view:          owner, admin, member, other_member, outsider
    "edit":          (404, 404, 200, 404, 404),
    "disable":       (302, 302, 302, 404, 404),
    "revoke page":   (200, 200, 200, 404, 404),
    "revoke":        (302, 302, 302, 404, 404),
    "delete page":   (404, 404, 200, 404, 404),
    "delete":        (404, 404, 302, 404, 404),
}  # fmt: skip
ROLES = ("owner", "admin", "member", "other_member", "outsider")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("view", list(VIEWS))
def test_the_permission_matrix_on_a_members_key(people, org, role, view):
    key = org_key(org, people["member"], "member-ci")
    method, path, data = VIEWS[view]
    client = console(people[role], org)

    response = getattr(client, method)(path.format(pk=key.pk), data)

    assert response.status_code == EXPECTED[view][ROLES.index(role)]
    if response.status_code == 404:
        key.refresh_from_db()
        assert (key.name, key.status) == ("member-ci", ApiToken.Status.ENABLED)


def test_an_owner_disables_a_members_key_in_place_with_htmx(owner, org, member):
    key = org_key(org, member, "member-ci")

    response = console(owner, org).post(
        f"/tokens/{key.pk}/status/", {"status": "disabled"}, headers={"HX-Request": "true"}
    )

    assert response.status_code == 200
    key.refresh_from_db()
    assert key.status == ApiToken.Status.DISABLED
    row = response.content.decode()
    assert "member@example.com" in row
    assert f"/tokens/{key.pk}/edit/" not in row
    assert f"/tokens/{key.pk}/delete/" not in row
    assert "Enable member-ci" in row


def test_an_organization_key_is_a_404_in_personal_scope(owner, org):
    key = org_key(org, owner, "acme-web")
    client = console(owner)

    assert client.get(f"/tokens/{key.pk}/edit/").status_code == 404
    assert client.post(f"/tokens/{key.pk}/status/", {"status": "disabled"}).status_code == 404
    assert client.get(f"/tokens/{key.pk}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.status == ApiToken.Status.ENABLED


def test_a_personal_key_is_a_404_in_an_organizations_scope(owner, org):
    key = ApiTokenFactory(owner=owner, name="mine")

    response = console(owner, org).get(f"/tokens/{key.pk}/edit/")

    assert response.status_code == 404


def test_the_edit_form_of_an_organization_key_has_no_group(member, org):
    key = org_key(org, member, "member-ci")
    client = console(member, org)

    form = client.get(f"/tokens/{key.pk}/edit/")
    saved = client.post(f"/tokens/{key.pk}/edit/", {"name": "renamed", "quota_reset": "manual"})

    assert 'name="group"' not in form.content.decode()
    assert saved.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.group) == ("renamed", None)


# --- batches and export --------------------------------------------------------------------------


def test_an_admin_revokes_a_selection_of_members_keys(admin, org, member, other_member, outsider):
    first = org_key(org, member, "member-ci")
    second = org_key(org, other_member, "other-ci")
    elsewhere = ApiTokenFactory(owner=outsider, name="elsewhere")
    client = console(admin, org)

    confirm = client.post("/tokens/batch/", {"action": "revoke", "ids": [first.pk, second.pk]})
    done = client.post(
        "/tokens/batch/",
        {"action": "revoke", "confirm": "yes", "ids": [first.pk, second.pk, elsewhere.pk]},
    )

    assert confirm.status_code == 200
    assert "of member@example.com" in confirm.content.decode()
    assert done.status_code == 302
    statuses = dict(ApiToken.objects.values_list("name", "status"))
    assert statuses == {"member-ci": "revoked", "other-ci": "revoked", "elsewhere": "enabled"}
    # Each revocation is in its member's account.
    assert AuditEvent.objects.filter(user=member, kind="key_revoked").count() == 1
    assert AuditEvent.objects.filter(user=other_member, kind="key_revoked").count() == 1


def test_a_members_batch_revokes_only_their_own_keys(member, other_member, org):
    mine = org_key(org, member, "mine")
    theirs = org_key(org, other_member, "theirs")

    console(member, org).post(
        "/tokens/batch/", {"action": "revoke", "confirm": "yes", "ids": [mine.pk, theirs.pk]}
    )

    statuses = dict(ApiToken.objects.values_list("name", "status"))
    assert statuses == {"mine": "revoked", "theirs": "enabled"}


def test_the_export_follows_the_scope_and_names_each_member(owner, org, member):
    org_key(org, member, "member-ci", prefix="sk-Member01")
    ApiTokenFactory(owner=owner, name="mine", prefix="sk-Mine0001")

    in_org = csv_rows(console(owner, org).get("/tokens/export.csv"))
    personal = csv_rows(console(owner).get("/tokens/export.csv"))

    assert in_org[0][-1] == "member_email"
    assert [(row[1], row[2], row[-1]) for row in in_org[1:]] == [
        ("member-ci", "sk-Member01", "member@example.com")
    ]
    assert personal[0][-1] == "month_cost_usd"
    assert [row[1] for row in personal[1:]] == ["mine"]


def test_a_members_export_holds_their_keys_only(member, other_member, org):
    org_key(org, member, "mine")
    org_key(org, other_member, "theirs")

    rows = csv_rows(console(member, org).get("/tokens/export.csv"))

    assert [(row[1], row[-1]) for row in rows[1:]] == [("mine", "member@example.com")]


# --- groups are personal -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tokens/groups/", "/tokens/groups/new/"])
def test_group_pages_send_an_organizations_scope_back_to_the_keys(owner, org, path):
    response = console(owner, org).get(path, follow=True)

    assert response.redirect_chain == [("/tokens/", 302)]
    [message] = [str(m) for m in response.context["messages"]]
    assert message.startswith("Key groups hold personal keys only; Acme's keys have none.")


def test_an_organization_key_cannot_join_a_group(owner, org):
    group = TokenGroupFactory(owner=owner)
    key = org_key(org, owner, "acme-web")

    moved = console(owner).post("/tokens/groups/move/", {"group": group.pk, "ids": [key.pk]})
    result = api_tokens_set_group(owner=owner, ids=[key.pk], group=group)

    assert moved.status_code == 302
    assert result.not_found == [key.pk]
    with pytest.raises(ApplicationError, match="cannot be in a group"):
        api_token_set_group(token=key, group=group)
    with pytest.raises(ApplicationError, match="cannot be in a group"):
        api_token_create(owner=owner, name="grouped", organization=org, group=group)
    key.refresh_from_db()
    assert key.group is None


def test_a_scoped_batch_revoke_leaves_other_scopes_alone(owner, org):
    personal = ApiTokenFactory(owner=owner, name="mine")
    acme = org_key(org, owner, "acme-web")

    result = api_tokens_revoke(owner=owner, ids=[personal.pk, acme.pk], scope=Scope(user=owner))

    assert (result.changed, result.not_found) == ([personal.pk], [acme.pk])


# --- /api/ with ?organization= -------------------------------------------------------------------


def api(user: User) -> Client:
    client = Client()
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {PersonalAccessTokenFactory(user=user).secret}"
    return client


def test_the_api_lists_the_organizations_keys_by_role(people, org):
    org_key(org, people["member"], "member-ci")
    org_key(org, people["owner"], "owner-web")
    ApiTokenFactory(owner=people["owner"], name="owners-personal")
    expected = {
        "owner": (200, ["member-ci", "owner-web"]),
        "admin": (200, ["member-ci", "owner-web"]),
        "member": (200, ["member-ci"]),
        "other_member": (200, []),
        "outsider": (404, None),
    }

    for role, (status, keys) in expected.items():
        response = api(people[role]).get(f"/api/keys/?organization={org.pk}")
        assert response.status_code == status, role
        if keys is not None:
            assert sorted(k["name"] for k in response.json()["results"]) == keys, role


def test_the_api_without_organization_lists_personal_keys_only(owner, org):
    org_key(org, owner, "acme-web")
    ApiTokenFactory(owner=owner, name="mine")

    body = api(owner).get("/api/keys/").json()

    assert [(k["name"], k["organization"]) for k in body["results"]] == [("mine", None)]


def test_the_api_names_each_organization_keys_member(owner, org, member):
    key = org_key(org, member, "member-ci")

    body = api(owner).get(f"/api/keys/{key.pk}/?organization={org.pk}").json()

    assert (body["organization"], body["owner_email"]) == (org.pk, "member@example.com")


def test_a_member_creates_an_organization_key_through_the_api(member, org):
    response = api(member).post(
        f"/api/keys/?organization={org.pk}", {"name": "member-ci"}, content_type="application/json"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["organization"] == org.pk
    assert body["key"].startswith("sk-")
    assert ApiToken.objects.get(pk=body["id"]).organization == org


def test_the_api_refuses_a_key_to_a_member_whose_keys_are_stopped(member, org):
    Membership.objects.filter(user=member).update(can_create_keys=False)

    response = api(member).post(
        f"/api/keys/?organization={org.pk}", {"name": "sneaky"}, content_type="application/json"
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "organization_keys_not_allowed"
    assert not ApiToken.objects.filter(name="sneaky").exists()


def test_the_api_refuses_a_group_on_an_organization_key(owner, org):
    group = TokenGroupFactory(owner=owner)

    response = api(owner).post(
        f"/api/keys/?organization={org.pk}",
        {"name": "grouped", "group": group.pk},
        content_type="application/json",
    )

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"group": [ORG_KEY_NO_GROUP]}
    assert not ApiToken.objects.filter(name="grouped").exists()


ORG_KEY_NO_GROUP = "an organization's key cannot be in a group"
API_CALLS = {
    "read": ("get", "/api/keys/{pk}/", None),
    "change": ("patch", "/api/keys/{pk}/", {"name": "renamed"}),
    "delete": ("delete", "/api/keys/{pk}/", None),
    "disable": ("post", "/api/keys/{pk}/disable/", None),
    "enable": ("post", "/api/keys/{pk}/enable/", None),
    "revoke": ("post", "/api/keys/{pk}/revoke/", None),
}
API_EXPECTED = {
    # call:      owner, admin, member, other_member, outsider
    "read":      (200, 200, 200, 404, 404),
    "change":    (404, 404, 200, 404, 404),
    "delete":    (404, 404, 204, 404, 404),
    "disable":   (200, 200, 200, 404, 404),
    "enable":    (200, 200, 200, 404, 404),
    "revoke":    (200, 200, 200, 404, 404),
}  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("call", list(API_CALLS))
def test_the_api_permission_matrix_on_a_members_key(people, org, role, call):
    key = org_key(org, people["member"], "member-ci")
    method, path, body = API_CALLS[call]
    client = api(people[role])
    url = path.format(pk=key.pk) + f"?organization={org.pk}"

    if body is None:
        response = getattr(client, method)(url)
    else:
        response = getattr(client, method)(url, body, content_type="application/json")

    assert response.status_code == API_EXPECTED[call][ROLES.index(role)], response.content
    if response.status_code == 404:
        key.refresh_from_db()
        assert (key.name, key.status) == ("member-ci", ApiToken.Status.ENABLED)


def test_the_api_reaches_no_organization_key_without_the_parameter(owner, org):
    key = org_key(org, owner, "acme-web")

    assert api(owner).post(f"/api/keys/{key.pk}/disable/").status_code == 404
    key.refresh_from_db()
    assert key.status == ApiToken.Status.ENABLED


def test_the_api_batches_follow_the_scope(admin, org, member, outsider):
    first = org_key(org, member, "member-ci")
    elsewhere = ApiTokenFactory(owner=outsider)
    client = api(admin)
    url = f"/api/keys/batch/{{}}/?organization={org.pk}"
    ids = {"ids": [first.pk, elsewhere.pk]}

    read = client.post(url.format("read"), ids, content_type="application/json").json()
    revoked = client.post(url.format("revoke"), ids, content_type="application/json").json()

    assert ([k["name"] for k in read["keys"]], read["not_found"]) == (["member-ci"], [elsewhere.pk])
    assert revoked == {"changed": [first.pk], "unchanged": [], "not_found": [elsewhere.pk]}
    elsewhere.refresh_from_db()
    assert elsewhere.status == ApiToken.Status.ENABLED


def test_the_api_export_of_an_organization_names_each_member(owner, org, member, outsider):
    org_key(org, member, "member-ci")

    response = api(owner).get(f"/api/keys/export.csv?organization={org.pk}")
    refused = api(outsider).get(f"/api/keys/export.csv?organization={org.pk}")

    rows = csv_rows(response)
    assert rows[0][-1] == "member_email"
    assert [(row[1], row[-1]) for row in rows[1:]] == [("member-ci", "member@example.com")]
    assert refused.status_code == 404
