"""DDP on the CPU (gloo) through torchrun, as a Kaggle T4 x2 or two machines would run it.

The member trains a batch-independent network (GroupNorm with one group in the encoder, no norm in
the decoder) on plain BCE, with SGD: then a 2-process run with the same global batch computes the
same optimisation as one process, and the only difference left is the order of float32 sums
(DDP's all-reduce averages two half-batch gradients instead of one full-batch mean). Each step's
gradient then differs by a few float32 ulps (relative ~1e-6); SGD adds lr x that difference per
step, so after the run's ~8 steps the weights agree to ~1e-5 (measured 8e-6). We allow 1e-4
(abs, on weights of order 0.1); the validation loss to 1e-4 relative, the OOF probabilities to one
uint8 level (rounding), and the Dice to 1e-3 (a flipped pixel near the threshold moves the Dice of
a ~60,000-pixel car by ~1e-5). A 2-epoch net this small predicts little foreground, so the
continuous scores (loss, probabilities) are the ones that can tell two runs apart. Adam would not
do: it divides by sqrt(v), which turns rounding noise in near-zero gradients into steps of size lr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from kaggle_utils.engine.launch import free_port

pytestmark = pytest.mark.slow

MEMBER = """
name: ddp_tiny
model: {arch: unet, encoder: tu-resnet10t, encoder_weights: null, encoder_depth: 3,
        decoder_channels: [32, 16, 8], decoder_use_norm: identity, norm_layer: groupnorm1}
loss: {bce: 1.0, boundary_weight: 0.0}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0}
schedule: {name: constant, warmup_epochs: 0}
batch_size: 4
augment: {hflip: 0.5, shift_scale: false, color: false}
n_folds: 2
seed: 5
num_workers: 0
cache: true
val_full_res: false
max_train_images: 16
max_val_images: 6
stages:
  - {size: 64x96, epochs: EPOCHS}
"""

# Every process records the files it opens for writing under the run folder (Python audit hook),
# so the test sees which rank wrote what without any hook in the product code.
SITECUSTOMIZE = """
import os, sys
if "RANK" in os.environ and os.environ.get("DDP_TEST_RUN_DIR"):
    _root, _log = os.environ["DDP_TEST_RUN_DIR"], os.environ["DDP_TEST_LOG"]
    def _hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].startswith(_root):
            mode, flags = args[1], args[2] or 0
            writes = (os.O_WRONLY | os.O_RDWR | os.O_CREAT) & flags
            if (mode and any(c in str(mode) for c in "wax+")) or (mode is None and writes):
                with open(_log + "." + os.environ["RANK"], "a") as f:
                    f.write(args[0] + "\\n")
    sys.addaudithook(_hook)
"""


def _member(tmp_path: Path, epochs: int = 2) -> Path:
    path = tmp_path / "ddp_tiny.yaml"
    path.write_text(MEMBER.replace("EPOCHS", str(epochs)))
    return path


def _env(tmp_path: Path, run_dir: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "DDP_TEST_RUN_DIR": str(run_dir),
        "DDP_TEST_LOG": str(tmp_path / "writes"),
        "OMP_NUM_THREADS": "1",
    }


def _train(member: Path, data: Path, run_dir: Path, *extra: str, env=None, **popen):
    cmd = [
        sys.executable, "-m", "kaggle_utils.train", str(member), "--data-dir", str(data),
        "--run-dir", str(run_dir), "--device", "cpu", "--no-progress", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _finish(process: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-4000:]
    return out


def _weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(stage_dir / "best.pt", map_location="cpu", weights_only=False)["model"]


def _oof_diff(a: Path, b: Path) -> int:
    """Largest difference of two runs' OOF probabilities (uint8 PNGs, same validation ids)."""
    import cv2

    names = sorted(p.name for p in (b / "oof").glob("*.png"))
    assert names and names == sorted(p.name for p in (a / "oof").glob("*.png"))
    read = lambda d, n: cv2.imread(str(d / "oof" / n), cv2.IMREAD_UNCHANGED).astype(int)  # noqa: E731
    return max(int(abs(read(a, n) - read(b, n)).max()) for n in names)


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def one_process(small_synthetic, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp_one")
    member, run_dir = _member(tmp), tmp / "runs"
    _finish(_train(member, small_synthetic, run_dir, env=_env(tmp, run_dir)))
    return run_dir / "ddp_tiny" / "s1_64x96"


def test_two_processes_match_one_and_only_rank_0_writes(small_synthetic, one_process, tmp_path):
    member, run_dir = _member(tmp_path), tmp_path / "runs"
    out = _finish(
        _train(member, small_synthetic, run_dir, "--devices", "2", env=_env(tmp_path, run_dir))
    )
    assert "torch.distributed.run" in out and "--nproc-per-node=2" in out
    stage_dir = run_dir / "ddp_tiny" / "s1_64x96"
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    assert metrics["devices"] == 2 and metrics["global_batch"] == 4
    reference = json.loads((one_process / "metrics.json").read_text())
    assert abs(metrics["best_dice"] - reference["best_dice"]) < 1e-3
    assert metrics["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)
    assert _max_diff(_weights(stage_dir), _weights(one_process)) < 1e-4
    assert _oof_diff(stage_dir, one_process) <= 1
    writes = {p.name.rsplit(".", 1)[1] for p in tmp_path.glob("writes.*")}
    assert writes == {"0"}, f"ranks {sorted(writes)} wrote into the run folder"
    written = (tmp_path / "writes.0").read_text().splitlines()
    assert any(w.endswith("metrics.json") or ".metrics.json" in w for w in written)


def test_two_process_run_killed_mid_epoch_resumes_and_finishes(small_synthetic, tmp_path):
    member, run_dir = _member(tmp_path, epochs=4), tmp_path / "runs"
    env = _env(tmp_path, run_dir)
    stage_dir = run_dir / "ddp_tiny" / "s1_64x96"
    process = _train(
        member, small_synthetic, run_dir, "--devices", "2", env=env, start_new_session=True
    )
    deadline = time.time() + 300
    while not (stage_dir / "history.csv").exists() and time.time() < deadline:
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers, mid-epoch 2
    process.communicate()
    assert (stage_dir / "last.pt").exists() and not (stage_dir / "metrics.json").exists()
    out = _finish(_train(member, small_synthetic, run_dir, "--devices", "2", env=env))
    assert "resuming s1_64x96" in out
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] >= 1 and metrics["epochs_run_here"] <= 3
    history = (stage_dir / "history.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 4  # header + one row per epoch, none repeated


def test_two_nodes_on_localhost(small_synthetic, one_process, tmp_path):
    member, run_dir = _member(tmp_path), tmp_path / "runs"
    port, env = free_port(), _env(tmp_path, run_dir)
    nodes = [
        _train(
            member,
            small_synthetic,
            run_dir,
            "--devices",
            "1",
            "--num-nodes",
            "2",
            "--node-rank",
            str(rank),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            env=env,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outs = [_finish(p) for p in nodes]
    assert "--nnodes=2" in outs[0] and "--node-rank=1" in outs[1]
    stage_dir = run_dir / "ddp_tiny" / "s1_64x96"
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    assert metrics["num_nodes"] == 2
    assert _max_diff(_weights(stage_dir), _weights(one_process)) < 1e-4


def test_batch_that_cannot_be_shared_fails_before_any_write(small_synthetic, tmp_path):
    from kaggle_utils.config import ConfigError
    from kaggle_utils.train import prepare_stage

    with pytest.raises(ConfigError, match="multiple of 3"):
        prepare_stage(
            _member(tmp_path), 0, data_dir=small_synthetic, run_dir=tmp_path / "r", devices=3
        )
    assert not (tmp_path / "r").exists()


def test_03_in_a_notebook_kernel_launches_torchrun_and_reads_the_run_folder(
    small_synthetic, one_process, tmp_path
):
    """03 under papermill with devices=2: the cell starts torchrun as a subprocess (no fork
    inside the Jupyter kernel), streams its log into the cell, then shows the stage's results."""
    import nbformat

    from kaggle_utils.notebook import execute_notebook

    member, run_dir = _member(tmp_path), tmp_path / "runs"
    params = {
        "member_file": str(member),
        "data_dir": str(small_synthetic),
        "run_dir": str(run_dir),
        "device": "cpu",
        "devices": 2,
    }
    execute_notebook("03_train_member.ipynb", tmp_path / "03.ipynb", params)
    stage_dir = run_dir / "ddp_tiny" / "s1_64x96"
    assert json.loads((stage_dir / "metrics.json").read_text())["devices"] == 2
    assert _max_diff(_weights(stage_dir), _weights(one_process)) < 1e-4
    executed = nbformat.read(tmp_path / "03.ipynb", as_version=4)
    text = "".join(
        o.get("text", "") for c in executed.cells for o in c.get("outputs", []) if "text" in o
    )
    assert "torch.distributed.run" in text and "epoch 2/2" in text  # the workers' log, streamed
    pngs = [
        o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert pngs  # curves.png and worst.png of the run folder


def test_sync_batchnorm_only_where_it_runs():
    """SyncBatchNorm for several CUDA devices; one device or the CPU (gloo) keeps BatchNorm."""
    from kaggle_utils.engine.training import with_sync_batchnorm

    def kinds(model):
        return {type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__}

    def net():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert kinds(with_sync_batchnorm(net(), cuda, world=2)) == {"SyncBatchNorm"}
    assert kinds(with_sync_batchnorm(net(), cuda, world=2, enabled=False)) == {"BatchNorm2d"}
    assert kinds(with_sync_batchnorm(net(), cuda, world=1)) == {"BatchNorm2d"}
    assert kinds(with_sync_batchnorm(net(), cpu, world=2)) == {"BatchNorm2d"}


def test_a_member_with_unused_encoder_layers_trains_on_two_processes(small_synthetic, tmp_path):
    """smp's mobilenet_v2 at encoder_depth 3 keeps layers that get no gradient: DDP must not stop
    at the second step on them (Kaggle's T4 x2 trains every member on both GPUs)."""
    from test_train import TINY

    member, run_dir = tmp_path / "tiny.yaml", tmp_path / "runs"
    member.write_text(TINY)
    _finish(_train(member, small_synthetic, run_dir, "--devices", "2", env=_env(tmp_path, run_dir)))
    metrics = json.loads((run_dir / "tiny" / "s1_64x96" / "metrics.json").read_text())
    assert metrics["devices"] == 2 and 0 <= metrics["best_dice"] <= 1
