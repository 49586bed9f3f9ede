"""Atomic writes survive kills; checkpoints rebuild a member for prediction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kaggle_utils.checkpoint import (
    CheckpointError,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    load_member_model,
    save_checkpoint,
)
from kaggle_utils.models import build_model

SPEC = {
    "arch": "unet",
    "encoder": "mobilenet_v2",
    "encoder_weights": None,
    "encoder_depth": 3,
    "decoder_channels": [32, 16, 8],
}


def test_atomic_write_replaces_and_cleans(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
    atomic_write_json(tmp_path / "m.json", {"b": 1})
    assert (tmp_path / "m.json").read_text().strip() == '{\n  "b": 1\n}'


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write_text(target, "old")

    def broken(f):
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_member_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    path = save_checkpoint(
        tmp_path / "best.pt",
        model,
        model_spec=SPEC,
        size=(64, 96),
        epoch=3,
        extra={"member": "tiny", "stage": 1, "stage_name": "s2_64x96", "dice": 0.97},
    )
    rebuilt, info = load_member_model(path)
    assert not rebuilt.training
    assert info["size"] == (64, 96) and info["member"] == "tiny" and info["dice"] == 0.97
    assert info["stage"] == 1 and info["epoch"] == 3 and "model" not in info
    x = torch.randn(2, 3, 80, 100)  # not a multiple of 32: the wrapper pads and crops
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_unreadable_checkpoints_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match=str(bad)):
        load_checkpoint(bad)
    torch.save({"model": {}}, tmp_path / "nospec.pt")
    with pytest.raises(CheckpointError, match="lacks 'model_spec'"):
        load_member_model(tmp_path / "nospec.pt")


WRITER = """
import sys, torch
from kaggle_utils.checkpoint import atomic_torch_save
i = 0
while True:
    atomic_torch_save({"i": i, "model": torch.full((2_000_000,), float(i))}, sys.argv[1])
    print(i, flush=True)
    i += 1
"""


def test_kill_during_save_never_corrupts(tmp_path):
    """SIGKILL a process that rewrites an 8 MB checkpoint in a loop: the file always loads whole."""
    target = tmp_path / "last.pt"
    for delay in (0.25, 0.5):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[1],
        )
        deadline = time.time() + 60
        while not target.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ckpt = load_checkpoint(target)
        assert torch.all(ckpt["model"] == float(ckpt["i"]))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(name.startswith(".last.pt.") for name in leftovers)  # only orphaned temp files
