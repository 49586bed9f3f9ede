"""A stage's time budget (Kaggle's 12-hour sessions): stop cleanly, continue in the next session.

The real path: `python -m kaggle_utils.train` in a subprocess, inside a simulated Kaggle kernel
(input and working folders given by the environment variables kaggle_utils.environment reads).
The first session stops at a 20-second budget (17 s of it spent before the stage, so the stop
comes early on any CPU); the second, with the first's output attached as
an input, resumes from its last.pt and ends where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import TINY

from kaggle_utils.engine.state import load_train_state

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 100  # ~0.3 s each here (~30 s in all): the 3 s left of the budget end it early
SPENT_S = 17  # session 1 "started" 17 s before the stage (an install cell, data loading...)


def _train(member: Path, data: Path, run_dir: str, cwd: Path, env: dict, *extra: str) -> str:
    cmd = [sys.executable, "-m", "kaggle_utils.train", str(member), "--data-dir", str(data)]
    cmd += ["--run-dir", run_dir, "--device", "cpu", "--no-progress", *extra]
    cmd += ["--set", f"stages.0.epochs={EPOCHS}", "--set", "val_every=1000"]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


def _kaggle(root: Path) -> dict:
    """The environment of a simulated Kaggle kernel rooted at `root` (input/, working/)."""
    for sub in ("input", "working"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_UTILS_SESSION")}
    env["KAGGLE_UTILS_KAGGLE_INPUT"] = str(root / "input")
    env["KAGGLE_UTILS_KAGGLE_WORKING"] = str(root / "working")
    return env


@pytest.mark.slow
def test_a_budgeted_stage_pauses_and_the_next_session_continues_it(small_synthetic, tmp_path):
    member = tmp_path / "tiny.yaml"
    member.write_text(TINY)
    # session 1: a 20-second budget
    first = tmp_path / "session1"
    out1 = _train(
        member, small_synthetic, "runs/x", tmp_path, _kaggle(first), "--time-budget", "20"
    )
    stage1 = first / "working" / "runs" / "x" / "tiny" / "s1_64x96"
    paused = json.loads((stage1 / "paused.json").read_text())
    assert "paused after epoch" in out1 and paused["paused"] and "time budget" in paused["reason"]
    assert 0 < paused["epochs_done"] < EPOCHS and not (stage1 / "metrics.json").exists()
    assert load_train_state(stage1 / "last.pt")["epoch"] == paused["epochs_done"]

    # session 2: the same kernel's next version, session 1's output attached as an input
    second = tmp_path / "session2"
    env2 = _kaggle(second)
    shutil.copytree(first / "working", second / "input" / "the-kernel")
    out2 = _train(member, small_synthetic, "runs/x", tmp_path, env2)
    stage2 = second / "working" / "runs" / "x" / "tiny" / "s1_64x96"
    assert "continued from the upstream output" in out2 and "resuming s1_64x96" in out2
    metrics = json.loads((stage2 / "metrics.json").read_text())
    assert (
        metrics["resumed_from_epoch"] == paused["epochs_done"]
        and not (stage2 / "paused.json").exists()
    )

    # the same weights as one uninterrupted run
    straight_env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_UTILS_")}
    _train(member, small_synthetic, str(tmp_path / "straight"), tmp_path, straight_env)
    straight = tmp_path / "straight" / "tiny" / "s1_64x96"
    a, b = (
        load_train_state(stage2 / "last.pt")["model"],
        load_train_state(straight / "last.pt")["model"],
    )
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert metrics["best_dice"] == pytest.approx(
        json.loads((straight / "metrics.json").read_text())["best_dice"], abs=1e-6
    )


def test_the_deadline_follows_the_session_and_kaggle(monkeypatch, tmp_path):
    from kaggle_utils import environment
    from kaggle_utils.engine import timelimit

    monkeypatch.setenv(timelimit.SESSION_ENV, "1000.0")
    monkeypatch.delenv(timelimit.BUDGET_ENV, raising=False)
    assert timelimit.session_deadline(60) == 1060.0
    assert timelimit.session_deadline(0) is None  # 0: no limit
    monkeypatch.setattr(environment, "KAGGLE_INPUT", tmp_path / "in")
    monkeypatch.setattr(environment, "KAGGLE_WORKING", tmp_path / "work")
    assert timelimit.session_deadline() is None  # not on Kaggle: no limit by default
    (tmp_path / "in").mkdir()
    (tmp_path / "work").mkdir()
    assert timelimit.session_deadline() == 1000.0 + timelimit.KAGGLE_BUDGET_S
    monkeypatch.setenv(timelimit.BUDGET_ENV, "30")
    assert timelimit.session_deadline() == 1030.0
