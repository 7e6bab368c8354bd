"""Services queue Celery tasks by name; a fresh process must know those names when it queues."""

import os
import subprocess
import sys
from pathlib import Path

from billing.services import SEND_ALERT_EMAIL

ROOT = Path(__file__).resolve().parents[2]
# A fresh process in eager mode (the embedded default: no broker) queues a task by name, as a
# service does, without importing any task module itself.
PROBE = """
import django
django.setup()
from tokenbyte.celery import app, task_queue
app.conf.task_always_eager = True
result = task_queue("tasks.tasks.fail_overdue_tasks")
print(type(result).__name__, result.result)
print(sorted(name for name in app.tasks if name.startswith("tasks.")))
"""


def test_a_task_queued_by_name_in_a_fresh_process_runs(transactional_db, settings):
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tokenbyte.settings"}

    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    ran, names = result.stdout.strip().splitlines()
    assert ran == "EagerResult 0"  # it ran, here: no overdue jobs
    assert SEND_ALERT_EMAIL in names
    assert "tasks.tasks.send_topup_receipt" in names
