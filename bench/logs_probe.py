"""Timings of the logs and the dashboard at scale, inside one Django process (run by
bench/logs_scale.py against a database that `manage.py fill_logs` filled).

Server time is the time Django takes to answer, middleware, view, queries and template included,
measured through django.test.Client (no network). Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from datetime import UTC, timedelta
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbyte.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from accounts.models import ApiToken, TokenGroup, User  # noqa: E402
from accounts.scope import Scope  # noqa: E402
from tokenbyte.keyset import rows_after  # noqa: E402
from usage.models import RequestLog  # noqa: E402
from usage.selectors import (  # noqa: E402
    log_filters_parse,
    request_logs_filtered,
    request_logs_page,
)

HEAVY = "fill-0@fill.invalid"


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def timed(client: Client, url: str, repeats: int) -> dict:
    client.get(url)  # warm: plans and caches, as on a live server
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(percentile(times, 0.95), 2),
    }


def plan(user: User, params: dict, cursor: bool) -> str:
    filters = log_filters_parse(user=user, params=params)
    logs = request_logs_filtered(scope=Scope(user=user), filters=filters)
    if cursor:
        last = request_logs_page(logs).rows[-1]
        logs = rows_after(logs, when=last.created_at, pk=last.pk)
    return logs[:101].explain(analyze=True, buffers=True)


def main() -> None:
    repeats = int(os.environ.get("PROBE_REPEATS", "40"))
    user = User.objects.get(email=HEAVY)
    client = Client()
    client.force_login(user)
    key = ApiToken.objects.filter(owner=user, name="production").get()
    group = TokenGroup.objects.filter(owner=user).get()
    day = (timezone.now() - timedelta(days=45)).astimezone(UTC).date()
    cases = {
        "none": {},
        "model (30 % of rows)": {"model": "gpt-5.4-mini"},
        "model (2 % of rows)": {"model": "claude-opus-4.8"},
        "key": {"key": str(key.pk)},
        "group": {"group": str(group.pk)},
        "call type (embeddings)": {"call_type": "embeddings"},
        "status error (5 %)": {"status": "error"},
        "status 429 (2 %)": {"status": "429"},
        "time range (one day)": {"from": day.isoformat(), "to": day.isoformat()},
    }
    result: dict = {"user_rows": RequestLog.objects.filter(user=user).count(), "pages": {}}
    for name, params in cases.items():
        query = urlencode(params)
        first = timed(client, f"/logs/?{query}", repeats)
        filters = log_filters_parse(user=user, params=params)
        logs = request_logs_filtered(scope=Scope(user=user), filters=filters)
        cursor = request_logs_page(logs).next_cursor
        following = timed(client, f"/logs/?{urlencode({**params, 'cursor': cursor})}", repeats)
        api = timed(client, f"/api/logs/?{query}", repeats)
        result["pages"][name] = {
            "first": first, "next": following, "api_first": api,
            "plan_first": plan(user, params, cursor=False),
            "plan_next": plan(user, params, cursor=True),
        }  # fmt: skip
    result["dashboard"] = timed(client, "/dashboard/", repeats)
    result["usage_page"] = timed(client, "/usage/?range=90d", max(5, repeats // 4))
    result["csv"] = csv_export(client, user)
    print(json.dumps(result))


def csv_export(client: Client, user: User) -> dict:
    """Stream the CSV of the user's newest million rows (or all, when fewer), counting rows and
    watching the process's memory."""
    target = 1_000_000
    logs = RequestLog.objects.filter(user=user).order_by("-created_at", "-id")
    total = logs.count()
    params = {}
    if total > target:
        boundary = logs.values_list("created_at", flat=True)[target - 1]
        params["from"] = boundary.astimezone(UTC).isoformat()
    connection.close()
    rss_before = rss_mb()
    rss_peak = rss_before
    started = time.perf_counter()
    response = client.get(f"/logs/export.csv?{urlencode(params)}")
    lines = 0
    for n, chunk in enumerate(response.streaming_content):
        lines += chunk.count(b"\n")
        if n % 50 == 0:
            rss_peak = max(rss_peak, rss_mb())
    elapsed = time.perf_counter() - started
    rows = lines - 1  # the header
    return {
        "rows": rows,
        "seconds": round(elapsed, 2),
        "rows_per_second": round(rows / elapsed),
        "rss_before_mb": round(rss_before, 1),
        "rss_peak_mb": round(rss_peak, 1),
    }


if __name__ == "__main__":
    main()
