#!/usr/bin/env python
"""The relay benchmark: TokenByte (and optionally LiteLLM) against the mock upstream called
directly, measured in one run with direct and relayed rounds interleaved.

    make bench              # full run, a few minutes
    make bench QUICK=1      # shorter, under 3 minutes
    make bench PEER=litellm # also LiteLLM's proxy, in its own virtualenv

It starts throwaway PostgreSQL and Redis (as `make test` does), three mock upstreams, and the relay
in its production configuration (DEBUG off, PostgreSQL, Redis), pins the relay to one core and the
mocks and load generators to the other, and writes bench/results/latest.{json,md,png}.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import math
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from loadgen import WrkResult, median, stream_timings, wrk

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
RELAY_CPU = "0"
LOAD_CPU = "1"
KEY_DIRECT = "sk-mock"  # the mock accepts any key
MIN_ROUND_REQUESTS = 200  # per latency round and target (the minimum)
CHAT_BODY = {
    "model": "bench-fast",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write one sentence about the sea."},
    ],
    "max_tokens": 64,
}
CATALOG = {
    "models": [
        {"id": name, "provider": "openai", "display_name": name, "context_length": 128000,
         "max_output_tokens": 4096, "call_type": "chat", "input_per_mtok": "0.15",
         "output_per_mtok": "0.60", "cached_input_per_mtok": "0.075",
         "capabilities": ["streaming"]}
        for name in ("bench-fast", "bench-slow", "bench-stream")
    ]
}  # fmt: skip
SERVERS = {
    "profiled": lambda port: [
        PYTHON, str(ROOT / "bench" / "profiled_server.py"), str(port),
        str(RESULTS / "relay.prof"),
    ],
    "uvicorn": lambda port: [
        PYTHON, "-m", "uvicorn", "relay.asgi:application", "--host", "127.0.0.1",
        "--port", str(port), "--loop", "uvloop", "--http", "relay.server:RelayHttpProtocol",
        "--timeout-keep-alive", "5", "--no-access-log", "--log-level", "warning",
        "--lifespan", "on",
    ],
    "granian": lambda port: [
        str(Path(PYTHON).parent / "granian"), "--interface", "asgi", "--host", "127.0.0.1",
        "--port", str(port), "--loop", "uvloop", "--no-ws", "--log-level", "warning",
        "relay.asgi:application",
    ],
    "daphne": lambda port: [
        str(Path(PYTHON).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "-v", "0",
        "relay.asgi:application",
    ],
}  # fmt: skip


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: {what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise SystemExit(f"bench: {what} did not listen on {port}")


def with_children(pid: int) -> list[int]:
    """A server process and its children (granian's workers are processes of their own)."""
    pids = [pid]
    with contextlib.suppress(FileNotFoundError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    return pids


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (a server's workers), MB."""
    total = 0
    for p in with_children(pid):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


class Processes:
    """Every process the benchmark starts, stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, command: list[str], *, cpu: str | None, env: dict | None = None,
              log_name: str) -> subprocess.Popen:  # fmt: skip
        if cpu is not None:
            command = ["taskset", "-c", cpu, *command]
        log_file = open(RESULTS / f"{log_name}.log", "w")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT
        )
        proc.log_file = log_file  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.log_file.close()  # type: ignore[attr-defined]
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def load_services():
    path = ROOT / "scripts" / "with_services.py"
    spec = importlib.util.spec_from_file_location("with_services", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Services()


def production_env(urls: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        **urls,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "FIELD_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "STRIPE_SECRET_KEY": "sk_test_bench",
        "STRIPE_WEBHOOK_SECRET": "whsec_bench",
        "RELAY_INPROCESS_SCHEDULER": "false",
        "LOG_LEVEL": "WARNING",
    }


def manage(env: dict, *args: str) -> str:
    result = subprocess.run(
        [PYTHON, "manage.py", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"bench: manage.py {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def psql(services, sql: str) -> str:
    command = [
        *services.as_postgres, "psql", "-h", "127.0.0.1", "-p", str(services.pg_port),
        "-U", "postgres", "-d", "tokenbyte", "-tAc", sql,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def setup_data(env: dict, mocks: dict[str, str]) -> str:
    """Migrate, load the bench models, point channels at the mocks; returns the API key."""
    manage(env, "migrate", "--noinput", "-v", "0")
    catalog = RESULTS / "bench-catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    manage(env, "import_catalog", str(catalog))
    catalog.unlink()
    for model, url in mocks.items():
        manage(env, "add_channel", f"--name={model}", "--type=openai", f"--base-url={url}",
               "--api-key=sk-mock", f"--models={model}")  # fmt: skip
    key = manage(env, "create_api_key", "--email=bench@example.com", "--name=bench").strip()
    manage(env, "grant_credit", "--email=bench@example.com", "--amount=1000000", "--reason=bench")
    return key


def start_relay(procs: Processes, server: str, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = procs.start(SERVERS[server](port), cpu=RELAY_CPU, env=env, log_name=f"relay-{server}")
    wait_port(port, proc, f"relay ({server})")
    return proc, f"http://127.0.0.1:{port}"


def latency_rounds(targets: dict[str, tuple[str, str]], rounds: int, seconds: int) -> dict:
    """One request at a time: per target, the p50 and p99 of each round (interleaved).

    wrk counts time, not requests: a round lasts `seconds`, longer for a target whose warm-up
    showed it would not reach 200 requests in that time (LiteLLM, at ~10 ms a request).
    """
    body = CHAT_BODY
    durations = {}
    for name, (url, key) in targets.items():  # warm-up, and the round length it calls for
        warm = wrk(f"{url}/v1/chat/completions", key=key, body=body, connections=1,
                   duration_s=seconds, cpu=LOAD_CPU)  # fmt: skip
        rate = max(warm.requests, 1) / seconds
        durations[name] = max(seconds, math.ceil(MIN_ROUND_REQUESTS * 1.25 / rate))
    samples: dict[str, list[WrkResult]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, key) in targets.items():
            result = wrk(f"{url}/v1/chat/completions", key=key, body=body, connections=1,
                         duration_s=durations[name], cpu=LOAD_CPU)  # fmt: skip
            if result.requests < MIN_ROUND_REQUESTS:
                log(f"warning: only {result.requests} requests in a latency round of {name}")
            samples[name].append(result)
    return {
        name: {
            "p50_ms": median([r.p(50) for r in results]),
            "p99_ms": median([r.p(99) for r in results]),
            "percentiles_ms": {
                q: median([r.percentiles_ms[q] for r in results]) for q in results[0].percentiles_ms
            },
            "errors": sum(r.errors + r.non_2xx for r in results),
            "requests": sum(r.requests for r in results),
        }
        for name, results in samples.items()
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a server process and its children."""
    ticks = 0
    for p in with_children(pid):
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def throughput(
    targets: dict[str, tuple[str, str]], connections: int, seconds: int, pids: dict[str, int]
) -> dict:
    body = {**CHAT_BODY, "model": "bench-slow"}
    out = {}
    for name, (url, key) in targets.items():
        before = cpu_seconds(pids[name]) if name in pids else 0.0
        result = wrk(f"{url}/v1/chat/completions", key=key, body=body,
                     connections=connections, duration_s=seconds, cpu=LOAD_CPU)  # fmt: skip
        out[name] = {
            "rps": round(result.rps, 1),
            "errors": result.errors + result.non_2xx,
            "p50_ms": result.p(50),
            "p99_ms": result.p(99),
        }
        if name in pids and result.requests:
            used = cpu_seconds(pids[name]) - before
            out[name]["cpu_ms_per_request"] = round(1000 * used / result.requests, 3)
    return out


def streaming(targets: dict[str, tuple[str, str]], count: int) -> dict:
    body = {
        "model": "bench-stream",
        "stream": True,
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
    }
    timings: dict[str, dict] = {}
    for name in targets:
        timings[name] = {"ttft": [], "gaps": [], "events": []}
    for _ in range(count):
        for name, (url, key) in targets.items():
            [timing] = stream_timings(f"{url}/v1/chat/completions", key=key, body=body, count=1)
            timings[name]["ttft"].append(timing.ttft_ms)
            timings[name]["gaps"].extend(timing.gaps_ms)
            timings[name]["events"].append(timing.events)
    return {
        name: {
            "ttft_ms": round(median(t["ttft"]), 3),
            "gap_ms": round(median(t["gaps"]), 3),
            "events": int(median(t["events"])),
        }
        for name, t in timings.items()
    }


def queries_per_request(services, url: str, key: str) -> float:
    psql(services, "SELECT pg_stat_statements_reset()")
    result = wrk(f"{url}/v1/chat/completions", key=key, body=CHAT_BODY, connections=1,
                 duration_s=3, cpu=LOAD_CPU)  # fmt: skip
    time.sleep(1.0)  # settlements land just after the responses
    where = (
        "FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
        " WHERE r.rolname = 'relay' AND s.toplevel AND query NOT LIKE '%pg_stat%'"
    )
    # Foreign-key checks run inside the statements that trigger them: not round trips.
    where += " AND query NOT LIKE 'SELECT % FROM ONLY %'"
    calls = psql(services, f"SELECT coalesce(sum(calls), 0) {where}")
    top = psql(services, f"SELECT calls, left(query, 90) {where} ORDER BY calls DESC LIMIT 8")
    log(f"{result.requests} requests; statements by calls:\n{top}")
    return round(int(calls) / result.requests, 2)


def added(measure: dict, name: str, field: str) -> float:
    return round(measure[name][field] - measure["direct"][field], 3)


def summarize(name: str, lat: dict, c16: dict, c64: dict, rss: tuple[float, float]) -> dict:
    return {
        "added_p50_ms": added(lat, name, "p50_ms"),
        "added_p99_ms": added(lat, name, "p99_ms"),
        "ratio_c16": round(c16[name]["rps"] / c16["direct"]["rps"], 3),
        "ratio_c64": round(c64[name]["rps"] / c64["direct"]["rps"], 3),
        "rss_mb": rss[1],
        "rss_growth_mb": round(rss[1] - rss[0], 1),
        "errors": lat[name]["errors"] + c16[name]["errors"] + c64[name]["errors"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="TokenByte relay benchmark")
    parser.add_argument("--quick", action="store_true", help="shorter run (under 3 minutes)")
    parser.add_argument("--peer", choices=["litellm"], help="also measure this relay")
    parser.add_argument(
        "--server",
        choices=sorted(SERVERS),
        default="uvicorn",
        help="'profiled' runs uvicorn under cProfile (slower; for reading only)",
    )
    parser.add_argument("--compare-servers", action="store_true", help="daphne/uvicorn/granian")
    args = parser.parse_args()
    quick = args.quick
    rounds, round_seconds = (3, 1) if quick else (7, 2)
    seconds = 5 if quick else 15
    streams = 10 if quick else 30
    rss_requests = 5000 if quick else 20000

    RESULTS.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # the stream client and wrk run on the load core
    services = load_services()
    procs = Processes()
    peers: list = []
    started = time.monotonic()
    try:
        urls = services.start()
        log(f"PostgreSQL on {services.pg_port}, Redis on {services.redis_port}")
        psql(services, "CREATE ROLE relay LOGIN SUPERUSER")
        psql(services, "CREATE EXTENSION pg_stat_statements")
        urls["DATABASE_URL"] = urls["DATABASE_URL"].replace("postgres@", "relay@")
        env = production_env(urls)

        mocks = {}
        for model, options in {
            "bench-fast": [],
            "bench-slow": ["--latency-ms", "20"],
            "bench-stream": ["--chunk-delay-ms", "10", "--chunks", "32"],
        }.items():
            port = free_port()
            proc = procs.start([PYTHON, "-m", "mockupstream.server", "--port", str(port), *options],
                               cpu=LOAD_CPU, log_name=f"mock-{model}")  # fmt: skip
            wait_port(port, proc, f"mock {model}")
            mocks[model] = f"http://127.0.0.1:{port}/v1"
        key = setup_data(env, mocks)
        direct = {model: url.removesuffix("/v1") for model, url in mocks.items()}

        relay_proc, relay_url = start_relay(procs, args.server, env)
        log(f"relay ({args.server}) on {relay_url}; pinned to CPU {RELAY_CPU}")
        rss_start = rss_mb(relay_proc.pid)

        def targets_for(model: str, extra: dict | None = None) -> dict:
            found = {"direct": (direct[model], KEY_DIRECT), "tokenbyte": (relay_url, key)}
            return {**found, **(extra or {})}

        peer = None
        peer_targets: dict[str, dict] = {"bench-fast": {}, "bench-slow": {}}
        if args.peer == "litellm":
            from litellm_peer import LiteLLMProxy, ensure_installed

            litellm_bin = ensure_installed(ROOT / "bench" / ".litellm-venv")
            for model in peer_targets:
                proxy = LiteLLMProxy(litellm_bin=litellm_bin, upstream_base_url=mocks[model],
                                     model=model, port=free_port(), cpu=RELAY_CPU,
                                     workdir=RESULTS / f"litellm-{model}")  # fmt: skip
                peers.append(proxy)
                proxy.start()
                root = proxy.base_url.removesuffix("/v1")
                peer_targets[model] = {"litellm": (root, proxy.api_key)}
                peer = peer or proxy
            log("LiteLLM proxy started")

        log(f"latency: {rounds} rounds of {round_seconds} s per target, one request at a time")
        lat = latency_rounds(
            targets_for("bench-fast", peer_targets["bench-fast"]), rounds, round_seconds
        )
        log(f"throughput: {seconds}s at 16 and 64 connections, mock latency 20 ms")
        slow = targets_for("bench-slow", peer_targets["bench-slow"])
        pids = {"tokenbyte": relay_proc.pid, **({"litellm": peer.pid} if peer else {})}
        c16 = throughput(slow, 16, seconds, pids)
        c64 = throughput(slow, 64, seconds, pids)
        log(f"streaming: {streams} streams of 32 chunks 10 ms apart")
        stream = streaming(targets_for("bench-stream"), streams)
        log("database round trips per relayed call")
        qpr = queries_per_request(services, relay_url, key)
        log(f"memory: at least {rss_requests} requests")
        rss_before = rss_mb(relay_proc.pid)
        sent = 0
        while sent < rss_requests:
            sent += wrk(f"{relay_url}/v1/chat/completions", key=key, body=CHAT_BODY,
                        connections=16, duration_s=5, cpu=LOAD_CPU).requests  # fmt: skip
        rss_end = rss_mb(relay_proc.pid)

        report = {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": quick,
            "server": args.server,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            **summarize("tokenbyte", lat, c16, c64, (rss_before, rss_end)),
            "rss_requests": sent,
            "rss_at_start_mb": rss_start,
            "stream_added_ttft_ms": added(stream, "tokenbyte", "ttft_ms"),
            "stream_added_gap_ms": added(stream, "tokenbyte", "gap_ms"),
            "queries_per_request": qpr,
            "latency": lat,
            "throughput_c16": c16,
            "throughput_c64": c64,
            "streaming": stream,
            "peer": None,
        }
        if peer is not None:
            peer_rss = rss_mb(peer.pid)
            report["peer"] = {
                "name": "litellm",
                **summarize("litellm", lat, c16, c64, (peer_rss, peer_rss)),
            }
        if args.compare_servers:
            procs.stop(relay_proc)
            report["servers"] = compare_servers(procs, env, key, direct, seconds)
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        write_reports(report)
        log(f"done in {report['elapsed_s']} s: bench/results/latest.md")
        print((RESULTS / "latest.md").read_text())
        return 0
    finally:
        for proxy in peers:
            proxy.stop()
        procs.stop_all()
        services.stop()


# (ASGI server, upstream HTTP client) pairs measured side by side with SERVERS=1.
VARIANTS = (
    ("uvicorn", "aiohttp"),
    ("granian", "aiohttp"),
    ("daphne", "aiohttp"),
    ("uvicorn", "httpx-aiohttp"),
    ("uvicorn", "httpx"),
)
# RELAY_UPSTREAM_CLIENT of each client: aiohttp is built in, the httpx ones live here in bench/.
CLIENT_SETTINGS = {
    "aiohttp": "aiohttp",
    "httpx": "bench.upstream_httpx",
    "httpx-aiohttp": "bench.upstream_httpx_aiohttp",
}


def compare_servers(procs: Processes, env: dict, key: str, direct: dict, seconds: float) -> dict:
    out = {}
    for server, client in VARIANTS:
        name = f"{server}+{client}"
        client_env = {"RELAY_UPSTREAM_CLIENT": CLIENT_SETTINGS[client]}
        proc, url = start_relay(procs, server, {**env, **client_env})
        log(f"server comparison: {server}, upstream client {client}")
        lat = latency_rounds({"direct": (direct["bench-fast"], KEY_DIRECT), name: (url, key)}, 3, 1)
        c16 = throughput({"direct": (direct["bench-slow"], KEY_DIRECT), name: (url, key)}, 16,
                         seconds, {name: proc.pid})  # fmt: skip
        c64 = throughput({"direct": (direct["bench-slow"], KEY_DIRECT), name: (url, key)}, 64,
                         seconds, {name: proc.pid})  # fmt: skip
        out[name] = {
            "server": server,
            "client": client,
            "added_p50_ms": added(lat, name, "p50_ms"),
            "added_p99_ms": added(lat, name, "p99_ms"),
            "ratio_c16": round(c16[name]["rps"] / c16["direct"]["rps"], 3),
            "ratio_c64": round(c64[name]["rps"] / c64["direct"]["rps"], 3),
            "cpu_ms_per_request_c64": c64[name].get("cpu_ms_per_request"),
            "errors": c16[name]["errors"] + c64[name]["errors"],
            "rss_mb": rss_mb(proc.pid),
        }
        procs.stop(proc)
    return out


TARGETS = {
    "added_p50_ms": ("≤ 2.5", lambda v: v <= 2.5),
    "added_p99_ms": ("≤ 8", lambda v: v <= 8),
    "ratio_c16": ("≥ 0.6", lambda v: v >= 0.6),
    "ratio_c64": ("≥ 0.25", lambda v: v >= 0.25),
    "stream_added_ttft_ms": ("≤ 3.0", lambda v: v <= 3.0),
    "stream_added_gap_ms": ("≤ 0.5", lambda v: v <= 0.5),
    "rss_growth_mb": ("≤ 10", lambda v: v <= 10),
    "queries_per_request": ("≤ 5", lambda v: v <= 5),
    "errors": ("0", lambda v: v == 0),
}


# The targets relative to the peer, as TokenByte's figure over the peer's.
PEER_TARGETS = {
    "added_p50_ms": ("≤ 0.2 (a fifth)", lambda v: v <= 0.2),
    "added_p99_ms": ("≤ 0.333 (a third)", lambda v: v <= 1 / 3),
    "ratio_c16": ("≥ 6", lambda v: v >= 6),
    "ratio_c64": ("≥ 10", lambda v: v >= 10),
    "rss_mb": ("≤ 0.333 (a third)", lambda v: v <= 1 / 3),
}


def write_reports(report: dict) -> None:
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    peer = report.get("peer") or {}
    lines = [
        f"Benchmark of {report['generated_at']} ({'quick' if report['quick'] else 'full'} run, "
        f"relay under {report['server']}, {report['machine']['cpus']} CPUs: relay on one, "
        "mocks and load on the other)",
        "",
        "| Measure | TokenByte | Target | " + ("LiteLLM | " if peer else ""),
        "| --- | --- | --- | " + ("--- | " if peer else ""),
    ]
    for field, (target, ok) in TARGETS.items():
        value = report[field]
        peer_cell = f"{peer[field]} | " if peer and field in peer else ("– | " if peer else "")
        lines.append(f"| {field} | {value} {'✅' if ok(value) else '❌'} | {target} | {peer_cell}")
    lines.append(f"| rss_mb | {report['rss_mb']} | | " + (f"{peer['rss_mb']} | " if peer else ""))
    lat, c16, c64, st = (report["latency"], report["throughput_c16"], report["throughput_c64"],
                         report["streaming"])  # fmt: skip
    lines += [
        "",
        "| Raw | direct | TokenByte | " + ("LiteLLM |" if peer else ""),
        "| --- | --- | --- | " + ("--- |" if peer else ""),
    ]
    for label, data, field in (
        ("p50 latency, 1 at a time (ms)", lat, "p50_ms"),
        ("p99 latency, 1 at a time (ms)", lat, "p99_ms"),
        ("requests/s at 16 connections", c16, "rps"),
        ("requests/s at 64 connections", c64, "rps"),
    ):
        row = f"| {label} | {data['direct'][field]} | {data['tokenbyte'][field]} | "
        if peer:
            row += f"{data['litellm'][field]} |"
        lines.append(row)
    lines.append(f"| stream time to first token (ms) | {st['direct']['ttft_ms']} | "
                 f"{st['tokenbyte']['ttft_ms']} | " + ("– |" if peer else ""))  # fmt: skip
    lines.append(f"| stream gap between chunks (ms) | {st['direct']['gap_ms']} | "
                 f"{st['tokenbyte']['gap_ms']} | " + ("– |" if peer else ""))  # fmt: skip
    if peer:
        lines += ["", "| Against LiteLLM | TokenByte ÷ LiteLLM | Target |", "| --- | --- | --- |"]
        for field, (target, ok) in PEER_TARGETS.items():
            value = round(report[field] / peer[field], 3) if peer[field] else None
            mark = "" if value is None else ("✅" if ok(value) else "❌")
            lines.append(f"| {field} | {value} {mark} | {target} |")
    if report.get("servers"):
        lines += ["", "| ASGI server | upstream client | added p50 (ms) | added p99 (ms) | "
                  "ratio c16 | ratio c64 | CPU ms/call at c64 | errors | RSS (MB) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        columns = ("server", "client", "added_p50_ms", "added_p99_ms", "ratio_c16", "ratio_c64",
                   "cpu_ms_per_request_c64", "errors", "rss_mb")  # fmt: skip
        for s in report["servers"].values():
            lines.append("| " + " | ".join(str(s[c]) for c in columns) + " |")
    (RESULTS / "latest.md").write_text("\n".join(lines) + "\n")
    chart(report)


def chart(report: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no chart")
        return
    names = [n for n in ("direct", "tokenbyte", "litellm") if n in report["latency"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        pct = report["latency"][name]["percentiles_ms"]
        qs = [float(q) for q in pct]
        left.plot(qs, list(pct.values()), marker="o", label=name)
    left.set_xlabel("percentile")
    left.set_ylabel("latency (ms), one request at a time")
    left.set_yscale("log")
    left.set_title("Latency distribution (mock answering at once)")
    left.legend()
    relays = [n for n in names if n != "direct"]
    width = 0.35
    for i, name in enumerate(relays):
        values = [
            report["throughput_c16"][name]["rps"] / report["throughput_c16"]["direct"]["rps"],
            report["throughput_c64"][name]["rps"] / report["throughput_c64"]["direct"]["rps"],
        ]
        right.bar([x + i * width for x in (0, 1)], values, width, label=name)
    right.set_xticks([width / 2, 1 + width / 2], ["16 connections", "64 connections"])
    right.set_ylabel("throughput ÷ direct")
    right.set_ylim(0, 1.05)
    right.set_title("Throughput ratio (mock latency 20 ms)")
    right.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "latest.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
