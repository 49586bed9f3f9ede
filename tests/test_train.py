"""The training engine on tiny synthetic data: artefacts, resume after a real kill, skip, NaN, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _tiny_run import STAGE_ARTEFACTS

from kaggle_utils.checkpoint import load_member_model
from kaggle_utils.config import ConfigError
from kaggle_utils.engine.state import load_train_state
from kaggle_utils.train import NonFiniteLossError, prepare_stage, run_stage

REPO = Path(__file__).resolve().parents[1]
TINY = """\
name: tiny
model: {arch: unet, encoder: mobilenet_v2, encoder_weights: null, encoder_depth: 3,
        decoder_channels: [32, 16, 8]}
loss: {bce: 1.0, dice: 1.0, boundary_weight: 2.0}
optimizer: {name: adamw, lr: 0.003}
schedule: {name: cosine, warmup_epochs: 0.5}
batch_size: 4
augment: {hflip: 0.5, shift_scale: false, color: false}
n_folds: 2
seed: 3
num_workers: 0
cache: true
max_train_images: 12
max_val_images: 6
stages:
  - {size: 64x96, epochs: 2}
  - {size: 96x128, epochs: 1}
"""


@pytest.fixture
def tiny_member(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def stage(member, data, run_dir, **kw):
    return run_stage(
        member,
        kw.pop("stage", 0),
        data_dir=data,
        run_dir=run_dir,
        device="cpu",
        progress=False,
        **kw,
    )


@pytest.mark.slow
def test_stage_writes_every_artefact_and_is_skipped_when_finished(
    small_synthetic, tiny_member, tmp_path
):
    run_dir = tmp_path / "runs"
    metrics = stage(tiny_member, small_synthetic, run_dir)
    stage_dir = run_dir / "tiny" / "s1_64x96"
    for name in STAGE_ARTEFACTS:
        assert (stage_dir / name).is_file(), name
    history = pd.read_csv(stage_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2] and history["val_dice"].notna().all()
    oof = pd.read_csv(stage_dir / "oof.csv")
    assert len(oof) == 6 and oof["dice"].between(0, 1).all()
    assert sorted(p.stem for p in (stage_dir / "oof").glob("*.png")) == sorted(oof["id"])
    import cv2

    png = cv2.imread(str(stage_dir / "oof" / f"{oof['id'][0]}.png"), cv2.IMREAD_UNCHANGED)
    assert png.shape == (64, 96) and png.dtype == "uint8"
    # the OOF probabilities are best.pt's predictions (kept from the last epoch's validation when
    # that epoch is the best, not re-run)
    from kaggle_utils.ensemble import repredict
    from kaggle_utils.layout import find_data

    again = repredict(stage_dir / "best.pt", find_data(small_synthetic), list(oof["id"]), tta=False)
    for image_id, prob in again.items():
        stored = cv2.imread(str(stage_dir / "oof" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert np.abs(stored.astype(int) - prob).max() <= 1, image_id
    # Dice is computed at the data's full resolution (160x240 here, 1280x1918 on Carvana)
    assert metrics["dice_resolution"] == "160x240" and metrics["best_dice"] == pytest.approx(
        oof["dice"].mean()
    )
    assert metrics["images_per_s"] > 0 and metrics["n_train"] == 12 and metrics["n_val"] == 6
    saved = json.loads((stage_dir / "metrics.json").read_text())
    assert saved["best_dice"] == metrics["best_dice"] and saved["params_hash"]
    model, info = load_member_model(stage_dir / "best.pt")
    assert info["size"] == (64, 96) and info["member"] == "tiny" and info["stage"] == 0
    assert info["dice"] == pytest.approx(history["val_dice"].max())
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 1280, 1918)).shape == (1, 1, 1280, 1918)

    mtime = (stage_dir / "last.pt").stat().st_mtime_ns
    again = stage(tiny_member, small_synthetic, run_dir)
    assert again["skipped"] and (stage_dir / "last.pt").stat().st_mtime_ns == mtime
    # changed parameters: the stage is not "finished" any more
    assert (
        prepare_stage(
            tiny_member,
            0,
            data_dir=small_synthetic,
            run_dir=run_dir,
            overrides={"optimizer.lr": 0.001},
        ).status()
        == "resume"
    )

    # next stage from this stage's best.pt, with EMA, SGD, accumulation and a step schedule
    nxt = stage(
        tiny_member,
        small_synthetic,
        run_dir,
        stage=1,
        init_checkpoint=stage_dir / "best.pt",
        overrides={
            "ema": {"decay": 0.9},
            "optimizer.name": "sgd",
            "accumulate": 2,
            "schedule.name": "step",
            "optimizer.lr": 0.01,
        },
    )
    assert (run_dir / "tiny" / "s2_96x128" / "best.pt").is_file() and 0 <= nxt["best_dice"] <= 1
    assert load_train_state(run_dir / "tiny" / "s2_96x128" / "last.pt")["ema"] is not None


def test_nan_loss_stops_and_keeps_last_good_checkpoint(small_synthetic, tiny_member, tmp_path):
    def poison(loss, epoch, step):
        return loss * float("nan") if epoch == 1 else loss

    with pytest.raises(
        NonFiniteLossError, match=r"loss is nan at epoch 2 step 1.*last good checkpoint"
    ):
        stage(tiny_member, small_synthetic, tmp_path, loss_hook=poison)
    stage_dir = tmp_path / "tiny" / "s1_64x96"
    assert load_train_state(stage_dir / "last.pt")["epoch"] == 1  # epoch 1 completed
    assert not (stage_dir / "metrics.json").exists()


def test_exploding_learning_rate_is_caught(small_synthetic, tiny_member, tmp_path):
    with pytest.raises(NonFiniteLossError, match="training loss is (nan|inf)"):
        stage(
            tiny_member,
            small_synthetic,
            tmp_path,
            overrides={"optimizer.lr": 1e30, "schedule.warmup_epochs": 0, "stages.0.epochs": 4},
        )


def test_bad_parameter_fails_before_training(small_synthetic, tiny_member, tmp_path):
    tiny_member.write_text(TINY.replace("batch_size: 4", "batch_sise: 4"))
    with pytest.raises(
        ConfigError, match=rf"(?s){tiny_member}.*'batch_sise'.*did you mean 'batch_size'"
    ):
        stage(tiny_member, small_synthetic, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    tiny_member.write_text(TINY.replace("hflip: 0.5", "vflip: 0.5"))
    with pytest.raises(ConfigError, match="(?s)'augment.*vflip"):
        stage(tiny_member, small_synthetic, tmp_path / "runs")


@pytest.mark.slow
def test_killed_stage_resumes_from_last_pt(small_synthetic, tiny_member, tmp_path):
    """SIGKILL a real training process right after its first last.pt, mid-epoch; rerunning continues
    from that checkpoint and ends where an uninterrupted run ends."""
    overrides = ["--set", "stages.0.epochs=5"]
    cmd = [
        sys.executable,
        "-m",
        "kaggle_utils.train",
        str(tiny_member),
        "--data-dir",
        str(small_synthetic),
        "--run-dir",
        str(tmp_path / "killed"),
        "--device",
        "cpu",
        "--no-progress",
        *overrides,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = tmp_path / "killed" / "tiny" / "s1_64x96" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stage_dir = last.parent
    killed_at = load_train_state(last)["epoch"]  # epochs completed before the kill
    assert killed_at < 5 and not (stage_dir / "metrics.json").exists()

    resumed = stage(
        tiny_member, small_synthetic, tmp_path / "killed", overrides={"stages.0.epochs": 5}
    )
    assert resumed["resumed_from_epoch"] == killed_at > 0
    history = pd.read_csv(stage_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5]

    straight = stage(
        tiny_member, small_synthetic, tmp_path / "straight", overrides={"stages.0.epochs": 5}
    )
    reference = pd.read_csv(tmp_path / "straight" / "tiny" / "s1_64x96" / "history.csv")
    pd.testing.assert_series_equal(history["train_loss"], reference["train_loss"], rtol=1e-4)
    assert resumed["best_dice"] == pytest.approx(straight["best_dice"], abs=1e-4)


def test_cli_stage_starts_from_the_previous_stage(small_synthetic, tiny_member, tmp_path, capsys):
    """`python -m kaggle_utils.train M.yaml --stage 1` continues the curriculum like 04 does."""
    from kaggle_utils.train import main

    args = [str(tiny_member), "--data-dir", str(small_synthetic), "--run-dir", str(tmp_path)]
    args += ["--device", "cpu", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--stage", "1"])
    assert exc.value.code == 2
    assert "s1_64x96/best.pt does not exist" in capsys.readouterr().err
    assert main([*args, "--stage", "0"]) == 0
    capsys.readouterr()
    assert main([*args, "--stage", "1"]) == 0
    best = tmp_path / "tiny" / "s1_64x96" / "best.pt"
    assert f"init {best}" in capsys.readouterr().out


def evaluate(model, loader, loss_fn, masks, device, **options):
    """(mean loss, per-image Dice table, kept probs) of the engine's validation pass."""
    from kaggle_utils.engine.validation import evaluate as engine_evaluate

    total, count, rows, probs = engine_evaluate(model, loader, loss_fn, masks, device, **options)
    return total / count, pd.DataFrame(rows, columns=["id", "dice"]), probs


def test_validation_tta_averages_the_mirrored_prediction(small_synthetic):
    """val_tta scores what 06 submits: the mean of the image's and its mirror's probabilities."""
    from _tiny_run import TINY_SPEC

    from kaggle_utils.dataset import CachedDataset, ValidationMasks
    from kaggle_utils.index import train_index
    from kaggle_utils.layout import find_data
    from kaggle_utils.losses import build_loss
    from kaggle_utils.models import build_model

    data = find_data(small_synthetic)
    index = train_index(data).iloc[:3]
    size = (64, 96)
    loader = torch.utils.data.DataLoader(CachedDataset(data, index, size), batch_size=3)
    masks = ValidationMasks(data, list(index["id"]), True, size)
    torch.manual_seed(0)
    model = build_model(TINY_SPEC).eval()
    loss_fn = build_loss({"bce": 1.0})
    kw = {"keep_probs": True}
    loss, plain, p0 = evaluate(model, loader, loss_fn, masks, torch.device("cpu"), **kw)
    loss_t, tta, p1 = evaluate(model, loader, loss_fn, masks, torch.device("cpu"), tta=True, **kw)
    assert loss_t == pytest.approx(loss)  # the loss is the plain pass's
    x = next(iter(loader))["image"]
    with torch.no_grad():
        a, b = torch.sigmoid(model(x)), torch.sigmoid(model(x.flip(-1))).flip(-1)
    expected = ((a + b) * 0.5 * 255).round().to(torch.uint8)[:, 0].numpy()
    got = np.stack([p1[i] for i in index["id"]])
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert not np.array_equal(got, np.stack([p0[i] for i in index["id"]]))
    assert list(tta["id"]) == list(plain["id"])


def test_guided_validation_scores_the_guided_upsampling(small_synthetic):
    """guided: Dice is that of ``refine.guided_upsample`` with the photo at 1/4 size as guide."""
    from _tiny_run import TINY_SPEC

    from kaggle_utils.config import GuidedFilterConfig
    from kaggle_utils.dataset import CachedDataset, ValidationMasks
    from kaggle_utils.imageio import guide_shape
    from kaggle_utils.index import train_index
    from kaggle_utils.layout import find_data
    from kaggle_utils.losses import build_loss
    from kaggle_utils.metrics import full_res_dice
    from kaggle_utils.models import build_model
    from kaggle_utils.refine import guided_upsample, to_guide

    data = find_data(small_synthetic)
    index = train_index(data).iloc[:3]
    ids, size = list(index["id"]), (64, 96)
    loader = torch.utils.data.DataLoader(CachedDataset(data, index, size), batch_size=3)
    masks = ValidationMasks(data, ids, True, size, guide_scale=4)
    torch.manual_seed(0)
    model = build_model(TINY_SPEC).eval()
    gf = GuidedFilterConfig(scale=4, radius=2, eps=1e-3)
    cpu, loss_fn = torch.device("cpu"), build_loss({"bce": 1.0})
    _, plain, probs = evaluate(model, loader, loss_fn, masks, cpu, keep_probs=True)
    _, guided, probs_g = evaluate(model, loader, loss_fn, masks, cpu, keep_probs=True, guided=gf)
    for i in ids:  # the stored OOF probabilities stay the model's own
        np.testing.assert_array_equal(probs[i], probs_g[i])
    full = masks.get(ids)
    rgb = np.stack([data.load_image(i, size=guide_shape(full.shape[-2:], 4)) for i in ids])
    with torch.no_grad():
        p = torch.sigmoid(model(next(iter(loader))["image"]))
    expected = full_res_dice(guided_upsample(p, to_guide(torch.from_numpy(rgb))), full)
    np.testing.assert_allclose(guided["dice"], expected.numpy(), atol=2e-3)
    assert not np.allclose(guided["dice"], plain["dice"])


def test_cpu_bf16_largest_component_and_tta_options(small_synthetic, tiny_member, tmp_path, capsys):
    """A stage with the CPU-sample options: bf16 autocast where the CPU has bf16 units (else it
    says so and trains in fp32), validation with TTA and the largest component, all recorded."""
    from kaggle_utils.precision import cpu_has_fast_bf16

    opts = {"cpu_bf16": True, "largest_component": True, "val_tta": True}
    opts["guided_filter"] = {"scale": 4, "radius": 2, "eps": 1e-3}
    metrics = stage(tiny_member, small_synthetic, tmp_path, overrides=opts)
    fast = cpu_has_fast_bf16()
    assert metrics["amp"] == ("bfloat16" if fast else "fp32")
    assert metrics["channels_last"] is fast  # "auto": on with AMP, off in CPU fp32
    assert metrics["largest_component"] is True and metrics["val_tta"] is True
    assert metrics["guided_filter"] == opts["guided_filter"]
    assert ("no bf16 units" in capsys.readouterr().out) is not fast
    assert 0 <= metrics["best_dice"] <= 1  # a 2-epoch model: its largest blob may miss the car
    history = pd.read_csv(tmp_path / "tiny" / "s1_64x96" / "history.csv")
    assert history["train_loss"].notna().all() and history["train_loss"].iloc[-1] < 2


def test_last_pt_of_an_older_engine_starts_the_stage_afresh(
    small_synthetic, tiny_member, tmp_path, capsys
):
    """A last.pt without a TrainState (the hand-written loop's format) is not half-loaded: the
    stage says why and trains from the start."""
    stage_dir = tmp_path / "tiny" / "s1_64x96"
    stage_dir.mkdir(parents=True)
    torch.save({"model": {}, "epoch": 0, "params_hash": "old"}, stage_dir / "last.pt")
    metrics = stage(tiny_member, small_synthetic, tmp_path, overrides={"stages.0.epochs": 1})
    assert "holds no kaggle_utils.train_state/1" in capsys.readouterr().out
    assert metrics["resumed_from_epoch"] is None and metrics["epochs_run_here"] == 1
