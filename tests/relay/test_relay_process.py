"""What a relay-only process (relay.asgi) loads: its memory is a benchmark target."""

import os
import subprocess
import sys

from relay.http import new_request_id
from tests.relay.conftest import ROOT

PROBE = """
import sys
import relay.asgi
from relay import endpoints, upstream
NOT_LOADED = ("celery", "kombu", "httpx", "redis", "mockupstream", "bench")
print(sorted(name for name in NOT_LOADED if name in sys.modules))
"""


def test_a_relay_only_process_loads_neither_celery_nor_httpx_nor_redis_nor_the_mock():
    # Together ~23 MB of a ~110 MB process: Celery is needed only to queue an alert email,
    # httpx only when chosen as the upstream client, the Redis client for the first key with a
    # rate limit; each is imported when that happens. The mock upstream and the benchmark's
    # clients are never part of a relay.
    # Not pytest-django's DJANGO_SETTINGS_MODULE: relay.asgi picks its own (settings_relay).
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


def test_request_ids_are_unique_within_a_process_and_across_forked_workers():
    ids = [new_request_id() for _ in range(1000)]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker forked by a server after import
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read_end, 100).decode()
    os.close(read_end)
    os.close(write_end)

    assert len(set(ids)) == 1000
    assert all(len(i) <= 64 for i in ids)  # the log's column
    assert child[:20] != ids[0][:20]  # another random prefix, not the parent's next number
