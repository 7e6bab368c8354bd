"""The permission matrix: the README's table is the one the code checks, and scopes apply it."""

import re
from pathlib import Path

import pytest
from django.db.models import Q

from accounts.models import Membership
from accounts.scope import PERMISSIONS, Perm, Scope, member_keys_allowed, role_can
from tests.factories import UserFactory

README = Path(__file__).resolve().parents[2] / "README.md"
ROLES = ("owner", "admin", "member")


def readme_matrix() -> dict[str, frozenset[str]]:
    text = README.read_text()
    table = text.split("<!-- permission-matrix -->")[1].split("<!-- /permission-matrix -->")[0]
    matrix = {}
    for line in table.strip().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = re.match(r"`(\w+)`", cells[0]).group(1)
        roles = zip(ROLES, cells[1:], strict=True)
        matrix[name] = frozenset(role for role, cell in roles if cell == "✓")
    return matrix


def test_the_readme_table_is_the_permission_matrix():
    assert readme_matrix() == {str(perm): roles for perm, roles in PERMISSIONS.items()}


def test_only_owners_change_roles_and_remove_admins():
    assert [role for role in ROLES if role_can(role, Perm.SET_ROLE)] == ["owner"]
    assert [role for role in ROLES if role_can(role, Perm.REMOVE_ADMIN)] == ["owner"]
    assert [role for role in ROLES if role_can(role, Perm.INVITE)] == ["owner", "admin"]


@pytest.mark.parametrize(
    ("role", "enabled", "can_create", "allowed"),
    [
        ("owner", False, False, True),
        ("admin", False, False, True),
        ("member", True, True, True),
        ("member", False, True, False),
        ("member", True, False, False),
    ],
)
def test_member_keys_work_for_owners_and_admins_always_and_members_while_allowed(
    role, enabled, can_create, allowed
):
    assert (
        member_keys_allowed(role=role, member_keys_enabled=enabled, can_create_keys=can_create)
        is allowed
    )


@pytest.mark.django_db
def test_a_personal_scope_may_do_everything_with_its_own_rows():
    user = UserFactory()
    scope = Scope(user=user)
    assert scope.personal and all(scope.can(perm) for perm in Perm)
    assert scope.rows() == Q(user=user.pk, organization__isnull=True)


def test_a_members_scope_sees_only_their_own_rows_of_the_organization():
    user = UserFactory.build(pk=7)
    member = Membership(organization_id=3, user=user, role="member")
    admin = Membership(organization_id=3, user=user, role="admin")

    assert dict(Scope(user=user, membership=member).rows().children) == {
        "organization_id": 3, "user": 7
    }  # fmt: skip
    assert dict(Scope(user=user, membership=admin).rows().children) == {"organization_id": 3}
