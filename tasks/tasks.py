"""Celery tasks: take ids, are safe to run twice, call one service each."""

from accounts.services import invitation_email_send, playground_keys_delete_expired
from billing.receipts import topup_receipt_email_send
from billing.services import (
    alert_email_send,
    allowances_reset_due,
    holds_release_expired,
    quotas_reset_due,
)
from catalog.services import channels_probe_disabled
from tasks.models import AsyncTask
from tasks.services import (
    async_task_media_expire,
    async_task_retry_delay,
    async_tasks_fail_overdue,
)
from tokenbyte.celery import app
from usage.services import request_logs_expire, usage_rollups_reconcile


@app.task(time_limit=120, soft_time_limit=100)
def release_expired_holds() -> int:
    return holds_release_expired()


@app.task(time_limit=300, soft_time_limit=280)
def probe_disabled_channels() -> list[str]:
    return channels_probe_disabled()


@app.task(time_limit=900, soft_time_limit=880)
def expire_request_logs() -> int:
    """Hourly: delete request logs older than their owner's retention window."""
    return request_logs_expire()


@app.task(time_limit=120, soft_time_limit=100)
def reset_due_quotas() -> int:
    """Every minute: reset the token quotas whose daily/weekly/monthly period ended."""
    return quotas_reset_due()


@app.task(time_limit=120, soft_time_limit=100)
def reset_due_allowances() -> int:
    """Every minute: start the new month of members' allowances where the month turned."""
    return allowances_reset_due()


@app.task(time_limit=300, soft_time_limit=280)
def delete_expired_playground_keys() -> int:
    """Hourly: delete the console's playground keys that expired over a day ago."""
    return playground_keys_delete_expired()


@app.task(
    time_limit=60,
    soft_time_limit=50,
    # SMTP trouble (refused connections, timeouts, SMTPException are all OSError) is retried a
    # few times, spaced out; the alert stays unsent (emailed_at empty) until one succeeds.
    autoretry_for=(OSError,),
    retry_backoff=30,
    max_retries=5,
)
def send_alert_email(alert_id: int) -> bool:
    return alert_email_send(alert_id=alert_id)


@app.task(
    time_limit=60,
    soft_time_limit=50,
    # Like the alert emails: SMTP trouble (all OSError) is retried a few times, spaced out; the
    # receipt stays unsent (receipt_emailed_at empty) until one succeeds.
    autoretry_for=(OSError,),
    retry_backoff=30,
    max_retries=5,
)
def send_topup_receipt(topup_id: int) -> bool:
    """After a top-up is credited: email its receipt (with the PDF) to the payer, once."""
    return topup_receipt_email_send(topup_id=topup_id)


@app.task(
    # Longer than any upstream read (120 s) with failover; the job's deadline bounds retries.
    time_limit=600,
    soft_time_limit=570,
    # Acknowledged after the run (settings: acks_late, reject_on_worker_lost): a worker killed
    # mid-job leaves the message to another, which finds the job running and runs it again
    # under the same request id (settled once), up to TASK_MAX_ATTEMPTS runs.
    acks_late=True,
    reject_on_worker_lost=True,
    bind=True,
    # Runs are bounded by the job itself (TASK_MAX_ATTEMPTS, counted on its row).
    max_retries=None,
)
def run_async_task(self, task_id: int) -> str:
    """Run one async job (POST /v1/tasks); a run that failed for now is retried later."""
    from relay.jobs import job_run

    outcome = job_run(task_id)
    if outcome == "retry":
        attempts = AsyncTask.objects.values_list("attempts", flat=True).get(pk=task_id)
        raise self.retry(countdown=async_task_retry_delay(attempts=attempts))
    return outcome


@app.task(time_limit=120, soft_time_limit=100)
def fail_overdue_tasks() -> int:
    """Every minute: fail jobs still unfinished past their deadline."""
    return async_tasks_fail_overdue()


@app.task(time_limit=300, soft_time_limit=280)
def expire_task_media() -> int:
    """Hourly: delete async jobs' stored media past its expiry."""
    return async_task_media_expire()


@app.task(time_limit=300, soft_time_limit=280)
def reconcile_usage_rollups() -> int:
    """Hourly: check the last hours' usage rollups against their logs, correcting any drift."""
    return usage_rollups_reconcile()


@app.task(
    time_limit=60,
    soft_time_limit=50,
    # Like the other emails: SMTP trouble (all OSError) is retried a few times, spaced out.
    autoretry_for=(OSError,),
    retry_backoff=30,
    max_retries=5,
)
def send_invitation_email(invitation_id: int) -> bool:
    """After an email invitation is created: send its link to the invited address."""
    return invitation_email_send(invitation_id=invitation_id)
