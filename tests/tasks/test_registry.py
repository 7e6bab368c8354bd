"""Services queue Celery tasks by name; every process must know those names."""

from billing.payments import SEND_RECEIPT
from billing.services import SEND_ALERT_EMAIL

PROBE = (
    "from tokenbyte.celery import app; "
    "print(sorted(name for name in app.tasks if name.startswith('tasks.')))"
)


def test_a_fresh_process_knows_the_tasks_services_queue_by_name(manage):
    # Without them registered, the embedded default's eager mode would drop them unsent.
    result = manage("shell", "-c", PROBE)

    assert result.returncode == 0, result.stderr
    assert SEND_RECEIPT in result.stdout
    assert SEND_ALERT_EMAIL in result.stdout
