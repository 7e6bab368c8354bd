import pytest
from django.db import IntegrityError, transaction

from accounts.models import ApiToken, User
from accounts.services import api_token_create, api_token_set_status
from tests.factories import ApiTokenFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_key_digests_are_unique():
    token = ApiTokenFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        ApiTokenFactory(digest=token.digest)


def test_emails_are_unique_and_the_login():
    UserFactory(email="a@example.com")
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create_user(email="a@example.com", password="x")
    assert User.USERNAME_FIELD == "email"


def test_two_keys_never_share_a_digest_or_prefix_by_chance():
    owner = UserFactory()
    keys = [api_token_create(owner=owner, name=f"k{i}")[1] for i in range(20)]
    assert len(set(keys)) == 20
    assert ApiToken.objects.values("digest").distinct().count() == 20


def test_a_revoked_key_stays_revoked():
    token = ApiTokenFactory()

    assert api_token_set_status(token=token, status="revoked") is True
    assert api_token_set_status(token=token, status="enabled") is False

    token.refresh_from_db()
    assert token.status == "revoked"
    assert token.revoked_at is not None
