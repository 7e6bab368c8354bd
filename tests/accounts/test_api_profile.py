"""/api/profile/: read and change the Profile page's settings, by access token and by session;
the page's rules apply, and each user only ever reaches their own profile."""

import json

import pytest
from django.test import override_settings

from accounts.models import User
from tests.factories import PersonalAccessTokenFactory

pytestmark = pytest.mark.django_db

SETTINGS = [
    "name",
    "time_zone",
    "extended_log_archive",
    "notify_quota_alerts",
    "notify_low_balance",
]


def bearer(user) -> dict:
    return {"Authorization": f"Bearer {PersonalAccessTokenFactory(user=user).secret}"}


def patch(client, body: dict, **kwargs):
    return client.patch(
        "/api/profile/", json.dumps(body), content_type="application/json", **kwargs
    )


def settings_of(user: User) -> dict:
    user.refresh_from_db()
    return {field: getattr(user, field) for field in SETTINGS}


def test_the_profile_shows_the_users_settings(client, owner):
    User.objects.filter(pk=owner.pk).update(name="Ada", time_zone="Europe/Paris")

    response = client.get("/api/profile/", headers=bearer(owner))

    assert response.status_code == 200
    assert response.json() == {
        "email": "owner@example.com",
        "name": "Ada",
        "role": "user",
        "time_zone": "Europe/Paris",
        "extended_log_archive": False,
        "log_retention_days": 30,
        "notify_quota_alerts": True,
        "notify_low_balance": True,
    }


@override_settings(LOG_RETENTION_DAYS=30, LOG_ARCHIVE_DAYS=365)
def test_turning_extended_archiving_on_answers_the_longer_retention(owner_client, owner):
    response = patch(owner_client, {"extended_log_archive": True})

    assert response.status_code == 200
    assert response.json()["extended_log_archive"] is True
    assert response.json()["log_retention_days"] == 365


def test_a_patch_changes_only_the_fields_it_sends(client, owner):
    response = patch(
        client, {"time_zone": "Asia/Tokyo", "notify_low_balance": False}, headers=bearer(owner)
    )

    assert response.status_code == 200
    assert response.json()["time_zone"] == "Asia/Tokyo"
    assert settings_of(owner) == {
        "name": "",
        "time_zone": "Asia/Tokyo",
        "extended_log_archive": False,
        "notify_quota_alerts": True,
        "notify_low_balance": False,
    }


def test_a_session_patches_the_profile_like_a_token(owner_client, owner):
    response = patch(owner_client, {"name": "  Ada Lovelace  ", "extended_log_archive": True})

    assert response.status_code == 200
    assert settings_of(owner)["name"] == "Ada Lovelace"
    assert settings_of(owner)["extended_log_archive"] is True


def test_an_unknown_time_zone_is_a_400_on_time_zone_and_changes_nothing(owner_client, owner):
    before = settings_of(owner)

    response = patch(owner_client, {"time_zone": "Mars/Olympus_Mons", "name": "Ada"})

    assert response.status_code == 400
    message = "Select a valid choice. Mars/Olympus_Mons is not one of the available choices."
    assert response.json() == {
        "error": {
            "type": "invalid_request",
            "code": "invalid",
            "message": f"time_zone: {message}",
            "fields": {"time_zone": [message]},
        }
    }
    assert settings_of(owner) == before


def test_a_name_longer_than_the_profile_page_allows_is_a_400_on_name(owner_client, owner):
    before = settings_of(owner)

    response = patch(owner_client, {"name": "x" * 151})

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "name": ["Ensure this field has no more than 150 characters."]
    }
    assert settings_of(owner) == before


def test_a_switch_that_is_not_a_boolean_is_a_400_on_that_switch(owner_client, owner):
    response = patch(owner_client, {"notify_quota_alerts": "sometimes"})

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "notify_quota_alerts": ["Must be a valid boolean."]
    }
    assert settings_of(owner)["notify_quota_alerts"] is True


def test_email_and_role_cannot_be_changed_here(owner_client, owner):
    response = patch(owner_client, {"email": "mallory@example.com", "role": "admin"})

    owner.refresh_from_db()
    assert response.status_code == 200
    assert (owner.email, owner.role) == ("owner@example.com", "user")


def test_the_outsiders_token_reads_and_changes_the_outsiders_profile_only(client, owner, outsider):
    headers = bearer(outsider)
    before = settings_of(owner)

    read = client.get("/api/profile/", headers=headers)
    patch(client, {"name": "Mallory"}, headers=headers)

    assert read.json()["email"] == "outsider@example.com"
    assert settings_of(outsider)["name"] == "Mallory"
    assert settings_of(owner) == before


@pytest.mark.parametrize("method", ["get", "patch"])
def test_the_profile_needs_authentication(client, method):
    response = getattr(client, method)("/api/profile/")

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_put_is_not_allowed_on_the_profile(owner_client):
    response = owner_client.put("/api/profile/", "{}", content_type="application/json")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
