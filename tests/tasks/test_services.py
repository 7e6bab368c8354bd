"""The job bookkeeping: the hold at submit, deadlines, exhausted attempts (no worker needed)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.services import api_token_create
from billing.holds import HoldRefused
from billing.models import Hold
from billing.selectors import wallet_ledger_sum_micros
from billing.services import credit_grant, holds_release_expired, wallet_get_or_create
from relay.keys import digest_of, lookup
from tasks.models import AsyncTask
from tasks.services import async_task_start, async_task_submit, async_tasks_fail_overdue
from tests.factories import UserFactory
from tokenbyte.errors import ApplicationError
from usage.models import RequestLog

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(settings):
    settings.TASK_MAX_ATTEMPTS = 2
    user = UserFactory()
    wallet = wallet_get_or_create(user=user)
    credit_grant(wallet=wallet, amount_micros=100_000, reason="test")
    _, secret = api_token_create(owner=user, name="jobs")
    return lookup(digest_of(secret))


def submit(key, **changes):
    fields = {
        "key": key, "task_type": "image.generation", "model_id": "img",
        "job_input": {"prompt": "a fox"}, "idempotency_key": "", "hold_micros": 40_000,
    }  # fmt: skip
    return async_task_submit(**{**fields, **changes})


def wallet_of(key):
    wallet = wallet_get_or_create(user=UserFactory._meta.model.objects.get(pk=key.owner_id))
    assert wallet.balance_micros == wallet_ledger_sum_micros(wallet=wallet)
    return wallet


def test_a_submit_holds_the_worst_case_with_a_lease_until_the_deadline(key, settings):
    task, created = submit(key)

    hold = Hold.objects.get(request_id=task.request_id)
    assert created
    assert (task.status, task.kind, hold.amount_micros) == ("queued", "image_generation", 40_000)
    assert hold.expires_at == task.deadline_at
    lease = task.deadline_at - task.created_at
    assert timedelta(seconds=settings.TASK_DEADLINE_SECONDS) <= lease < timedelta(seconds=901)
    assert wallet_of(key).held_micros == 40_000


def test_a_submit_over_the_balance_is_refused_and_writes_nothing(key):
    with pytest.raises(HoldRefused):
        submit(key, hold_micros=100_001)

    assert not AsyncTask.objects.exists()
    assert wallet_of(key).held_micros == 0


def test_an_idempotency_key_returns_the_first_job_and_refuses_another(key):
    first, _ = submit(key, idempotency_key="k1")
    again, created = submit(key, idempotency_key="k1")

    assert (again.pk, created) == (first.pk, False)
    with pytest.raises(ApplicationError) as error:
        submit(key, idempotency_key="k1", job_input={"prompt": "another"})
    assert error.value.code == "idempotency_key_reused"
    assert wallet_of(key).held_micros == 40_000


def test_a_job_past_its_deadline_fails_and_its_hold_is_released_by_the_sweep(key):
    task, _ = submit(key)
    later = timezone.now() + timedelta(seconds=901)

    assert async_tasks_fail_overdue(now=later) == 1
    assert holds_release_expired(now=later) == 1

    task.refresh_from_db()
    assert (task.status, task.cost_micros) == ("failed", 0)
    assert "deadline" in task.error
    assert async_task_start(task_id=task.pk, now=later) is None
    wallet = wallet_of(key)
    assert (wallet.balance_micros, wallet.held_micros) == (100_000, 0)


def test_a_job_whose_runs_keep_dying_fails_after_its_attempts_and_costs_nothing(key):
    task, _ = submit(key)
    assert async_task_start(task_id=task.pk).attempts == 1
    assert async_task_start(task_id=task.pk).attempts == 2  # the first worker died

    assert async_task_start(task_id=task.pk) is None

    task.refresh_from_db()
    assert (task.status, task.cost_micros) == ("failed", 0)
    assert task.error == "The job stopped 2 times before finishing; nothing was charged."
    log = RequestLog.objects.get(request_id=task.request_id)
    assert (log.status_code, log.cost_micros, log.endpoint) == (500, 0, "tasks")
    wallet = wallet_of(key)
    assert (wallet.balance_micros, wallet.held_micros) == (100_000, 0)
