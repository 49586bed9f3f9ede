"""Run-folder locks (kaggle_utils.locks): held, refused at once, stale ones taken over, released.

Holders are real processes (a held lock in a live child, a SIGKILLed one, one that exited); the
"other host" lock is a lock file as another machine writes it onto a shared folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kaggle_utils.locks import LockHeldError, hold_lock, lock_holder, stage_lock, submission_lock

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from kaggle_utils.locks import hold_lock
with hold_lock(sys.argv[1], "test folder"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder_process(tmp_path):
    """A live process holding tmp_path/.lock (killed at the end)."""
    lock = tmp_path / ".lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc, lock
    proc.kill()
    proc.wait()


def _exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_records_the_holder_and_is_removed_on_exit(tmp_path):
    lock = tmp_path / "stage" / ".lock"
    with hold_lock(lock, "stage folder x") as path:
        assert path == lock
        held = json.loads(lock.read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert held["started"] and held["what"] == "stage folder x"
        assert lock_holder(lock) == held
    assert not lock.exists() and lock_holder(lock) is None


def test_lock_is_released_on_an_exception(tmp_path):
    lock = tmp_path / ".lock"
    with pytest.raises(KeyError), hold_lock(lock):
        assert lock.exists()
        raise KeyError("boom")
    assert not lock.exists()
    with hold_lock(lock):  # free again
        pass


def test_second_holder_fails_at_once_naming_pid_host_since_and_path(holder_process, tmp_path):
    proc, lock = holder_process
    before = lock.read_bytes()
    started = time.monotonic()
    with pytest.raises(LockHeldError) as err, hold_lock(lock, "stage folder runs/m/s1"):
        pytest.fail("the lock was taken twice")
    assert time.monotonic() - started < 1.0
    msg = str(err.value)
    held = json.loads(before)
    assert "\n" not in msg
    for part in ("stage folder runs/m/s1", f"pid {proc.pid}", socket.gethostname(), str(lock)):
        assert part in msg
    assert held["started"] in msg and f"kill {proc.pid}" in msg
    assert lock.read_bytes() == before  # the holder's lock is untouched


def test_lock_of_an_exited_process_is_taken_over(tmp_path, capsys):
    lock = tmp_path / ".lock"
    pid = _exited_pid()
    record = {"pid": pid, "host": socket.gethostname(), "started": "2024-01-01T00:00:00+00:00"}
    lock.write_text(json.dumps(record))
    with hold_lock(lock):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    out = capsys.readouterr().out
    assert f"taking over the lock of pid {pid}" in out and "no longer runs" in out
    assert str(lock) in out


def test_lock_of_a_sigkilled_holder_is_taken_over(holder_process, capsys):
    proc, lock = holder_process
    os.kill(proc.pid, signal.SIGKILL)  # no clean-up at all: the lock file stays
    proc.wait()
    assert lock_holder(lock)["pid"] == proc.pid
    with hold_lock(lock):
        assert lock_holder(lock)["pid"] == os.getpid()
    assert f"taking over the lock of pid {proc.pid}" in capsys.readouterr().out


def test_reused_pid_is_not_the_holder(holder_process, tmp_path, capsys):
    """A live pid whose process started at another time than the lock's holder: a reused pid."""
    proc, _ = holder_process
    lock = tmp_path / "other.lock"
    record = {"pid": proc.pid, "host": socket.gethostname(), "started": "x", "pid_start": "1"}
    lock.write_text(json.dumps(record))
    with hold_lock(lock):
        pass
    assert "now belongs to another process" in capsys.readouterr().out


def test_lock_from_another_host_is_refused_naming_it(tmp_path):
    lock = tmp_path / ".lock"
    record = {"pid": os.getpid(), "host": "gpu-box-7", "started": "2024-05-01T10:00:00+02:00"}
    lock.write_text(json.dumps(record))
    with pytest.raises(LockHeldError) as err, hold_lock(lock, "submission s.csv.gz"):
        pass
    msg = str(err.value)
    assert "gpu-box-7" in msg and "2024-05-01T10:00:00+02:00" in msg
    assert f"if gpu-box-7 is gone and nothing runs there, delete {lock}" in msg
    assert json.loads(lock.read_text()) == record  # never taken from another machine


def test_an_unwritten_lock_file_is_taken_over(tmp_path, capsys):
    """A holder killed between creating the file and writing it leaves an empty lock."""
    lock = tmp_path / ".lock"
    lock.touch()
    with hold_lock(lock):
        assert lock_holder(lock)["pid"] == os.getpid()
    assert "its writer died while creating it" in capsys.readouterr().out


def test_release_leaves_a_lock_another_process_took(tmp_path):
    lock = tmp_path / ".lock"
    other = {"pid": 1, "host": "elsewhere", "started": "now", "token": "not-ours"}
    with hold_lock(lock):
        lock.write_text(json.dumps(other))  # someone removed ours and took it
    assert json.loads(lock.read_text()) == other


def test_stage_and_submission_lock_paths(tmp_path):
    with stage_lock(tmp_path / "m" / "s1") as path:
        assert path == tmp_path / "m" / "s1" / ".lock"
    with submission_lock(tmp_path / "submission.csv.gz") as path:
        assert path == tmp_path / ".submission.csv.gz.lock"
    assert not list(tmp_path.rglob("*.lock"))


def test_locks_import_no_torch():
    code = "import sys, kaggle_utils.locks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
