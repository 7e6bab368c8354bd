"""/profile/: who the user is, how they sign in, their settings and their account's activity."""

from datetime import UTC, datetime

import pytest
from allauth.account.models import EmailAddress

from accounts.models import AuditEvent, QuotaReset, User
from accounts.services import api_token_create, audit_event_record, user_profile_update
from tests.factories import UserFactory
from tokenbyte.errors import ApplicationError

pytestmark = pytest.mark.django_db

SETTINGS = {
    "name": "Ann Example",
    "time_zone": "Asia/Tokyo",
    "extended_log_archive": "on",
    "notify_low_balance": "on",
}


@pytest.fixture
def ann(verified_user):
    return verified_user("ann@example.com")


@pytest.fixture
def ann_client(client, ann):
    client.force_login(ann)
    return client


def test_a_signed_out_visitor_is_sent_to_the_login_page(client):
    response = client.get("/profile/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/profile/"


def test_the_page_shows_the_address_role_and_links_to_allauths_pages(ann_client):
    page = ann_client.get("/profile/")

    html = page.content.decode()
    assert page.status_code == 200
    assert "ann@example.com" in html
    assert '<span id="role" class="badge">User</span>' in html
    for url in (
        "/accounts/email/",
        "/accounts/password/change/",
        "/accounts/3rdparty/",
        "/accounts/2fa/",
        "/accounts/2fa/webauthn/add/",
        "/accounts/2fa/totp/activate/",
    ):
        assert f'href="{url}"' in html, url
    assert '<option value="UTC" selected>UTC</option>' in html


def test_saving_the_form_changes_the_settings(ann_client, ann):
    response = ann_client.post("/profile/", SETTINGS)

    assert response.status_code == 302
    assert response["Location"] == "/profile/"
    ann.refresh_from_db()
    assert (
        ann.name,
        ann.time_zone,
        ann.extended_log_archive,
        ann.notify_quota_alerts,
        ann.notify_low_balance,
    ) == ("Ann Example", "Asia/Tokyo", True, False, True)
    assert [str(m) for m in response.wsgi_request._messages] == ["Your profile is saved."]


def test_an_unknown_time_zone_is_refused_and_nothing_changes(ann_client, ann):
    response = ann_client.post("/profile/", {**SETTINGS, "time_zone": "Mars/Olympus_Mons"})

    assert response.status_code == 200
    assert response.context["form"].errors == {
        "time_zone": [
            "Select a valid choice. Mars/Olympus_Mons is not one of the available choices."
        ]
    }
    ann.refresh_from_db()
    assert (ann.name, ann.time_zone, ann.extended_log_archive, ann.notify_quota_alerts) == (
        "",
        "UTC",
        False,
        True,
    )


def test_the_service_refuses_an_unknown_zone_too():
    user = UserFactory(name="Bo")

    with pytest.raises(ApplicationError) as raised:
        user_profile_update(
            user=user,
            name="Bob",
            time_zone="Nowhere/Else",
            extended_log_archive=True,
            notify_quota_alerts=False,
            notify_low_balance=False,
        )

    assert raised.value.message == "unknown time zone: 'Nowhere/Else'"
    user.refresh_from_db()
    assert (user.name, user.time_zone, user.notify_quota_alerts) == ("Bo", "UTC", True)


def test_a_new_time_zone_moves_the_next_quota_reset_to_its_midnight(ann_client, ann):
    token, _ = api_token_create(owner=ann, name="daily", quota_reset=QuotaReset.DAILY)
    token.refresh_from_db()
    assert token.quota_next_reset_at.astimezone(UTC).time().isoformat() == "00:00:00"

    ann_client.post("/profile/", SETTINGS)

    token.refresh_from_db()
    # Midnight in Tokyo is 15:00 UTC.
    assert token.quota_next_reset_at.astimezone(UTC).time().isoformat() == "15:00:00"


def test_saving_unchanged_settings_writes_nothing():
    user = UserFactory()

    changed = user_profile_update(
        user=user,
        name="",
        time_zone="UTC",
        extended_log_archive=False,
        notify_quota_alerts=True,
        notify_low_balance=True,
    )

    assert changed == []


def test_the_activity_list_shows_the_users_events_in_their_time_zone(ann_client, ann, rf):
    User.objects.filter(pk=ann.pk).update(time_zone="America/New_York")
    request = rf.get("/", HTTP_USER_AGENT="Firefox/140", REMOTE_ADDR="203.0.113.7")
    event = audit_event_record(user=ann, kind="signed_in", request=request, detail="password")
    AuditEvent.objects.filter(pk=event.pk).update(
        created_at=datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    )
    audit_event_record(user=UserFactory(), kind="key_created", detail="someone else's key")

    html = ann_client.get("/profile/").content.decode()

    assert "times in America/New_York" in html
    assert (
        '<td><time datetime="2026-07-01T08:00:00-04:00">2026-07-01 08:00:00</time></td>\n'
        "          <td>Signed in</td>\n"
        "          <td>password</td>\n"
        "          <td>203.0.113.7</td>\n"
        '          <td class="muted">Firefox/140</td>'
    ) in html
    assert "someone else" not in html


def test_an_unverified_second_address_is_listed_as_such(ann_client, ann):
    EmailAddress.objects.create(user=ann, email="ann@work.example", verified=False)

    html = ann_client.get("/profile/").content.decode()

    assert "ann@work.example" in html
    assert '<span class="badge badge-warn">unverified</span>' in html
