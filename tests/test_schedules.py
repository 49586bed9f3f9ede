"""LR cycles, snapshot checkpoints (05 candidates) and SWA (mean of epoch-end weights, resumable)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kaggle_utils.config import ConfigError, MemberConfig
from kaggle_utils.optim import build_scheduler, cycle_end_epochs, lr_factor

BASE = {
    "name": "m",
    "model": {"arch": "unet", "encoder": "resnet18", "encoder_weights": None},
    "stages": [{"size": "64x96", "epochs": 12}],
}
SPE = 10  # optimizer steps per epoch in the curve tests


def member(schedule=None, **kw) -> MemberConfig:
    return MemberConfig.model_validate({**BASE, "schedule": schedule or {}, **kw})


def curve(m: MemberConfig, warmup: int = 0, spe: int = SPE) -> list[float]:
    total = spe * m.stages[0].epochs
    return [lr_factor(s, total, warmup, m, spe) for s in range(total)]


# ------------------------------------------------------------------------------ LR curves


def test_cosine_restarts_restart_at_the_peak_and_reach_the_floor_at_each_cycle_end():
    m = member({"name": "cosine_restarts", "cycle_epochs": 3, "min_lr_ratio": 0.1})
    f = curve(m)
    L = 3 * SPE
    for k in range(4):  # 12 epochs: four cycles of 30 steps
        assert f[k * L] == pytest.approx(1.0)
        assert f[k * L + L // 2] == pytest.approx(0.55)  # half way down the half cosine
        assert f[k * L + L - 1] == pytest.approx(
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 29 / 30))
        )
    assert cycle_end_epochs(m, 0) == [3, 6, 9, 12]


def test_cosine_restarts_cycle_mult_lengthens_each_cycle():
    m = member({"name": "cosine_restarts", "cycle_epochs": 2, "cycle_mult": 2, "min_lr_ratio": 0})
    f = curve(m)
    starts = [0, 20, 60]  # cycles of 2, 4 and 8 epochs
    for s in starts:
        assert f[s] == pytest.approx(1.0)
    assert f[20 + 20] == pytest.approx(0.5)  # middle of the 4-epoch cycle
    assert f[60 + 40] == pytest.approx(0.5)  # middle of the 8-epoch cycle (cut at epoch 12)
    assert cycle_end_epochs(m, 0) == [2, 6]


def test_cyclic_is_triangular_between_the_floor_and_the_cycle_top():
    m = member({"name": "cyclic", "cycle_epochs": 4, "min_lr_ratio": 0.2, "cycle_peak_ratio": 0.6})
    f = curve(m)
    for k in range(3):
        assert f[k * 40] == pytest.approx(0.2)  # cycle start = previous cycle's end: the floor
        assert f[k * 40 + 10] == pytest.approx(0.4)
        assert f[k * 40 + 20] == pytest.approx(0.6)  # the top at mid-cycle
        assert f[k * 40 + 30] == pytest.approx(0.4)
    assert cycle_end_epochs(m, 0) == [4, 8, 12]


def test_warmup_comes_first_and_cycles_start_after_it():
    m = member({"name": "cyclic", "cycle_epochs": 2, "warmup_epochs": 1, "min_lr_ratio": 0.0})
    f = curve(m, warmup=SPE)
    assert f[:SPE] == pytest.approx([(s + 1) / SPE for s in range(SPE)])
    assert f[SPE] == pytest.approx(0.0) and f[SPE + 10] == pytest.approx(1.0)
    assert cycle_end_epochs(m, 0) == [3, 5, 7, 9, 11]


def test_cyclic_from_epoch_is_the_usual_schedule_then_cycles():
    """The 1st-place pattern: the cosine over the first N epochs, then triangular cycles."""
    m = member({"name": "cosine", "cyclic_from_epoch": 8, "cycle_epochs": 2, "min_lr_ratio": 0.1})
    f = curve(m)
    eight = member({"name": "cosine", "min_lr_ratio": 0.1}, stages=[{"size": 64, "epochs": 8}])
    assert f[:80] == pytest.approx(curve(eight))  # until then: the cosine as if 8 epochs long
    assert f[80] == pytest.approx(0.1) and f[90] == pytest.approx(1.0)
    assert f[100] == pytest.approx(0.1) and f[110] == pytest.approx(1.0)
    assert cycle_end_epochs(m, 0) == [10, 12]


def test_the_scheduler_sets_these_factors_on_the_optimizer_every_step():
    m = member({"name": "cyclic", "cycle_epochs": 1, "min_lr_ratio": 0.5})
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    sched = build_scheduler(opt, m, 0, steps_per_epoch=4)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.005, 0.0075, 0.01, 0.0075] * 2)


def test_cycle_keys_are_checked_and_leave_params_hash_alone_at_their_defaults():
    plain = member().params_hash(0)
    defaults = {"name": "cosine", "cycle_mult": 1.0, "cycle_peak_ratio": 1.0}
    assert member(defaults, snapshots=False, swa=None).params_hash(0) == plain
    cyc = member({"name": "cosine", "cyclic_from_epoch": 8, "cycle_epochs": 2})
    assert cyc.params_hash(0) != plain
    assert member(snapshots=[4]).params_hash(0) != plain
    assert member(swa={"start_epoch": 3}).params_hash(0) != plain
    with pytest.raises(ValueError, match="needs schedule.cycle_epochs"):
        member({"name": "cyclic"})
    with pytest.raises(ValueError, match="snapshots: true .* has no cycles"):
        member(snapshots=True)
    with pytest.raises(ValueError, match="cyclic_from_epoch follows a cosine"):
        member({"name": "cyclic", "cycle_epochs": 2, "cyclic_from_epoch": 3})


def test_a_member_file_with_a_bad_cycle_key_names_it(tmp_path):
    from kaggle_utils.config import load_member

    path = tmp_path / "m.yaml"
    path.write_text(
        "name: m\nmodel: {arch: unet, encoder: resnet18, encoder_weights: null}\n"
        "schedule: {name: cosine_restarts}\nstages: [{size: 64, epochs: 2}]\n"
    )
    with pytest.raises(ConfigError, match=rf"(?s){path}.*cycle_epochs"):
        load_member(path)


# ------------------------------------------------------------------------------ tiny training

TINY = """\
name: tiny
model: {arch: unet, encoder: mobilenet_v2, encoder_weights: null, encoder_depth: 3,
        decoder_channels: [32, 16, 8]}
loss: {bce: 1.0, dice: 1.0}
optimizer: {name: adamw, lr: 0.003}
batch_size: 4
augment: {hflip: 0.5, shift_scale: false, color: false}
n_folds: 2
seed: 3
num_workers: 0
cache: true
max_train_images: 8
max_val_images: 4
val_full_res: false
"""
STAGE = "s1_64x96"


def write_member(tmp_path: Path, extra: str, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(TINY + extra)
    return path


def train(member_file, data, run_dir, extra_callbacks=()):
    from kaggle_utils.engine import prepare_stage, train_stage

    run = prepare_stage(member_file, 0, data_dir=data, run_dir=run_dir, device="cpu")
    return train_stage(run, progress=False, extra_callbacks=extra_callbacks)


SNAPSHOT_MEMBER = """\
schedule: {name: cyclic, cycle_epochs: 1, min_lr_ratio: 0.1}
ema: {decay: 0.5}
snapshots: true
stages:
  - {size: 64x96, epochs: 3}
"""


@pytest.fixture(scope="module")
def snapshot_run(small_synthetic, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("snapshots")
    train(write_member(tmp, SNAPSHOT_MEMBER), small_synthetic, tmp / "runs")
    return tmp / "runs"


def test_snapshots_are_written_at_each_cycle_end_in_best_pt_format(snapshot_run):
    from kaggle_utils.checkpoint import load_checkpoint, load_member_model
    from kaggle_utils.engine.state import load_train_state

    stage_dir = snapshot_run / "tiny" / STAGE
    snaps = sorted(p.name for p in (stage_dir / "snapshots").glob("*.pt"))
    assert snaps == ["epoch_01.pt", "epoch_02.pt", "epoch_03.pt"]
    best = load_checkpoint(stage_dir / "best.pt")
    last = load_train_state(stage_dir / "last.pt")
    for name in snaps:
        ckpt = load_checkpoint(stage_dir / "snapshots" / name)
        assert set(ckpt) >= set(best) and ckpt["size"] == best["size"]  # best.pt's keys
        model, info = load_member_model(stage_dir / "snapshots" / name)  # best.pt's loader
        assert info["size"] == (64, 96)
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 1, 64, 96)
    # the last snapshot holds the evaluation weights, the EMA's, as last.pt has them
    final = load_checkpoint(stage_dir / "snapshots" / "epoch_03.pt")["model"]
    for k, v in last["ema"].items():
        assert torch.equal(final[k], v), k
    assert any(not torch.equal(final[k], v) for k, v in last["model"].items())


def test_snapshot_oof_is_the_snapshots_own_prediction(snapshot_run, small_synthetic):
    import cv2
    import pandas as pd

    from kaggle_utils.checkpoint import load_checkpoint
    from kaggle_utils.ensemble import repredict
    from kaggle_utils.layout import find_data

    snap_dir = snapshot_run / "tiny" / STAGE / "snapshots"
    oof = pd.read_csv(snap_dir / "epoch_02_oof" / "oof.csv")
    assert len(oof) == 4 and {"id", "dice", "car", "angle"} <= set(oof.columns)
    ckpt = load_checkpoint(snap_dir / "epoch_02.pt")
    assert ckpt["dice"] == pytest.approx(oof["dice"].mean())
    again = repredict(snap_dir / "epoch_02.pt", find_data(small_synthetic), list(oof["id"]), False)
    for image_id, prob in again.items():
        png = cv2.imread(str(snap_dir / "epoch_02_oof" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert abs(png.astype(int) - prob).max() <= 1, image_id


def test_05_weighs_snapshots_as_candidates_and_06_loads_them(snapshot_run, small_synthetic):
    from kaggle_utils import ensemble as E
    from kaggle_utils.inference import members_from_ensemble
    from kaggle_utils.layout import find_data

    data = find_data(small_synthetic)
    stages = E.pick_stages(E.find_stages(snapshot_run), "best")
    snaps = E.snapshot_stages(stages)
    best = stages[0].metrics["best_epoch"]  # its snapshot is best.pt's weights: not a candidate
    kept = [k for k in (1, 2, 3) if k != best]
    assert [s.member for s in snaps] == [f"tiny@s1/epoch_0{k}" for k in kept]
    candidates = stages + snaps
    oof = E.oof_set(candidates, data, source="oof")
    assert oof.members == ["tiny", *(f"tiny@s1/epoch_0{k}" for k in kept)]
    choice = E.choose(oof)
    assert len(choice.weights) == 3
    spec = E.ensemble_spec(candidates, choice, snapshot_run)
    assert spec["members"][1]["checkpoint"] == f"tiny/{STAGE}/snapshots/epoch_0{kept[0]}.pt"
    assert spec["members"][1]["cv_dice"] == pytest.approx(snaps[0].cv_dice, abs=1e-6)
    spec["members"] = [{**m, "weight": 1.0} for m in spec["members"]]
    assert len(members_from_ensemble(spec, snapshot_run, device="cpu")) == 3


def test_a_fresh_start_drops_snapshots_of_an_earlier_run(small_synthetic, tmp_path):
    member_file = write_member(
        tmp_path, SNAPSHOT_MEMBER.replace("snapshots: true", "snapshots: [2]")
    )
    stale = tmp_path / "runs" / "tiny" / STAGE / "snapshots" / "epoch_09.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    train(member_file, small_synthetic, tmp_path / "runs")
    assert sorted(p.name for p in stale.parent.glob("*.pt")) == ["epoch_02.pt"]


# ------------------------------------------------------------------------------ SWA

SWA_MEMBER = """\
schedule: {name: constant}
swa: {start_epoch: 2, bn_batches: 1}
stages:
  - {size: 64x96, epochs: 4}
"""


class EpochWeights:
    """Records the raw weights at each epoch's end (extra callbacks run before the built-ins)."""

    def __init__(self):
        self.weights = []

    def on_train_epoch_end(self, engine):
        model = engine.state.model
        self.weights.append({k: p.detach().clone() for k, p in model.named_parameters()})


class Interrupt(RuntimeError):
    pass


class InterruptAt:
    """Stops the process at the start of epoch `epoch` (from 0), after last.pt of the one before."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, epoch: int):
        if epoch == self.epoch:
            raise Interrupt(f"interrupted at epoch {epoch}")


def test_swa_is_the_mean_of_the_epoch_end_weights(small_synthetic, tmp_path):
    import pandas as pd

    from kaggle_utils.checkpoint import load_checkpoint, load_member_model

    rec = EpochWeights()
    metrics = train(write_member(tmp_path, SWA_MEMBER), small_synthetic, tmp_path / "runs", [rec])
    stage_dir = tmp_path / "runs" / "tiny" / STAGE
    swa = load_checkpoint(stage_dir / "swa.pt")
    assert swa["swa"] and swa["swa_epochs"] == 3  # epochs 2, 3 and 4
    for name in rec.weights[0]:
        mean = torch.stack([w[name] for w in rec.weights[1:]]).mean(0)
        torch.testing.assert_close(swa["model"][name], mean, rtol=1e-5, atol=1e-6)
    load_member_model(stage_dir / "swa.pt")  # loadable wherever best.pt is
    best = load_checkpoint(stage_dir / "best.pt")
    # here the mean (BatchNorm statistics recomputed) beats every epoch: best.pt, the stage's
    # Dice and its OOF are the mean's
    assert best.get("swa") and metrics["best_dice"] == pytest.approx(swa["dice"])
    assert metrics["best_epoch"] == 4
    oof = pd.read_csv(stage_dir / "oof.csv")
    assert oof["dice"].mean() == pytest.approx(swa["dice"])


def test_a_resumed_run_with_swa_equals_an_uninterrupted_one(small_synthetic, tmp_path):
    """Interrupted after epoch 3's last.pt (two epochs averaged), then resumed: swa.pt, best.pt
    and the history equal the uninterrupted run's."""
    import pandas as pd

    from kaggle_utils.checkpoint import load_checkpoint
    from kaggle_utils.engine.state import load_train_state

    member_file = write_member(tmp_path, SWA_MEMBER)
    with pytest.raises(Interrupt):
        train(member_file, small_synthetic, tmp_path / "killed", [InterruptAt(3)])
    killed = tmp_path / "killed" / "tiny" / STAGE
    state = load_train_state(killed / "last.pt")
    assert state["epoch"] == 3 and int(state["swa"]["n_averaged"]) == 2
    resumed = train(member_file, small_synthetic, tmp_path / "killed")
    assert resumed["resumed_from_epoch"] == 3
    straight = train(member_file, small_synthetic, tmp_path / "straight")
    ref = tmp_path / "straight" / "tiny" / STAGE
    for name in ("swa.pt", "best.pt"):
        a, b = load_checkpoint(killed / name), load_checkpoint(ref / name)
        for k in b["model"]:
            torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    h1, h2 = pd.read_csv(killed / "history.csv"), pd.read_csv(ref / "history.csv")
    pd.testing.assert_series_equal(h1["train_loss"], h2["train_loss"], rtol=1e-5)
    assert resumed["best_dice"] == pytest.approx(straight["best_dice"], abs=1e-6)
