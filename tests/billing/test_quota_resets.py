"""Token quota periods: boundaries in the owner's time zone, scheduled and manual resets."""

from datetime import UTC, datetime

import pytest
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.urls import reverse
from freezegun import freeze_time

from accounts.models import ApiToken, TokenGroup
from accounts.services import api_token_create, quota_next_reset, token_group_create
from billing.holds import HoldParts
from billing.models import Hold
from billing.services import (
    call_settle_orm,
    credit_grant,
    hold_acquire,
    quota_reset,
    quotas_reset_due,
    wallet_get_or_create,
)
from tests.billing.test_holds import charge_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

NEW_YORK = "America/New_York"  # UTC-5, UTC-4 from 8 March 2026 (DST)
KOLKATA = "Asia/Kolkata"  # UTC+5:30, no DST


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "zone", "after", "expected"),
    [
        # 23:30 in New York on Saturday 7 March: the next local midnight is 05:00 UTC.
        ("daily", NEW_YORK, utc(2026, 3, 8, 4, 30), utc(2026, 3, 8, 5)),
        # The day DST starts is 23 hours long: the following midnight is 04:00 UTC.
        ("daily", NEW_YORK, utc(2026, 3, 8, 17), utc(2026, 3, 9, 4)),
        # Exactly at a boundary: the next one, not the same.
        ("daily", NEW_YORK, utc(2026, 3, 9, 4), utc(2026, 3, 10, 4)),
        # Wednesday 4 March: next Monday (9 March) at local midnight, after the DST change.
        ("weekly", NEW_YORK, utc(2026, 3, 4, 12), utc(2026, 3, 9, 4)),
        # A Monday afternoon: the Monday after.
        ("weekly", KOLKATA, utc(2026, 3, 9, 12), utc(2026, 3, 15, 18, 30)),
        # 22:00 on 31 December in Kolkata is 16:30 UTC; 1 January 00:00 IST is 18:30 UTC.
        ("monthly", KOLKATA, utc(2026, 12, 31, 16, 30), utc(2026, 12, 31, 18, 30)),
        # Still 31 January in New York (UTC-5) though 1 February in UTC.
        ("monthly", NEW_YORK, utc(2026, 2, 1, 3), utc(2026, 2, 1, 5)),
        ("manual", KOLKATA, utc(2026, 3, 4, 12), None),
    ],
)
def test_the_next_reset_is_the_owners_local_boundary(period, zone, after, expected):
    assert quota_next_reset(period=period, time_zone=zone, after=after) == expected


def test_an_unknown_time_zone_falls_back_to_utc():
    after = utc(2026, 3, 4, 12)

    assert quota_next_reset(period="daily", time_zone="Mars/Olympus", after=after) == utc(
        2026, 3, 5
    )


@freeze_time("2026-03-04 12:00:00+00:00")
def test_creating_a_key_or_group_schedules_its_first_reset():
    owner = UserFactory(time_zone=KOLKATA)

    token, _ = api_token_create(owner=owner, name="k", quota_tokens=100, quota_reset="daily")
    group = token_group_create(owner=owner, name="g", quota_tokens=100, quota_reset="monthly")
    manual, _ = api_token_create(owner=owner, name="m", quota_tokens=100)

    assert token.quota_next_reset_at == utc(2026, 3, 4, 18, 30)
    assert group.quota_next_reset_at == utc(2026, 3, 31, 18, 30)
    assert manual.quota_next_reset_at is None


def _daily_key(used: int = 700) -> ApiToken:
    owner = UserFactory(time_zone=NEW_YORK)
    token, _ = api_token_create(owner=owner, name="k", quota_tokens=1000, quota_reset="daily")
    ApiToken.objects.filter(pk=token.pk).update(quota_used_tokens=used, quota_alerted_percent=80)
    token.refresh_from_db()
    return token


def test_a_daily_quota_resets_at_the_owners_midnight_and_once_only():
    with freeze_time("2026-03-04 12:00:00+00:00"):
        token = _daily_key()
    boundary = utc(2026, 3, 5, 5)  # midnight in New York
    assert token.quota_next_reset_at == boundary

    before = quotas_reset_due(now=utc(2026, 3, 5, 4, 59, 59))
    token.refresh_from_db()
    assert (before, token.quota_used_tokens) == (0, 700)

    at = quotas_reset_due(now=utc(2026, 3, 5, 5, 0, 30))
    # The beat fires twice, or two workers run it: the second finds nothing due.
    again = quotas_reset_due(now=utc(2026, 3, 5, 5, 0, 31))
    later = quotas_reset_due(now=utc(2026, 3, 5, 20))

    token.refresh_from_db()
    assert (at, again, later) == (1, 0, 0)
    assert token.quota_used_tokens == 0
    assert token.quota_alerted_percent == 0
    assert token.quota_last_reset_at == boundary
    assert token.quota_next_reset_at == utc(2026, 3, 6, 5)


def test_a_beat_that_missed_days_resets_once_and_schedules_the_next_boundary_from_now():
    with freeze_time("2026-03-04 12:00:00+00:00"):
        token = _daily_key()

    assert quotas_reset_due(now=utc(2026, 3, 9, 12)) == 1

    token.refresh_from_db()
    # Three boundaries passed: one reset, and the next boundary is the one after "now"
    # (New York is on daylight time by then: midnight is 04:00 UTC).
    assert token.quota_last_reset_at == utc(2026, 3, 5, 5)
    assert token.quota_next_reset_at == utc(2026, 3, 10, 4)


def test_weekly_and_monthly_groups_reset_on_their_own_boundaries():
    owner = UserFactory(time_zone=KOLKATA)
    with freeze_time("2026-03-04 12:00:00+00:00"):
        weekly = token_group_create(owner=owner, name="w", quota_tokens=10, quota_reset="weekly")
        monthly = token_group_create(owner=owner, name="m", quota_tokens=10, quota_reset="monthly")
    TokenGroup.objects.update(quota_used_tokens=10)

    assert quotas_reset_due(now=utc(2026, 3, 8, 18, 29)) == 0
    assert quotas_reset_due(now=utc(2026, 3, 8, 18, 30)) == 1  # Monday 9 March, 00:00 IST
    assert quotas_reset_due(now=utc(2026, 3, 31, 18, 30)) == 2  # 1 April, and the week again

    weekly.refresh_from_db()
    monthly.refresh_from_db()
    assert (weekly.quota_used_tokens, monthly.quota_used_tokens) == (0, 0)
    assert weekly.quota_next_reset_at == utc(2026, 4, 5, 18, 30)
    assert monthly.quota_next_reset_at == utc(2026, 4, 30, 18, 30)


def test_a_manual_quota_is_never_reset_by_the_schedule():
    owner = UserFactory()
    token, _ = api_token_create(owner=owner, name="k", quota_tokens=10)
    ApiToken.objects.filter(pk=token.pk).update(quota_used_tokens=10)

    assert quotas_reset_due(now=utc(2099, 1, 1)) == 0


def test_a_reset_keeps_what_calls_in_flight_hold_so_their_settlement_stays_exact():
    token = _daily_key(used=500)
    wallet = wallet_get_or_create(user=token.owner)
    credit_grant(wallet=wallet, amount_micros=1_000_000, reason="test")
    hold_acquire(
        request_id="req_in_flight",
        wallet_id=wallet.pk,
        amount_micros=400,
        parts=HoldParts(tokens=38, key_id=token.pk, key_quota=True),
        lease_seconds=60,
    )
    token.refresh_from_db()
    assert token.quota_used_tokens == 538

    quota_reset(obj=token)
    assert token.quota_used_tokens == 38  # the new period starts with the call in flight
    call_settle_orm(charge_for("req_in_flight", wallet, token, 400, 108, 13))

    token.refresh_from_db()
    assert token.quota_used_tokens == 13
    assert Hold.objects.get().status == "settled"


def test_the_command_resets_a_key_a_group_or_everything_of_a_user(capsys):
    owner = UserFactory(email="ops@example.com")
    token, _ = api_token_create(owner=owner, name="k", quota_tokens=10)
    api_token_create(owner=owner, name="no-quota")
    group = token_group_create(owner=owner, name="g", quota_tokens=10)
    ApiToken.objects.update(quota_used_tokens=7)
    TokenGroup.objects.update(quota_used_tokens=9)

    call_command("reset_quota", f"--key-id={token.pk}")
    assert capsys.readouterr().out == f"Reset the token quota of key 'k' (id {token.pk}).\n"
    token.refresh_from_db()
    assert token.quota_used_tokens == 0
    assert token.quota_last_reset_at is not None

    call_command("reset_quota", f"--group-id={group.pk}")
    group.refresh_from_db()
    assert group.quota_used_tokens == 0

    ApiToken.objects.update(quota_used_tokens=7)
    TokenGroup.objects.update(quota_used_tokens=9)
    call_command("reset_quota", "--email=OPS@example.com")
    assert capsys.readouterr().out.endswith(
        "Reset the token quota of 1 key(s) and 1 group(s) of ops@example.com.\n"
    )
    assert sorted(ApiToken.objects.values_list("name", "quota_used_tokens")) == [
        ("k", 0),
        ("no-quota", 7),  # no quota: nothing to reset
    ]
    assert TokenGroup.objects.get().quota_used_tokens == 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--key-id=999999"], "no key with id 999999"),
        (["--email=nobody@example.com"], "no user with email nobody@example.com"),
        ([], "one of the arguments --key-id --group-id --email is required"),
    ],
)
def test_the_command_refuses_what_it_cannot_find(args, error):
    with pytest.raises(CommandError, match=error):
        call_command("reset_quota", *args)


def test_the_command_refuses_a_key_without_a_quota():
    token, _ = api_token_create(owner=UserFactory(), name="free")

    with pytest.raises(CommandError, match="has no token quota"):
        call_command("reset_quota", f"--key-id={token.pk}")


def test_the_admin_action_resets_the_selected_quotas(staff_client):
    owner = UserFactory()
    token, _ = api_token_create(owner=owner, name="k", quota_tokens=10)
    free, _ = api_token_create(owner=owner, name="free")
    ApiToken.objects.update(quota_used_tokens=7)

    response = staff_client.post(
        reverse("admin:accounts_apitoken_changelist"),
        {"action": "reset_quotas", "_selected_action": [token.pk, free.pk]},
    )

    assert response.status_code == 302
    assert [m.message for m in get_messages(response.wsgi_request)] == [
        "Reset the token quota of 1 key.",
        "1 key has no token quota.",
    ]
    assert dict(ApiToken.objects.values_list("name", "quota_used_tokens")) == {
        "k": 0,
        "free": 7,
    }


@freeze_time("2026-03-04 12:00:00+00:00")
def test_changing_the_period_in_the_admin_reschedules_without_touching_the_counters(staff_client):
    owner = UserFactory(time_zone=KOLKATA)
    group = token_group_create(owner=owner, name="g", quota_tokens=100)
    TokenGroup.objects.filter(pk=group.pk).update(quota_used_tokens=42)

    response = staff_client.post(
        reverse("admin:accounts_tokengroup_change", args=[group.pk]),
        {
            "name": "g",
            "description": "",
            "owner": owner.pk,
            "organization": "",
            "quota_tokens": "100",
            "quota_reset": "daily",
            "alert_thresholds": "[80, 100]",
            "credit_limit_micros": "",
        },
    )

    assert response.status_code == 302
    group.refresh_from_db()
    assert group.quota_reset == "daily"
    assert group.quota_next_reset_at == utc(2026, 3, 4, 18, 30)
    assert group.quota_used_tokens == 42


@freeze_time("2026-03-04 12:00:00+00:00")
def test_a_new_time_zone_moves_the_next_reset_to_the_new_local_midnight(staff_client):
    owner = UserFactory(email="tz@example.com", time_zone="UTC")
    token, _ = api_token_create(owner=owner, name="k", quota_tokens=100, quota_reset="daily")
    assert token.quota_next_reset_at == utc(2026, 3, 5)

    response = staff_client.post(
        reverse("admin:accounts_user_change", args=[owner.pk]),
        {
            "email": "tz@example.com",
            "role": "user",
            "time_zone": KOLKATA,
            "is_active": "on",
            "log_retention_days": "30",
        },
    )

    assert response.status_code == 302
    token.refresh_from_db()
    assert token.quota_next_reset_at == utc(2026, 3, 4, 18, 30)
