"""What a relay-only process (relay.asgi) loads: its memory is a benchmark target."""

import subprocess
import sys

from tests.relay.conftest import ROOT

PROBE = """
import sys
import relay.asgi
from relay import upstream, views
print(sorted(name for name in ("celery", "kombu", "httpx") if name in sys.modules))
"""


def test_a_relay_only_process_loads_neither_celery_nor_httpx():
    # Together ~17 MB of a ~110 MB process: Celery is needed only to queue an alert email and
    # httpx only when chosen as the upstream client; both are imported when that happens.
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"
