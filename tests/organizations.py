"""Helpers of the organization tests: members made directly (the invitation path has its own
tests) and a console client working in an organization's scope."""

from django.test import Client

from accounts.models import Membership, Organization, User
from accounts.scope import SESSION_KEY
from accounts.services import allowance_period_start
from tests.factories import UserFactory


def join(org: Organization, user: User, role: str = "member", **fields) -> Membership:
    """Make the user a member of the organization, in its current allowance period."""
    return Membership.objects.create(
        organization=org,
        user=user,
        role=role,
        allowance_period_start=allowance_period_start(time_zone=org.time_zone),
        **fields,
    )


def new_member(org: Organization, email: str, role: str = "member", **fields) -> User:
    """A new user with this email, member of the organization."""
    user = UserFactory(email=email)
    join(org, user, role, **fields)
    return user


def console(user: User, org: Organization | None = None) -> Client:
    """A client signed in as the user, with the organization chosen as the header's switcher
    leaves it in the session (None: personal)."""
    client = Client()
    client.force_login(user)
    if org is not None:
        session = client.session
        session[SESSION_KEY] = org.pk
        session.save()
    return client
