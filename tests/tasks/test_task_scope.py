"""The Tasks page and the tasks API follow the scope: personal jobs only when personal; in an
organization every member's jobs for owners and admins (with whose they are), one's own for a
member; an outsider's `?organization=` is a 404."""

import pytest

from accounts.models import Membership
from accounts.scope import SESSION_KEY, Scope
from accounts.services import (
    api_token_create,
    invitation_accept,
    invitation_create,
    organization_create,
)
from tasks.selectors import async_tasks_for_key_owner
from tests.factories import AsyncTaskFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def org_jobs():
    owner, member, outsider = UserFactory(), UserFactory(), UserFactory()
    org = organization_create(user=owner, name="Acme")
    scope = Scope(user=owner, membership=Membership.objects.get(user=owner))
    invitation_accept(invitation=invitation_create(scope=scope, email=member.email), user=member)
    owner_key, _ = api_token_create(owner=owner, name="owner-org", organization=org)
    member_key, _ = api_token_create(owner=member, name="member-org", organization=org)
    personal_key, _ = api_token_create(owner=member, name="member-own")
    jobs = {
        "owner_org": AsyncTaskFactory(user=owner, api_token=owner_key),
        "member_org": AsyncTaskFactory(user=member, api_token=member_key),
        "member_personal": AsyncTaskFactory(user=member, api_token=personal_key),
    }
    return org, {"owner": owner, "member": member, "outsider": outsider}, jobs


def page_ids(client, user, org) -> set[str]:
    client.force_login(user)
    if org is not None:
        session = client.session
        session[SESSION_KEY] = org.pk
        session.save()
    response = client.get("/tasks/")
    assert response.status_code == 200
    return {task.public_id for task in response.context["tasks"]}


@pytest.mark.parametrize(
    ("who", "in_org", "expected"),
    [
        ("owner", True, {"owner_org", "member_org"}),
        ("member", True, {"member_org"}),
        ("member", False, {"member_personal"}),
        ("owner", False, set()),
    ],
)
def test_the_tasks_page_shows_the_jobs_of_the_scope(client, org_jobs, who, in_org, expected):
    org, users, jobs = org_jobs

    shown = page_ids(client, users[who], org if in_org else None)

    assert shown == {jobs[name].public_id for name in expected}


def test_owners_see_whose_job_it_is(client, org_jobs):
    org, users, _ = org_jobs
    page_ids(client, users["owner"], org)
    response = client.get("/tasks/")
    assert response.context["show_member"] is True
    assert users["member"].email in response.content.decode()


@pytest.mark.parametrize(
    ("who", "expected"),
    [("owner", {"owner_org", "member_org"}), ("member", {"member_org"})],
)
def test_the_tasks_api_takes_the_organization(client, org_jobs, who, expected):
    org, users, jobs = org_jobs
    client.force_login(users[who])

    listed = client.get(f"/api/tasks/?organization={org.pk}").json()["results"]

    assert {task["id"] for task in listed} == {jobs[name].public_id for name in expected}
    other = jobs["owner_org"].public_id
    status = client.get(f"/api/tasks/{other}/?organization={org.pk}").status_code
    assert status == (200 if who == "owner" else 404)


def test_an_outsider_naming_the_organization_gets_a_404(client, org_jobs):
    org, users, _ = org_jobs
    client.force_login(users["outsider"])

    assert client.get(f"/api/tasks/?organization={org.pk}").status_code == 404
    # Personal, without the parameter: nothing of the organization's.
    assert client.get("/api/tasks/").json()["results"] == []


def test_v1_tasks_of_a_key_list_the_owners_jobs_in_the_keys_scope(org_jobs):
    """/v1/tasks answers a personal key with the owner's personal jobs and an organization's
    key with the owner's jobs there (relay/jobs.py reads this selector)."""
    org, users, jobs = org_jobs
    member = users["member"]

    org_ids = async_tasks_for_key_owner(owner_id=member.pk, organization_id=org.pk)
    own_ids = async_tasks_for_key_owner(owner_id=member.pk)

    assert [t.public_id for t in org_ids] == [jobs["member_org"].public_id]
    assert [t.public_id for t in own_ids] == [jobs["member_personal"].public_id]
