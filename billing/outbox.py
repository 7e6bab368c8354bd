"""A durable outbox for settlements the database could not take: one JSON file per call.

A call that finished while PostgreSQL was away (a restart, a failover) must still be billed.
billing.settlement retries on fresh connections for a while; if the database stays away, the
settlement is written here, fsynced, and the relay's upkeep loop (billing.settlement.upkeep)
drains the folder once the database answers. Settling is idempotent on the request id, so a file
drained twice (two processes, a crash between settling and unlinking) bills once. While a file
waits, the heartbeat keeps its hold's lease, so the sweep does not release it.

The folder is local to the host (RELAY_OUTBOX_DIR): every relay process there drains it, each
file claimed by an atomic rename; a restarted process drains what a dead one left.
"""

import contextlib
import logging
import os
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import orjson
from django.conf import settings

from billing.holds import CallCharge

logger = logging.getLogger(__name__)

SUFFIX = ".json"
CLAIMED = ".claimed-"


def folder() -> Path:
    path = Path(settings.RELAY_OUTBOX_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _encode(charge: CallCharge) -> bytes:
    return orjson.dumps(asdict(charge))


def _decode(data: bytes) -> CallCharge:
    fields = orjson.loads(data)
    fields["now"] = datetime.fromisoformat(fields["now"])
    log = fields["log"]
    log["created_at"] = datetime.fromisoformat(log["created_at"])
    # A file written before the column existed: the settlement's SQL needs every column.
    log.setdefault("cache_write_tokens", 0)
    return CallCharge(**fields)


def outbox_put(*, charge: CallCharge) -> Path:
    """Write a settlement durably (temporary file, fsync, rename, fsync of the folder)."""
    base = folder()
    path = base / f"{charge.request_id}{SUFFIX}"
    temporary = base / f".{charge.request_id}.tmp"
    with open(temporary, "wb") as file:
        file.write(_encode(charge))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(base, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def outbox_request_ids() -> list[str]:
    """The calls whose settlement waits here (their holds' leases must be kept)."""
    path = Path(settings.RELAY_OUTBOX_DIR)
    if not path.is_dir():
        return []
    return [name.split(SUFFIX)[0] for name in os.listdir(path) if not name.startswith(".")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def outbox_claim() -> list[tuple[Path, CallCharge]]:
    """Take the waiting settlements for this process: each file renamed to a name with our
    pid, so no other process settles it meanwhile; a claim of a dead process is taken over."""
    path = Path(settings.RELAY_OUTBOX_DIR)
    if not path.is_dir():
        return []
    claimed = []
    for name in sorted(os.listdir(path)):
        if name.startswith("."):
            continue
        source = path / name
        if CLAIMED in name:
            request, _, pid = name.partition(CLAIMED)
            if not pid.isdigit() or _alive(int(pid)):
                continue
            name = request
        target = path / f"{name}{CLAIMED}{os.getpid()}"
        try:
            os.rename(source, target)
            charge = _decode(target.read_bytes())
        except FileNotFoundError:
            continue  # another process claimed it first
        except (ValueError, TypeError, KeyError):
            logger.exception("unreadable settlement in the outbox: %s", target)
            with contextlib.suppress(OSError):
                os.rename(target, path / f".broken-{name}")
            continue
        claimed.append((target, charge))
    return claimed


def outbox_done(path: Path) -> None:
    path.unlink(missing_ok=True)


def outbox_set_aside(path: Path) -> None:
    """A settlement that failed for another reason than the database being away."""
    name = path.name.split(CLAIMED)[0]
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, path.with_name(f".failed-{name}"))


def outbox_unclaim(path: Path) -> None:
    """Put a claimed settlement back for a later try."""
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, path.with_name(path.name.split(CLAIMED)[0]))
