#!/usr/bin/env python3
"""Run a command against throwaway PostgreSQL and Redis servers on free loopback ports.

    python scripts/with_services.py -- pytest -q

Both servers live in a temporary directory that is removed when the command ends, fails or is
interrupted. The command sees DATABASE_URL and REDIS_URL; its exit status is ours. Used by
`make test` and by the benchmark. Standard library only: it runs before the virtualenv matters.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, what: str, proc: subprocess.Popen | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"with_services: {what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"with_services: {what} did not listen on port {port} within {timeout:.0f}s")


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    raise SystemExit(f"with_services: {name} not found; install postgresql")


class Services:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tokenbyte-services-"))
        os.chmod(self.root, 0o755)  # noqa: S103  (the postgres user must traverse it)
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            # initdb and pg_ctl refuse to run as root.
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.pgdata = self.root / "pgdata"
        self.pg_port = free_port()
        self.redis_port = free_port()
        self.redis: subprocess.Popen | None = None
        self.pg_started = False

    def start(self) -> dict[str, str]:
        log = self.root / "postgres.log"
        subprocess.run(
            [*self.as_postgres, pg_bin("initdb"), "-D", str(self.pgdata), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        # Durability is pointless for a throwaway cluster; turning it off makes the suite faster.
        options = (
            f"-p {self.pg_port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
            # Lets tests and the benchmark count the relay's database round trips.
            "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
        )
        subprocess.run(
            [*self.as_postgres, pg_bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(log),
             "-o", options, "-w", "-t", "60", "start"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.pg_started = True
        subprocess.run(
            [*self.as_postgres, pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.pg_port),
             "-U", "postgres", "tokenbyte"],
            check=True,
        )  # fmt: skip

        redis_server = shutil.which("redis-server")
        if not redis_server:
            raise SystemExit("with_services: redis-server not found; install redis-server")
        self.redis = subprocess.Popen(
            [redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.root)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.redis_port, "redis-server", self.redis)
        return {
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{self.pg_port}/tokenbyte",
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            # For the fault tests, which restart the server under load.
            "TEST_PG_CTL": " ".join([*self.as_postgres, pg_bin("pg_ctl"), "-D", str(self.pgdata)]),
            "TEST_PG_OPTIONS": options,
        }

    def stop(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            try:
                self.redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
        if self.pg_started:
            subprocess.run(
                [*self.as_postgres, pg_bin("pg_ctl"), "-D", str(self.pgdata), "-m", "immediate",
                 "-w", "stop"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command to run (after --)")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command to run after --")

    services = Services()
    child: subprocess.Popen | None = None

    def forward(signum, frame):  # noqa: ARG001
        # Ctrl-C or a CI timeout: stop the command; the finally block stops the servers.
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, forward)
    try:
        env = {**os.environ, **services.start()}
        print(f"with_services: PostgreSQL on {services.pg_port}, Redis on {services.redis_port}")
        child = subprocess.Popen(command, env=env)
        return child.wait()
    except KeyboardInterrupt:
        if child is not None:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        return 130
    finally:
        services.stop()


if __name__ == "__main__":
    sys.exit(main())
