"""LiteLLM's proxy as a benchmark peer: installed into its own virtualenv, run beside TokenByte.

`make bench PEER=litellm` measures LiteLLM against the same mock upstream as TokenByte. This
module does the peer's part and nothing else; bench/run.py drives the measurements:

    litellm_bin = ensure_installed(DEFAULT_VENV_DIR)
    with LiteLLMProxy(litellm_bin=litellm_bin, upstream_base_url="http://127.0.0.1:18101/v1",
                      model="gpt-4o-mini", port=18201, cpu="1", workdir=tmp) as peer:
        ... load peer.base_url with Bearer peer.api_key, read RSS of peer.pid ...

The proxy runs as the published reference does: one uvicorn worker, no database, a config whose
only model is the mock. Nothing may leave the machine, so LiteLLM is told to use the model cost
map (and every other catalogue it would otherwise fetch) bundled in its package, and the
environment it inherits is stripped of database, cache, proxy and provider settings.

Standard library only: bench/run.py imports this under the project's virtualenv, while LiteLLM
and its dependencies live in bench/.litellm-venv (git-ignored).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import TracebackType

BENCH_DIR = Path(__file__).resolve().parent
REQUIREMENTS = BENCH_DIR / "requirements-litellm.txt"
DEFAULT_VENV_DIR = BENCH_DIR / ".litellm-venv"
STAMP_NAME = ".bench-installed"

MASTER_KEY = "sk-bench-peer"
UPSTREAM_API_KEY = "sk-mock"
HOST = "127.0.0.1"
READY_PATH = "/health/liveliness"  # answers once uvicorn's startup (config, router) is done
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 40

# Keeps LiteLLM (1.106) off the network: each of these makes it use the copy bundled in the
# package instead of fetching from GitHub / the docs site. LITELLM_OFFLINE_MODE is the single
# switch of later releases; 1.106 does not read it, it is set so a bumped pin stays offline.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # read at import time, before the config
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "true",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_OFFLINE_MODE": "true",
    # tokenizers/huggingface_hub are dependencies; nothing here should load from the hub.
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    # Errors only: uvicorn's access log (one line per request) would cost the peer throughput.
    "LITELLM_LOG": "ERROR",
    "PYTHONUNBUFFERED": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}

# Inherited variables that would give LiteLLM a database, a cache, an outbound proxy, other
# providers' keys or a different config than the one written here.
_STRIPPED_ENV_PREFIXES = (
    "LITELLM_",
    "DATABASE_",
    "DIRECT_URL",
    "REDIS_",
    "OPENAI_",
    "AZURE_",
    "ANTHROPIC_",
    "GEMINI_",
    "GOOGLE_",
    "VERTEX",
    "AWS_",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "SSL_CERT",
    "REQUESTS_CA_BUNDLE",
    "CONFIG_FILE_PATH",
    "WORKER_CONFIG",
    "STORE_MODEL_IN_DB",
    "UI_",
    "PROXY_",
    "OTEL_",
    "LANGFUSE_",
    "SENTRY_",
    "DD_",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
)


def _log(message: str) -> None:
    print(f"[litellm-peer] {message}", file=sys.stderr, flush=True)


def _install_fingerprint(requirements: Path) -> str:
    """What the stamp records: the pins and the interpreter they were installed for."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    return f"requirements-sha256={digest}\npython={sys.version_info[0]}.{sys.version_info[1]}\n"


def _run_quiet(cmd: list[str], what: str, timeout: float) -> None:
    """Run a setup command with its output captured; on failure, raise with the output's tail."""
    try:
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} timed out after {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-LOG_TAIL_LINES:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")


def ensure_installed(
    venv_dir: Path = DEFAULT_VENV_DIR, *, requirements: Path = REQUIREMENTS
) -> Path:
    """Create `venv_dir` and install LiteLLM's pinned proxy into it, once; return `litellm`'s path.

    A stamp file in the virtualenv records which requirements were installed, so later calls
    return at once and print nothing; a changed requirements file reinstalls into the same
    virtualenv. The first install downloads about 750 MB of packages and takes a minute or two.
    """
    venv_dir = Path(venv_dir).resolve()
    requirements = Path(requirements).resolve()
    python = venv_dir / "bin" / "python"
    litellm_bin = venv_dir / "bin" / "litellm"
    stamp = venv_dir / STAMP_NAME
    fingerprint = _install_fingerprint(requirements)

    with contextlib.suppress(OSError):
        if stamp.read_text() == fingerprint and os.access(litellm_bin, os.X_OK):
            return litellm_bin

    pins = ", ".join(
        line.strip()
        for line in requirements.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    _log(f"installing {pins} into {venv_dir} (one time; a minute or two)")
    if not os.access(python, os.X_OK):
        # sys.executable may itself be a virtualenv's python; venv bases the new one on the
        # interpreter underneath, so the peer shares nothing with the project's packages.
        _run_quiet(
            [sys.executable, "-m", "venv", str(venv_dir)], "creating the LiteLLM virtualenv", 300
        )
    stamp.unlink(missing_ok=True)
    _run_quiet(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
            str(requirements),
        ],
        f"pip install -r {requirements.name}",
        1800,
    )
    if not os.access(litellm_bin, os.X_OK):
        raise RuntimeError(f"pip install succeeded but {litellm_bin} is missing")
    stamp.write_text(fingerprint)
    _log("LiteLLM installed")
    return litellm_bin


def _yaml_str(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar, whatever characters it holds.
    return json.dumps(value)


def _peer_env() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(_STRIPPED_ENV_PREFIXES)
    }
    env.update(OFFLINE_ENV)
    return env


def _port_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                kids.extend(
                    int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                )
    return kids


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on `port` (state 0A), from /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if (
                    len(fields) > 9
                    and fields[3] == "0A"
                    and int(fields[1].rsplit(":", 1)[1], 16) == port
                ):
                    inodes.add(fields[9])
    return inodes


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return True
    return False


class LiteLLMProxy:
    """One `litellm` proxy (one uvicorn worker, no database) in front of `upstream_base_url`.

    Clients call `base_url` (OpenAI-compatible, ".../v1") with `api_key`, asking for `model`.
    `start()` blocks until the proxy answers its liveliness check; `stop()` ends it.
    """

    api_key = MASTER_KEY

    def __init__(
        self,
        *,
        litellm_bin: Path,
        upstream_base_url: str,
        model: str,
        port: int,
        cpu: str | None = None,
        workdir: Path,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.litellm_bin = Path(litellm_bin)
        self.upstream_base_url = upstream_base_url
        self.model = model
        self.port = int(port)
        self.cpu = cpu
        self.workdir = Path(workdir)
        self.startup_timeout = startup_timeout
        self.config_path = self.workdir / "litellm-config.yaml"
        self.log_path = self.workdir / "litellm.log"
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._worker_pid: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The process serving requests (whose RSS to read): the one holding the listening socket.

        With `--num_workers 1` LiteLLM runs uvicorn in its own process (behind `taskset`, which
        execs), so this is the launched pid; were a worker forked, the deepest descendant holding
        the socket is the worker.
        """
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("the LiteLLM proxy is not running")
        if self._worker_pid is None:
            self._worker_pid = self._find_worker_pid()
        return self._worker_pid

    def config_text(self) -> str:
        return "\n".join(
            [
                "# Written by bench/litellm_peer.py: the mock as the only model, no database.",
                "model_list:",
                f"  - model_name: {_yaml_str(self.model)}",
                "    litellm_params:",
                f"      model: {_yaml_str('openai/' + self.model)}",
                f"      api_base: {_yaml_str(self.upstream_base_url)}",
                f"      api_key: {_yaml_str(UPSTREAM_API_KEY)}",
                "litellm_settings:",
                "  set_verbose: false",
                "  json_logs: false",
                "general_settings:",
                f"  master_key: {_yaml_str(MASTER_KEY)}",
                "",
            ]
        )

    def command(self) -> list[str]:
        cmd = [
            str(self.litellm_bin),
            "--config",
            str(self.config_path),
            "--port",
            str(self.port),
            "--host",
            HOST,
            "--num_workers",
            "1",
        ]
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]
        return cmd

    def start(self) -> LiteLLMProxy:
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("the LiteLLM proxy is already running")
        if _port_answers(self.port):
            raise RuntimeError(f"port {self.port} on {HOST} is already in use")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self._worker_pid = None
        self.startup_seconds = None
        began = time.monotonic()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=_peer_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches any child
            )
        try:
            self._wait_ready(began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, began: float) -> None:
        assert self._proc is not None
        url = self.root_url + READY_PATH
        deadline = began + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"the LiteLLM proxy exited with code {code} while starting; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the LiteLLM proxy did not answer {READY_PATH} "
                    f"within {self.startup_timeout:.0f} s; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def _find_worker_pid(self) -> int:
        assert self._proc is not None
        root = self._proc.pid
        inodes = _listening_inodes(self.port)
        best, best_depth = root, 0
        stack = [(root, 0)]
        while stack:
            pid, depth = stack.pop()
            if depth > best_depth and inodes and _holds_socket(pid, inodes):
                best, best_depth = pid, depth
            stack.extend((kid, depth + 1) for kid in _children(pid))
        return best

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as log:
                tail = deque(log, maxlen=lines)
        except OSError:
            return "(no log)"
        return b"".join(tail).decode("utf-8", "replace").rstrip()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        self._worker_pid = None
        if proc is None:
            return
        if proc.poll() is None:
            # The group is the one start() created for this process (start_new_session).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT_S)
        else:
            # The leader is gone; make sure nothing it forked outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> LiteLLMProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the peer by hand: `python bench/litellm_peer.py --upstream URL [--port N] [--cpu C]`."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--upstream", default="http://127.0.0.1:8001/v1")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--port", type=int, default=18201)
    parser.add_argument("--cpu", default=None)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV_DIR)
    args = parser.parse_args(argv)

    def _interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # A background job of a non-interactive shell ignores SIGINT; SIGTERM must stop it cleanly too.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    litellm_bin = ensure_installed(args.venv)
    with tempfile.TemporaryDirectory(prefix="litellm-peer-") as tmp:
        proxy = LiteLLMProxy(
            litellm_bin=litellm_bin,
            upstream_base_url=args.upstream,
            model=args.model,
            port=args.port,
            cpu=args.cpu,
            workdir=Path(tmp),
        )
        with proxy:
            _log(
                f"ready in {proxy.startup_seconds:.1f} s: {proxy.base_url} (key {proxy.api_key}, "
                f"pid {proxy.pid}); Ctrl-C stops"
            )
            with contextlib.suppress(KeyboardInterrupt):
                while proxy._proc is not None and proxy._proc.poll() is None:
                    time.sleep(0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
