#!/usr/bin/env python
"""The logs at scale: fill PostgreSQL with synthetic request logs, then time the Logs page (first
and next page, every filter), the logs API, the dashboard, the usage page and the CSV export, and
keep the plans PostgreSQL chose. Writes bench/results/logs-latest.{json,md}; a run of fewer than
10 million rows writes logs-N.{json,md} instead, so a short run never replaces the full one.

    make bench                 # 10 million rows (after the relay benchmark)
    make bench QUICK=1         # 1 million rows
    python bench/logs_scale.py --rows 2000000

Targets (issue 11): first and next page p95 <= 50 ms with any one filter or none, the dashboard
p95 <= 100 ms, CSV export >= 100,000 rows/s with flat memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from datetime import UTC, datetime

from run import PYTHON, RESULTS, ROOT, load_services, log, manage, production_env

TARGETS = {"page_p95_ms": 50, "dashboard_p95_ms": 100, "csv_rows_per_second": 100_000}


def main() -> int:
    parser = argparse.ArgumentParser(description="TokenByte logs at scale")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--heavy-share", type=float, default=0.2, help="the measured user's share")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    services = load_services()
    started = time.monotonic()
    try:
        urls = services.start()
        log(f"PostgreSQL on {services.pg_port}")
        env = production_env(urls)
        env["ALLOWED_HOSTS"] = "testserver,127.0.0.1,localhost"
        manage(env, "migrate", "--noinput", "-v", "0")
        log(f"filling {args.rows:,} request logs for {args.users:,} users …")
        fill_started = time.monotonic()
        manage(env, "fill_logs", f"--rows={args.rows}", f"--users={args.users}",
               f"--heavy-share={args.heavy_share}")  # fmt: skip
        fill_seconds = time.monotonic() - fill_started
        log(f"filled in {fill_seconds:.0f} s; timing pages …")
        probe = subprocess.run(
            [PYTHON, str(ROOT / "bench" / "logs_probe.py")],
            env=env, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        if probe.returncode:
            raise SystemExit(f"logs probe failed: {probe.stderr[-3000:]}")
        result = json.loads(probe.stdout.strip().splitlines()[-1])
    finally:
        services.stop()
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": args.rows,
        "users": args.users,
        "fill_seconds": round(fill_seconds),
        "total_seconds": round(time.monotonic() - started),
        "targets": TARGETS,
        **result,
    }
    name = "logs-latest" if args.rows >= 10_000_000 else f"logs-{args.rows}"
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report).split("\n## Plans")[0])
    return 0 if verdicts(report)["all"] else 1


def verdicts(report: dict) -> dict:
    pages = report["pages"].values()
    worst_page = max(max(p["first"]["p95_ms"], p["next"]["p95_ms"]) for p in pages)
    found = {
        "pages": worst_page <= TARGETS["page_p95_ms"],
        "dashboard": report["dashboard"]["p95_ms"] <= TARGETS["dashboard_p95_ms"],
        "csv": report["csv"]["rows_per_second"] >= TARGETS["csv_rows_per_second"],
        "worst_page_p95_ms": worst_page,
    }
    found["all"] = found["pages"] and found["dashboard"] and found["csv"]
    return found


def markdown(report: dict) -> str:
    ok = verdicts(report)
    mark = {True: "✓", False: "✗"}
    csv = report["csv"]
    lines = [
        "# Logs at scale",
        "",
        f"{report['rows']:,} request logs over 90 days for {report['users']:,} users, "
        f"{report['user_rows']:,} of them the measured (heaviest) user's; filled in "
        f"{report['fill_seconds']} s; {report['when']}. Server time through Django's test client "
        "(middleware, view, queries, template), p50 / p95 in ms.",
        "",
        "| filter | first page | next page (keyset) | API first page |",
        "| --- | --- | --- | --- |",
    ]
    for name, page in report["pages"].items():
        cells = [
            f"{page[k]['p50_ms']} / {page[k]['p95_ms']}" for k in ("first", "next", "api_first")
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        f"- Pages: worst p95 {ok['worst_page_p95_ms']} ms (target ≤ {TARGETS['page_p95_ms']}) "
        f"{mark[ok['pages']]}",
        f"- Dashboard: p50 {report['dashboard']['p50_ms']}, p95 {report['dashboard']['p95_ms']} ms "
        f"(target ≤ {TARGETS['dashboard_p95_ms']}) {mark[ok['dashboard']]}",
        f"- Usage page, 90 days split by model: p50 {report['usage_page']['p50_ms']}, "
        f"p95 {report['usage_page']['p95_ms']} ms",
        f"- CSV export: {csv['rows']:,} rows in {csv['seconds']} s = {csv['rows_per_second']:,} "
        f"rows/s (target ≥ {TARGETS['csv_rows_per_second']:,}) {mark[ok['csv']]}; process memory "
        f"{csv['rss_before_mb']} MB before, {csv['rss_peak_mb']} MB at most while streaming",
        "",
        "## Plans (EXPLAIN ANALYZE, BUFFERS) of the first and next page",
    ]
    for name, page in report["pages"].items():
        lines += ["", f"### {name}", "", "```", page["plan_first"], "```", "", "next page:", "",
                  "```", page["plan_next"], "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
