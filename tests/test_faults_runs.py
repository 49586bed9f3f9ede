"""Faults of the run folder as users meet them: two runs on one folder, kills mid-save, moved folders.

Real processes on real files: a training or 06 process held at a known point (a gate file it
waits on, through the public `loss_hook` / `on_batch` hooks), SIGKILLed ones, a run folder moved
with `os.rename`. No mocks.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from _tiny_run import make_run
from test_train import TINY

from kaggle_utils import inference as I
from kaggle_utils import predict as P
from kaggle_utils.layout import find_data
from kaggle_utils.locks import LockHeldError
from kaggle_utils.train import run_stage

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def tiny_member(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not path.exists():
        out = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
        proc.kill()
        pytest.fail(f"{path} never appeared (process rc {proc.poll()}): {out[-2000:]}")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder (not logs/, which loggers may flush) with its size and mtime."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "logs" not in p.relative_to(folder).parts
    }


def _read(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt") as f:
        return pd.read_csv(f, keep_default_na=False)


# ------------------------------------------------------------------- two trainings, one stage

GATED_TRAINING = """
import sys, time
from pathlib import Path
from kaggle_utils.train import run_stage
paused, go = Path(sys.argv[4]), Path(sys.argv[5])

def gate(loss, epoch, step):  # hold the run in its second epoch, after a first last.pt
    if epoch == 1 and step == 0:
        paused.touch()
        while not go.exists():
            time.sleep(0.05)
    return loss

run_stage(sys.argv[1], 0, data_dir=sys.argv[2], run_dir=sys.argv[3], device="cpu",
          progress=False, loss_hook=gate, overrides={"stages.0.epochs": 3})
"""


@pytest.mark.slow
def test_second_training_of_a_busy_stage_fails_at_once_and_writes_nothing(
    small_synthetic, tiny_member, tmp_path
):
    """Same member, other lr, one run folder: the second run used to "start afresh" over the
    first's checkpoints, both exiting 0. Now it fails before any write, naming the first."""
    runs, paused, go = tmp_path / "runs", tmp_path / "paused", tmp_path / "go"
    args = [str(tiny_member), str(small_synthetic), str(runs), str(paused), str(go)]
    first = subprocess.Popen(
        [sys.executable, "-c", GATED_TRAINING, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(paused, first)
        stage_dir = runs / "tiny" / "s1_64x96"
        assert (stage_dir / "last.pt").is_file() and (stage_dir / ".lock").is_file()
        (stage_dir / ".best.pt.busy123.tmp").write_bytes(b"a save in flight")  # not the 2nd's
        before = _snapshot(stage_dir)
        second = subprocess.run(
            [sys.executable, "-m", "kaggle_utils.train", str(tiny_member), "--run-dir", str(runs)]
            + ["--data-dir", str(small_synthetic), "--device", "cpu", "--no-progress"]
            + ["--set", "optimizer.lr=0.01", "--set", "stages.0.epochs=3"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2, second.stdout[-2000:]
        assert "Traceback" not in second.stderr  # one line, the message
        error = second.stderr.strip().splitlines()[-1]
        assert error.startswith("error: stage folder ")
        for part in (f"pid {first.pid}", socket.gethostname(), "since", str(stage_dir / ".lock")):
            assert part in error
        assert "epoch 1/" not in second.stdout  # it never trained
        assert _snapshot(stage_dir) == before  # nor wrote, nor cleaned, anything there
    finally:
        go.touch()
        out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out[-2000:]
    params = json.loads((stage_dir / "params.json").read_text())
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    assert params["member"]["optimizer"]["lr"] == 0.003  # the first run's, start to end
    assert metrics["params_hash"] == params["params_hash"]
    for name in ("best.pt", "last.pt"):  # the weights its Dice describes are its own
        assert (
            torch.load(stage_dir / name, weights_only=False)["params_hash"]
            == metrics["params_hash"]
        )
    assert not (stage_dir / ".lock").exists()


# ------------------------------------------------------------------- temp files of a killed save


@pytest.mark.slow
def test_rerun_after_a_kill_mid_save_removes_every_temp_file(
    small_synthetic, tiny_member, tmp_path, capsys
):
    """SIGKILL a training process after its first last.pt; the temp files a kill during each
    atomic save leaves are planted beside it. The rerun takes over the dead run's lock, removes
    them all (only in its own stage folder) and finishes."""
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "kaggle_utils.train", str(tiny_member), "--run-dir", str(runs)]
    cmd += ["--data-dir", str(small_synthetic), "--device", "cpu", "--no-progress"]
    cmd += ["--set", "stages.0.epochs=5"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stage_dir = runs / "tiny" / "s1_64x96"
    _wait_for(stage_dir / "last.pt", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (stage_dir / ".lock").is_file()  # a SIGKILL releases nothing
    big = os.urandom(1 << 20)
    planted = [
        stage_dir / f".last.pt.{proc.pid}.tmp",
        stage_dir / ".best.pt.x8k2jq.tmp",
        stage_dir / ".metrics.json.a1b2c3.tmp",
        stage_dir / ".history.csv.zz91.tmp",
        stage_dir / ".oof.csv.q0w9.tmp",
        stage_dir / "oof" / ".12345abcdef_01.png.k7d2.tmp",
    ]
    others = [  # not this stage's: another stage, the member folder
        runs / "tiny" / "s2_96x128" / ".best.pt.keep1.tmp",
        runs / "tiny" / ".notes.txt.keep2.tmp",
    ]
    for path in planted + others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(big)
    keep = stage_dir / ".keep"  # a dotfile that is no temp file
    keep.write_text("mine")

    metrics = run_stage(
        tiny_member,
        0,
        data_dir=small_synthetic,
        run_dir=runs,
        device="cpu",
        progress=False,
        overrides={"stages.0.epochs": 5},
    )
    out = capsys.readouterr().out
    assert f"taking over the lock of pid {proc.pid}" in out and "no longer runs" in out
    assert "removed 6 temp file(s)" in out
    assert not list(stage_dir.rglob("*.tmp")), list(stage_dir.rglob("*.tmp"))
    assert all(p.is_file() for p in others) and keep.read_text() == "mine"
    assert metrics["resumed_from_epoch"] > 0 and (stage_dir / "metrics.json").is_file()
    assert len(pd.read_csv(stage_dir / "history.csv")) == 5
    assert not (stage_dir / ".lock").exists()


# ------------------------------------------------------------------- two 06 writers

GATED_SUBMIT = """
import sys, time
from pathlib import Path
from kaggle_utils import predict as P
from kaggle_utils.inference import load_members
from kaggle_utils.layout import find_data
paused, go = Path(sys.argv[4]), Path(sys.argv[5])

def gate(n_done):
    if n_done == 4:
        paused.touch()
        while not go.exists():
            time.sleep(0.05)

P.predict_submission(load_members([sys.argv[1]]), find_data(sys.argv[2]), sys.argv[3],
                     batch_size=2, num_workers=0, chunk_size=2, progress=False, on_batch=gate)
"""


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from _tiny_run import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", size=(64, 96))


KW = {"batch_size": 2, "num_workers": 0, "chunk_size": 2, "progress": False}


def test_second_submission_writer_fails_at_once(small_synthetic, tiny_ckpt, tmp_path):
    """Two 06 on one submission: the second used to crash on a part the first had joined and
    removed. Now it fails before touching anything, naming the first; the first finishes."""
    out, paused, go = tmp_path / "run" / "submission.csv.gz", tmp_path / "paused", tmp_path / "go"
    args = [str(tiny_ckpt), str(small_synthetic), str(out), str(paused), str(go)]
    first = subprocess.Popen(
        [sys.executable, "-c", GATED_SUBMIT, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    members = I.load_members([tiny_ckpt])
    data = find_data(small_synthetic)
    try:
        _wait_for(paused, first)
        before = _snapshot(out.parent)
        started = time.monotonic()
        with pytest.raises(LockHeldError) as err:
            P.predict_submission(members, data, out, restart=True, **KW)
        assert time.monotonic() - started < 5
        msg = str(err.value)
        assert f"submission {out}" in msg and f"pid {first.pid}" in msg
        assert socket.gethostname() in msg and str(out.parent / ".submission.csv.gz.lock") in msg
        assert _snapshot(out.parent) == before  # restart=True did not drop the first's parts
    finally:
        go.touch()
        log = first.communicate(timeout=300)[0]
    assert first.returncode == 0, log[-2000:]
    reference = P.predict_submission(members, data, tmp_path / "ref" / "submission.csv.gz", **KW)
    pd.testing.assert_frame_equal(_read(out), _read(reference.path))
    assert not (out.parent / ".submission.csv.gz.lock").exists()


# ------------------------------------------------------------------- a moved run folder

KILLED_SUBMIT = """
import sys, time
sys.path.insert(0, {tests!r})
from kaggle_utils import predict as P
from kaggle_utils.inference import members_from_ensemble
from kaggle_utils.layout import find_data
members = members_from_ensemble({spec!r}, {run!r})
P.predict_submission(members, find_data({data!r}), {out!r}, batch_size=1, num_workers=0,
                     chunk_size=2, progress=False, on_batch=lambda n: time.sleep(0.3))
"""

SPEC = {
    "members": [
        {"name": "alpha", "checkpoint": "alpha/s1_64x96/best.pt", "weight": 0.5},
        {"name": "beta", "checkpoint": "beta/s1_96x128/best.pt", "weight": 0.5},
    ]
}
KILLED_KW = {"batch_size": 1, "num_workers": 0, "chunk_size": 2, "progress": False}


@pytest.mark.slow
def test_killed_submission_resumes_after_the_run_folder_moved(small_synthetic, tmp_path, capsys):
    """Parts used to record absolute checkpoint paths: a moved run folder started over (or
    refused). Kill 06 mid-way, move the folder, resume there: it continues from its parts."""
    data = find_data(small_synthetic)
    run = tmp_path / "runs" / "demo"
    make_run(data, run)
    full = P.predict_submission(
        I.members_from_ensemble(SPEC, run),
        data,
        tmp_path / "ref" / "submission.csv.gz",
        **KILLED_KW,
    )
    out = run / "submission.csv.gz"
    script = KILLED_SUBMIT.format(
        tests=str(TESTS), spec=SPEC, run=str(run), data=str(small_synthetic), out=str(out)
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    part = run / "submission.csv.gz.parts" / "part-000001.bin"
    _wait_for(part, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    fingerprint = json.loads((run / "submission.csv.gz.parts" / "predict.json").read_text())
    assert [m["checkpoint"] for m in fingerprint["members"]] == [
        m["checkpoint"] for m in SPEC["members"]
    ]

    moved = tmp_path / "elsewhere" / "demo"
    moved.parent.mkdir()
    os.rename(run, moved)
    resumed = P.predict_submission(
        I.members_from_ensemble(SPEC, moved), data, moved / "submission.csv.gz", **KILLED_KW
    )
    assert 4 <= resumed.resumed_from < full.n_images
    assert f"taking over the lock of pid {proc.pid}" in capsys.readouterr().out
    pd.testing.assert_frame_equal(_read(moved / "submission.csv.gz"), _read(full.path))


def test_parts_with_an_earlier_absolute_fingerprint_still_resume(small_synthetic, tmp_path):
    """Fingerprints written before relative paths (absolute checkpoints) are read as before."""
    data = find_data(small_synthetic)
    run = tmp_path / "run"
    make_run(data, run, members=(("alpha", (64, 96), 0.35),))
    spec = {"members": [SPEC["members"][0]]}
    members = I.members_from_ensemble(spec, run)
    out = run / "submission.csv.gz"

    class Stop(Exception):
        pass

    def stop(n_done: int) -> None:
        if n_done >= 6:
            raise Stop

    with pytest.raises(Stop):
        P.predict_submission(members, data, out, on_batch=stop, **KW)
    assert not (run / ".submission.csv.gz.lock").exists()  # released by the exception
    path = run / "submission.csv.gz.parts" / "predict.json"
    old = json.loads(path.read_text())
    for m in old["members"]:
        m["checkpoint"] = str((run / m["checkpoint"]).resolve())  # as earlier versions wrote
    path.write_text(json.dumps(old))
    resumed = P.predict_submission(members, data, out, **KW)
    assert resumed.resumed_from >= 4


@pytest.mark.slow
def test_last_pt_on_a_full_disk_names_it_and_keeps_the_last_good_one(
    small_synthetic, tiny_member, tmp_path
):
    """A real 16 MiB filesystem (tmpfs, needs root as in this project's containers) holds best.pt
    (9 MB) but not the TrainState (weights + AdamW moments, 28 MB): the stage stops with one line
    naming last.pt, and no temp file is left."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)])
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        with pytest.raises(OSError) as err:
            run_stage(
                tiny_member, 0, data_dir=small_synthetic, run_dir=disk, device="cpu",
                progress=False,
            )  # fmt: skip
        stage_dir = disk / "tiny" / "s1_64x96"
        assert err.value.errno == 28 and f"writing {stage_dir / 'last.pt'}" in str(err.value)
        assert (stage_dir / "best.pt").is_file()  # what fitted is intact
        assert not list(stage_dir.glob(".*.tmp")) and not (stage_dir / "metrics.json").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)
