"""The playground's short-lived keys: issued for the browser, capped per user, cleaned up."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from threading import Barrier

import pytest
from django.db import connection
from django.utils import timezone
from freezegun import freeze_time

from accounts.models import ApiToken, AuditEvent
from accounts.services import (
    api_key_digest,
    playground_key_issue,
    playground_keys_delete_expired,
)
from relay import keys
from relay.http import RelayError
from tasks.schedule import PERIODIC_JOBS
from tasks.tasks import delete_expired_playground_keys
from tests.factories import ApiTokenFactory, RequestLogFactory, UserFactory
from usage.models import RequestLog

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)


def _live(user) -> list[ApiToken]:
    return list(
        ApiToken.objects.filter(owner=user, is_playground=True, status="enabled").order_by("pk")
    )


@freeze_time(NOW)
def test_it_issues_a_playground_key_that_expires_in_an_hour(owner):
    token, key = playground_key_issue(user=owner)

    token.refresh_from_db()
    assert token.owner == owner
    assert token.name == "Playground"
    assert token.is_playground is True
    assert token.status == "enabled"
    assert token.expires_at == NOW + timedelta(hours=1)
    assert token.created_at == NOW
    assert token.group is None
    assert token.organization is None
    assert token.allowed_models == []
    assert token.credit_limit_micros is None
    assert key.startswith("sk-")
    assert len(key) == 51
    assert token.prefix == key[:11]


def test_the_lifetime_follows_the_setting(owner, settings):
    settings.PLAYGROUND_KEY_TTL_SECONDS = 600

    with freeze_time(NOW):
        token, _ = playground_key_issue(user=owner)

    assert token.expires_at == NOW + timedelta(minutes=10)


def test_the_plaintext_is_stored_nowhere_and_works_only_through_its_digest(owner):
    token, key = playground_key_issue(user=owner)

    assert token.digest == api_key_digest(key)
    assert key not in repr(ApiToken.objects.filter(pk=token.pk).values().get())
    info = keys.lookup(api_key_digest(key))
    assert info.key_id == token.pk
    assert info.owner_id == owner.pk
    assert keys.check(info, None) is info
    # The plaintext itself is no digest of any key.
    assert keys.lookup(key) is None


def test_the_relay_refuses_the_key_once_it_expired(owner):
    with freeze_time(NOW):
        _, key = playground_key_issue(user=owner)
    info = keys.lookup(api_key_digest(key))

    with freeze_time(NOW + timedelta(minutes=59, seconds=59)):
        assert keys.check(info, None) is info
    with freeze_time(NOW + timedelta(hours=1)), pytest.raises(RelayError) as refused:
        keys.check(info, None)

    assert refused.value.status == 401
    assert refused.value.message == "This API key has expired."


def test_issuing_a_sixth_live_key_revokes_the_oldest(owner):
    issued = []
    for minute in range(6):
        with freeze_time(NOW + timedelta(minutes=minute)):
            issued.append(playground_key_issue(user=owner)[0])

    assert [t.pk for t in _live(owner)] == [t.pk for t in issued[1:]]
    oldest = ApiToken.objects.get(pk=issued[0].pk)
    assert oldest.status == "revoked"
    assert oldest.revoked_at == NOW + timedelta(minutes=5)


def test_the_cap_counts_live_keys_only_and_never_touches_other_keys(owner, outsider):
    own_key = ApiTokenFactory(owner=owner, name="production")
    with freeze_time(NOW - timedelta(hours=2)):
        expired = [playground_key_issue(user=owner)[0] for _ in range(3)]
    outsiders = [playground_key_issue(user=outsider)[0] for _ in range(5)]

    with freeze_time(NOW):
        fresh = [playground_key_issue(user=owner)[0] for _ in range(5)]

    assert [t.pk for t in _live(owner)] == sorted(t.pk for t in expired + fresh)
    assert [t.pk for t in _live(outsider)] == [t.pk for t in outsiders]
    own_key.refresh_from_db()
    assert own_key.status == "enabled"


def test_issuing_keys_writes_no_audit_event(owner):
    playground_key_issue(user=owner)
    playground_key_issue(user=owner)

    assert not AuditEvent.objects.filter(user=owner).exists()


def test_the_cleanup_deletes_only_playground_keys_expired_over_a_day_ago(owner, outsider):
    with freeze_time(NOW - timedelta(days=1, hours=2)):
        old, _ = playground_key_issue(user=owner)
        outsiders = [playground_key_issue(user=outsider)[0] for _ in range(6)]
        old_revoked = outsiders[0]
    with freeze_time(NOW - timedelta(hours=23)):
        recent, _ = playground_key_issue(user=owner)
    live, _ = playground_key_issue(user=owner)
    user_key = ApiTokenFactory(owner=owner, expires_at=NOW - timedelta(days=30))
    log = RequestLogFactory(user=owner, api_token=old, token_name="Playground")

    with freeze_time(NOW):
        deleted = playground_keys_delete_expired()

    assert deleted == 7
    assert not ApiToken.objects.filter(pk__in=[old.pk, old_revoked.pk]).exists()
    assert set(ApiToken.objects.values_list("pk", flat=True)) == {recent.pk, live.pk, user_key.pk}
    # The call stays in the logs under the key's name.
    log.refresh_from_db()
    assert log.api_token is None
    assert log.token_name == "Playground"
    assert RequestLog.objects.count() == 1


def test_the_cleanup_is_safe_to_run_twice(owner):
    with freeze_time(NOW - timedelta(days=2)):
        playground_key_issue(user=owner)

    with freeze_time(NOW):
        assert playground_keys_delete_expired() == 1
        assert playground_keys_delete_expired() == 0


def test_the_cleanup_runs_hourly_as_a_listed_job_and_a_celery_task(owner):
    job = next(job for job in PERIODIC_JOBS if job.name == "delete-expired-playground-keys")
    assert job.seconds == 3600.0
    assert job.task == "tasks.tasks.delete_expired_playground_keys"
    assert job.service == "accounts.services:playground_keys_delete_expired"
    with freeze_time(timezone.now() - timedelta(days=2)):
        playground_key_issue(user=owner)

    assert delete_expired_playground_keys() == 1
    assert not ApiToken.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_tabs_asking_at_once_still_leave_at_most_five_live_keys():
    user = UserFactory()
    barrier = Barrier(8)

    def issue(_: int) -> int:
        try:
            barrier.wait(timeout=10)
            return playground_key_issue(user=user)[0].pk
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        issued = list(pool.map(issue, range(8)))

    assert len(set(issued)) == 8
    assert len(_live(user)) == 5
    assert ApiToken.objects.filter(owner=user, status="revoked").count() == 3
