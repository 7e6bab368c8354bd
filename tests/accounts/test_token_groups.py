"""Moving keys between token groups."""

import pytest
from django.urls import reverse

from accounts.models import ApiToken, TokenGroup
from accounts.services import api_token_create, api_token_set_group, token_group_create
from tests.factories import UserFactory
from tokenbyte.errors import ApplicationError

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return UserFactory()


def test_a_key_moves_to_another_group_and_every_counter_stays_where_it_was(owner):
    old = token_group_create(owner=owner, name="old", quota_tokens=1000)
    new = token_group_create(owner=owner, name="new", quota_tokens=1000)
    token, _ = api_token_create(owner=owner, name="k", group=old, quota_tokens=500)
    ApiToken.objects.filter(pk=token.pk).update(quota_used_tokens=50)
    TokenGroup.objects.filter(pk=old.pk).update(quota_used_tokens=100)

    moved = api_token_set_group(token=token, group=new)
    again = api_token_set_group(token=token, group=new)

    assert (moved, again) == (True, False)
    token.refresh_from_db()
    assert (token.group, token.quota_used_tokens) == (new, 50)
    assert dict(TokenGroup.objects.values_list("name", "quota_used_tokens")) == {
        "old": 100,
        "new": 0,
    }


def test_a_key_leaves_its_group(owner):
    group = token_group_create(owner=owner, name="g")
    token, _ = api_token_create(owner=owner, name="k", group=group)

    assert api_token_set_group(token=token, group=None) is True
    assert api_token_set_group(token=token, group=None) is False
    assert ApiToken.objects.get(pk=token.pk).group is None


def test_a_key_cannot_join_someone_elses_group(owner):
    token, _ = api_token_create(owner=owner, name="k")
    theirs = token_group_create(owner=UserFactory(), name="theirs")

    with pytest.raises(ApplicationError, match="belongs to someone else"):
        api_token_set_group(token=token, group=theirs)
    assert ApiToken.objects.get(pk=token.pk).group is None


def test_the_admin_moves_a_key_but_not_into_someone_elses_group(staff_client, owner):
    mine = token_group_create(owner=owner, name="mine")
    theirs = token_group_create(owner=UserFactory(), name="theirs")
    token, _ = api_token_create(owner=owner, name="k", quota_tokens=10)
    ApiToken.objects.filter(pk=token.pk).update(quota_used_tokens=7)
    url = reverse("admin:accounts_apitoken_change", args=[token.pk])
    form = {
        "name": "k",
        "expires_at_0": "",
        "expires_at_1": "",
        "rpm": "",
        "tpm": "",
        "rpd": "",
        "quota_tokens": "10",
        "quota_reset": "manual",
        "alert_thresholds": "[80, 100]",
        "max_cost_per_request_micros": "",
        "credit_limit_micros": "",
    }

    refused = staff_client.post(url, {**form, "group": theirs.pk})
    token.refresh_from_db()
    assert refused.status_code == 200
    assert "The group belongs to someone else." in refused.content.decode()
    assert token.group is None

    moved = staff_client.post(url, {**form, "group": mine.pk})
    token.refresh_from_db()
    assert moved.status_code == 302
    assert (token.group, token.quota_used_tokens) == (mine, 7)
