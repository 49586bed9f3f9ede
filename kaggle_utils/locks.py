"""Run-folder locks: one writer per stage folder and per submission, or a clear refusal at once.

Two runs on one folder otherwise interleave silently: a second training of the same stage with
other parameters "starts afresh" over the first's checkpoints (both exit 0, the first reporting a
Dice of the second's weights), and a second 06 writer deletes the parts the first is joining.

A lock is a small JSON file (``<stage_dir>/.lock``, ``<run_dir>/.submission.csv.gz.lock``) created
with ``O_CREAT | O_EXCL`` (atomic on local and network file systems alike) holding the holder's
pid, host, process start time and when it took the lock. It is removed when the ``with`` block
ends, by an exception too. A lock left by a killed process is detected: on the same host, a pid
that no longer runs (or now runs another program) is taken over with a printed note; a lock from
another host is never taken over (that machine may still be writing): the message names it and
says how to remove the lock if that machine is gone.

Kept free of torch (io layer): the submission writer and planning code use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["LockHeldError", "hold_lock", "lock_holder", "stage_lock", "submission_lock"]

_READ_RETRY_S = 2.0  # a lock file is written within microseconds of its creation


class LockHeldError(RuntimeError):
    """Another live process (or another host) holds the lock; the message names it and the path."""


def stage_lock(stage_dir: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """The lock of one training stage folder (``<stage_dir>/.lock``)."""
    stage_dir = Path(stage_dir)
    return hold_lock(stage_dir / ".lock", f"stage folder {stage_dir}")


def submission_lock(out_path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """The lock of one submission file and its parts (``.<name>.lock`` beside it)."""
    out_path = Path(out_path)
    return hold_lock(out_path.with_name(f".{out_path.name}.lock"), f"submission {out_path}")


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, what: str = "") -> Iterator[Path]:
    """Hold the lock file `path` for the ``with`` block; raise `LockHeldError` at once if taken.

    what: the guarded thing, for the messages (e.g. "stage folder runs/m/s1_64x96").
    """
    path = Path(path)
    token = _acquire(path, what or str(path.parent))
    try:
        yield path
    finally:
        _release(path, token)


def lock_holder(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record in lock file `path` (pid, host, started, ...); None when there is no lock; an
    empty dict when the file cannot be read as a lock (its writer died while creating it)."""
    path = Path(path)
    deadline = time.monotonic() + _READ_RETRY_S
    while True:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(record, dict) and "pid" in record and "host" in record:
                return record
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)  # created, not yet written: give its writer a moment


# ---------------------------------------------------------------------------- acquire / release


def _acquire(path: Path, what: str) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _my_record(what)
    for _ in range(10):  # each pass either creates the lock, refuses, or removes a stale one
        if _create(path, me):
            return me
        holder = lock_holder(path)
        if holder is None:
            continue  # released between our attempt and the read: try again
        why = _stale_reason(holder)
        if why is None:
            raise LockHeldError(_held_message(path, what, holder))
        _remove_stale(path, holder, why)
    raise LockHeldError(f"{path}: could not take the lock of {what} (it changes hands repeatedly)")


def _create(path: Path, record: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _release(path: Path, token: dict[str, Any]) -> None:
    """Remove the lock only while it is still ours (never one another process took over)."""
    holder = lock_holder(path)
    if holder and holder.get("token") == token["token"]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove_stale(path: Path, holder: dict[str, Any], why: str) -> None:
    """Delete a dead holder's lock, after checking it is still that same lock file."""
    if lock_holder(path) != holder:
        return  # another process took it over meanwhile: the next pass reads the new holder
    who = _who(holder) if holder else "an unreadable lock file"
    print(f"{path}: taking over the lock of {who} ({why})", flush=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# ---------------------------------------------------------------------------- who holds it


def _my_record(what: str) -> dict[str, Any]:
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "pid_start": _process_start(pid),
        "what": what,
        "command": " ".join(sys.argv)[:200],
        "token": secrets.token_hex(8),
    }


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc), to tell a reused pid from its holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22: start time in clock ticks


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _stale_reason(holder: dict[str, Any]) -> str | None:
    """Why the holder is gone (same host only), or None when it may still be writing."""
    if not holder:
        return "its writer died while creating it"
    if holder.get("host") != socket.gethostname():
        return None
    pid = int(holder["pid"])
    if not _pid_alive(pid):
        return f"pid {pid} no longer runs"
    started = holder.get("pid_start")
    if started is not None and _process_start(pid) not in (None, started):
        return f"pid {pid} now belongs to another process"
    return None


def _who(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"


def _held_message(path: Path, what: str, holder: dict[str, Any]) -> str:
    command = holder.get("command")
    who = _who(holder) + (f" ({command})" if command else "")
    if holder.get("host") == socket.gethostname():
        todo = f"wait for it to finish or stop it (kill {holder.get('pid')})"
    else:
        todo = (
            f"another machine is writing here; if {holder.get('host')} is gone and nothing "
            f"runs there, delete {path}"
        )
    return f"{what} is in use by {who}: {todo}; lock file {path}"
