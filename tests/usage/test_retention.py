"""Request logs leave after their owner's window; rollups (usage statistics) stay."""

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from tests.factories import RequestLogFactory, UsageRollupFactory, UserFactory
from usage.models import RequestLog, UsageRollup
from usage.services import request_logs_expire

pytestmark = pytest.mark.django_db


def log_aged(user, days: float, name: str) -> RequestLog:
    return RequestLogFactory(
        user=user, request_id=name, created_at=timezone.now() - timedelta(days=days)
    )


def remaining() -> set[str]:
    return set(RequestLog.objects.values_list("request_id", flat=True))


@override_settings(LOG_RETENTION_DAYS=30, LOG_ARCHIVE_DAYS=365)
def test_logs_older_than_the_window_go_and_newer_ones_stay():
    user = UserFactory()
    log_aged(user, 31, "old")
    log_aged(user, 29, "recent")

    assert request_logs_expire() == 1

    assert remaining() == {"recent"}


@override_settings(LOG_RETENTION_DAYS=30, LOG_ARCHIVE_DAYS=365)
def test_a_user_with_extended_archiving_keeps_logs_for_the_archive_window():
    archiver = UserFactory(extended_log_archive=True)
    plain = UserFactory()
    log_aged(archiver, 200, "archived")
    log_aged(archiver, 366, "too-old-even-archived")
    log_aged(plain, 200, "plain-old")

    request_logs_expire()

    assert remaining() == {"archived"}


@override_settings(LOG_RETENTION_DAYS=30, LOG_ARCHIVE_DAYS=365)
def test_a_window_set_by_staff_for_one_user_applies_to_that_user_only():
    short = UserFactory(log_retention_days=7)
    other = UserFactory()
    log_aged(short, 8, "short-old")
    log_aged(other, 8, "other-kept")

    request_logs_expire()

    assert remaining() == {"other-kept"}


@override_settings(LOG_RETENTION_DAYS=30)
def test_deleting_runs_in_bounded_batches_and_the_next_run_goes_on():
    user = UserFactory()
    for n in range(5):
        log_aged(user, 40, f"old-{n}")

    assert request_logs_expire(batch=2, max_batches=2) == 4
    assert request_logs_expire(batch=2, max_batches=2) == 1
    assert remaining() == set()


@override_settings(LOG_RETENTION_DAYS=30)
def test_usage_rollups_are_never_removed_with_the_logs():
    user = UserFactory()
    log_aged(user, 40, "old")
    UsageRollupFactory(user=user, hour=timezone.now() - timedelta(days=40))

    request_logs_expire()

    assert remaining() == set()
    assert UsageRollup.objects.count() == 1
