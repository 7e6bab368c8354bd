"""The periodic jobs, listed once: Celery beat runs them as tasks (tokenbyte.settings builds
CELERY_BEAT_SCHEDULE from this list), and a relay process without beat (the embedded default)
runs the same services itself (relay/scheduler.py). Plain data: settings import it."""

from typing import NamedTuple


class Job(NamedTuple):
    name: str
    seconds: float
    task: str  # the Celery task, in tasks/tasks.py
    service: str  # the function it calls, "module:function"


PERIODIC_JOBS = (
    # Holds whose lease ran out (their process died) are released within a lease and this.
    Job("release-expired-holds", 10.0, "tasks.tasks.release_expired_holds",
        "billing.services:holds_release_expired"),
    Job("probe-disabled-channels", 60.0, "tasks.tasks.probe_disabled_channels",
        "catalog.services:channels_probe_disabled"),
    # Request logs past their owner's window (usage/services.py request_logs_expire).
    Job("expire-request-logs", 3600.0, "tasks.tasks.expire_request_logs",
        "usage.services:request_logs_expire"),
    # Quotas reset within a minute of their boundary; a double-fired beat resets once.
    Job("reset-due-quotas", 60.0, "tasks.tasks.reset_due_quotas",
        "billing.services:quotas_reset_due"),
    # Members' monthly allowances restart within a minute of the first (organization's zone).
    Job("reset-due-allowances", 60.0, "tasks.tasks.reset_due_allowances",
        "billing.services:allowances_reset_due"),
    # The console's playground keys live an hour; expired ones are deleted a day later.
    Job("delete-expired-playground-keys", 3600.0, "tasks.tasks.delete_expired_playground_keys",
        "accounts.services:playground_keys_delete_expired"),
    # The usage rollups are written with each settlement; this checks the last hours against
    # the logs and corrects drift (none, while the books are right).
    Job("reconcile-usage-rollups", 3600.0, "tasks.tasks.reconcile_usage_rollups",
        "usage.services:usage_rollups_reconcile"),
    # Async jobs past their deadline fail (the hold sweep releases their holds).
    Job("fail-overdue-tasks", 60.0, "tasks.tasks.fail_overdue_tasks",
        "tasks.services:async_tasks_fail_overdue"),
    # Stored media of async jobs, once its signed URLs have expired.
    Job("expire-task-media", 3600.0, "tasks.tasks.expire_task_media",
        "tasks.services:async_task_media_expire"),
)  # fmt: skip
