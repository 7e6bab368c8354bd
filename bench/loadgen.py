"""Load generators for the benchmark: wrk (compiled, with a Lua script) and a small asyncio
client that timestamps the events of a stream. Both run pinned to the load core."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

PERCENTILES = (10, 25, 50, 75, 90, 95, 99, 99.9)

LUA_TEMPLATE = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.body = %(body)s
function done(summary, latency, requests)
    local p = {}
    for _, q in ipairs({%(percentiles)s}) do
        p[#p + 1] = string.format('"%%s": %%d', q, latency:percentile(q))
    end
    io.write(string.format(
        'WRKJSON {"requests": %%d, "duration_us": %%d, "errors": %%d, "non_2xx": %%d,'
        .. ' "mean_us": %%f, "max_us": %%d, "percentiles_us": {%%s}}\\n',
        summary.requests, summary.duration,
        summary.errors.connect + summary.errors.read + summary.errors.write
            + summary.errors.timeout,
        summary.errors.status, latency.mean, latency.max, table.concat(p, ", ")))
end
"""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: int
    non_2xx: int
    mean_ms: float
    percentiles_ms: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def p(self, q: float) -> float:
        return self.percentiles_ms[str(q) if q != int(q) else str(int(q))]


def _lua(key: str, body: dict) -> Path:
    script = LUA_TEMPLATE % {
        "key": key,
        "body": json.dumps(json.dumps(body)),
        "percentiles": ", ".join(str(q) for q in PERCENTILES),
    }
    handle = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
    handle.write(script)
    handle.close()
    return Path(handle.name)


def wrk(
    url: str,
    *,
    key: str,
    body: dict,
    connections: int,
    duration_s: int,
    cpu: str | None = None,
    timeout_s: float = 10,
) -> WrkResult:
    """Run wrk once for `duration_s` whole seconds (wrk has no request-count mode)."""
    script = _lua(key, body)
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s",
        f"--timeout={round(timeout_s)}s", "-s", str(script), url,
    ]  # fmt: skip
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=duration_s + 60
        ).stdout
    finally:
        script.unlink(missing_ok=True)
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON "))
    data = json.loads(line.removeprefix("WRKJSON "))
    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        errors=data["errors"],
        non_2xx=data["non_2xx"],
        mean_ms=data["mean_us"] / 1000,
        percentiles_ms={k: v / 1000 for k, v in data["percentiles_us"].items()},
    )


@dataclass
class StreamTiming:
    ttft_ms: float  # request sent → first content event received
    gaps_ms: list[float]  # between consecutive data events
    events: int


async def _one_stream(url: str, key: str, body: dict) -> StreamTiming:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    payload = json.dumps(body).encode()
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    writer.write(head + payload)
    await writer.drain()
    times: list[float] = []
    buffer = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        now = time.perf_counter()
        buffer += data
        # Count complete SSE data events as they arrive (chunk framing bytes are harmless here).
        while b"data: " in buffer:
            index = buffer.index(b"data: ")
            end = buffer.find(b"\n\n", index)
            if end < 0:
                break
            event = buffer[index + 6 : end]
            buffer = buffer[end + 2 :]
            if event.strip() != b"[DONE]":
                times.append(now)
    writer.close()
    if not times:
        raise RuntimeError(f"no events from {url}")
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    return StreamTiming(ttft_ms=(times[0] - started) * 1000, gaps_ms=gaps, events=len(times))


def stream_timings(url: str, *, key: str, body: dict, count: int) -> list[StreamTiming]:
    async def run() -> list[StreamTiming]:
        return [await _one_stream(url, key, body) for _ in range(count)]

    return asyncio.run(run())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
