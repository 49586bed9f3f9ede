"""The budget planner (hours, sessions, weekly quota) and the kernel status over run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kaggle_utils.kernels import main
from kaggle_utils.kernels.budget import (
    REFERENCE_PREDICT,
    TRAIN_FORWARDS,
    TTA_FORWARDS,
    USABLE_HOURS,
    kernel_status,
    plan_budget,
)


def _ensemble(root: Path, epochs: int = 10, n_folds: int = 4) -> Path:
    folder = root / "params" / "small"
    folder.mkdir(parents=True)
    ens = {"name": "small", "members": ["m1.yaml"], "folds": [0], "n_folds": n_folds}
    (folder / "ensemble.yaml").write_text(json.dumps(ens))
    member = {
        "name": "m1",
        "model": {"arch": "unet", "encoder": "resnet34", "encoder_weights": None},
        "n_folds": n_folds,
        "stages": [
            {"size": "1024x1024", "epochs": epochs},
            {"size": "512x1024", "epochs": epochs},
        ],
    }
    (folder / "m1.yaml").write_text(json.dumps(member))
    return folder / "ensemble.yaml"


def test_planner_numbers_from_measured_figures(tmp_path):
    figures = tmp_path / "figures.json"
    train = {"size": [1024, 1024], "amp_images_per_s": 10.0, "fp32_images_per_s": 4.0}
    submit = {"images_per_s": 5.0, "member_size": [1024, 1024]}
    figures.write_text(
        json.dumps({"Tesla T4": {"date": "2026-12-01", "train": train, "submit": submit}})
    )
    budget = plan_budget(_ensemble(tmp_path), "NvidiaTeslaT4", figures=figures)
    by_slug = {k.slug: k for k in budget.kernels}
    assert by_slug["carvana-small-01-eda"].hours is None  # CPU: outside the GPU quota
    train_k = by_slug["carvana-small-04-m1-f0"]
    # 5,088 x 3/4 = 3,816 train, 1,272 validation at a third of a training image, 2 T4s at 0.9
    per_epoch = (3816 + 1272 / TRAIN_FORWARDS) / 10.0
    expected = 10 * per_epoch * (1.0 + 0.5) / (2 * 0.9) / 3600
    assert train_k.basis == "measured" and train_k.accelerator == "NvidiaTeslaT4"
    assert train_k.hours == pytest.approx(expected)
    assert train_k.sessions == max(1, math.ceil(expected / USABLE_HOURS))
    submit_k = by_slug["carvana-small-06-submit"]
    # 100,064 images, the member predicts at its last stage's 512x1024 (half the pixels), 2 TTA
    assert submit_k.hours == pytest.approx(100_064 * 0.5 / 5.0 / 3600)
    assert budget.gpu_hours == pytest.approx(sum(k.hours or 0 for k in budget.kernels))
    text = budget.describe()
    assert "measured on Tesla T4 (2026-12-01" in text and "weekly GPU quota" in text


def test_a_crop_stage_trains_at_the_crop_cost_and_validates_whole_frames(tmp_path):
    """The 1st-place full frame on 1024x1024 crops: training images cost the crop's pixels,
    validation the whole 1280x1918 frame's."""
    figures = tmp_path / "figures.json"
    train = {"size": [1024, 1024], "amp_images_per_s": 10.0, "fp32_images_per_s": 4.0}
    figures.write_text(json.dumps({"Tesla T4": {"date": "2026-12-01", "train": train}}))
    path = _ensemble(tmp_path)
    member = json.loads((path.parent / "m1.yaml").read_text())
    member["stages"] = [{"size": "1280x1918", "crop": "1024x1024", "epochs": 10}]
    (path.parent / "m1.yaml").write_text(json.dumps(member))
    budget = plan_budget(path, "NvidiaTeslaT4", figures=figures)
    train_k = {k.slug: k for k in budget.kernels}["carvana-small-04-m1-f0"]
    frame = 1280 * 1918 / (1024 * 1024)
    per_epoch = (3816 * 1.0 + 1272 / TRAIN_FORWARDS * frame) / 10.0
    assert train_k.hours == pytest.approx(10 * per_epoch / (2 * 0.9) / 3600)
    assert "crops at cost 1.00" in " ".join(train_k.details)


def test_planner_without_figures_labels_its_estimate(tmp_path, capsys):
    ensemble = _ensemble(tmp_path, epochs=400)
    empty = tmp_path / "none.json"
    budget = plan_budget(ensemble, "NvidiaH100", figures=empty)
    (train_k,) = [k for k in budget.kernels if "-04-" in k.slug]
    assert train_k.basis == "estimate"
    rate = REFERENCE_PREDICT * TTA_FORWARDS / TRAIN_FORWARDS  # one H100: devices 1
    expected = 400 * (3816 + 1272 / TRAIN_FORWARDS) * 1.5 / rate / 3600
    assert train_k.hours == pytest.approx(expected)
    assert train_k.sessions == math.ceil(expected / USABLE_HOURS) > 1  # needs several sessions
    assert (
        main(["plan", str(ensemble), "--accelerator", "NvidiaH100", "--figures", str(empty)]) == 0
    )
    out = capsys.readouterr().out
    assert "ESTIMATE: H100 was never measured" in out and "4th-place" in out
    assert main(["plan", str(ensemble), "--accelerator", "NvidiaTeslaT4x2"]) == 2
    assert "did you mean 'NvidiaTeslaT4'" in capsys.readouterr().err


def _finish(stage_dir: Path, params_hash: str) -> None:
    stage_dir.mkdir(parents=True)
    (stage_dir / "metrics.json").write_text(json.dumps({"params_hash": params_hash}))


def test_status_over_a_run_folder(tmp_path, capsys):
    from kaggle_utils.config import load_member
    from kaggle_utils.runs import stage_dir_for, stage_hash

    ensemble = _ensemble(tmp_path)
    run = tmp_path / "run"
    member = load_member(ensemble.parent / "m1.yaml")
    (run).mkdir()
    (run / "folds.csv").write_text("id,fold\n")
    _finish(stage_dir_for(run, member, 0, 0), stage_hash(member, 0, 0))
    # the second stage stopped at its time budget: last.pt left, no metrics.json
    stage_dir_for(run, member, 1, 0).mkdir(parents=True)
    (stage_dir_for(run, member, 1, 0) / "last.pt").write_bytes(b"x")
    states = {s.slug: s for s in kernel_status(run, ensemble=ensemble)}
    assert states["carvana-small-02-split"].state == "done"
    train = states["carvana-small-04-m1-f0"]
    assert train.state == "to continue" and "s2_512x1024: resume" in train.detail
    assert states["carvana-small-05-ensemble"].state == "waiting on carvana-small-04-m1-f0"
    assert states["carvana-small-06-submit"].state.startswith("waiting on")
    # a missing stage folder: the member kernel has not started, and nothing waits on 01
    import shutil

    shutil.rmtree(run / "m1")
    states = {s.slug: s for s in kernel_status(run, ensemble=ensemble)}
    assert states["carvana-small-04-m1-f0"].state == "ready"
    assert main(["status", str(run)]) == 2
    assert "--ensemble" in capsys.readouterr().err


def test_status_per_stage_kernels_and_unknown_states(tmp_path, monkeypatch):
    """A build folder: each kernel's downloaded output under outputs/<slug>/; a stage state this
    code does not know (e.g. a newer "continue") counts as to continue."""
    import kaggle_utils.runs as runs
    from kaggle_utils.config import load_member
    from kaggle_utils.kernels import build_kernels
    from kaggle_utils.runs import stage_dir_for, stage_hash

    ensemble = _ensemble(tmp_path)
    out = tmp_path / "kernels"
    build_kernels(ensemble, "alice", out, per_stage=True, package=False)
    member = load_member(ensemble.parent / "m1.yaml")
    # the package is skipped: ship the member file where the bundles say it lies
    (out / "_package").mkdir()
    (out / "_package" / "small__m1.yaml").write_text((ensemble.parent / "m1.yaml").read_text())
    outputs = tmp_path / "outputs"
    s1 = outputs / "carvana-small-03-m1-f0-s1" / "runs" / "small"
    _finish(stage_dir_for(s1, member, 0, 0), stage_hash(member, 0, 0))
    (outputs / "carvana-small-02-split" / "runs" / "small").mkdir(parents=True)
    (outputs / "carvana-small-02-split" / "runs" / "small" / "folds.csv").write_text("id\n")
    s2 = outputs / "carvana-small-03-m1-f0-s2" / "runs" / "small"
    stage_dir_for(s2, member, 1, 0).mkdir(parents=True)
    states = {s.slug: s.state for s in kernel_status(out, outputs=outputs)}
    assert states["carvana-small-03-m1-f0-s1"] == "done"
    assert states["carvana-small-03-m1-f0-s2"] == "ready"
    assert states["carvana-small-05-ensemble"] == "waiting on carvana-small-03-m1-f0-s2"

    original = runs.stage_status  # a state added later (the lead's "continue") reads as such
    monkeypatch.setattr(
        runs, "stage_status", lambda d, h: "continue" if d.name.startswith("s2") else original(d, h)
    )
    states = {s.slug: s.state for s in kernel_status(out, outputs=outputs)}
    assert states["carvana-small-03-m1-f0-s2"] == "to continue"


def test_status_of_shard_kernels_reads_their_shard_files(tmp_path):
    """With n_shards, a 06 shard kernel is done when its shard's rows are in its output (not a
    submission.csv.gz, which only the merge writes)."""
    from kaggle_utils.kernels import build_kernels
    from kaggle_utils.shards import shard_path

    ensemble = _ensemble(tmp_path)
    ensemble.write_text(json.dumps({**json.loads(ensemble.read_text()), "n_shards": 2}))
    out = tmp_path / "kernels"
    build_kernels(ensemble, "alice", out, package=False)
    (out / "_package").mkdir()  # the package is skipped: ship the member file where bundles say
    (out / "_package" / "small__m1.yaml").write_text((ensemble.parent / "m1.yaml").read_text())
    outputs = tmp_path / "outputs"
    run = outputs / "carvana-small-06-submit-shard-0-of-2" / "runs" / "small"
    done = shard_path(run / "submission.csv.gz", 0, 2)
    done.parent.mkdir(parents=True)
    done.write_bytes(b"")
    states = {s.slug: s.state for s in kernel_status(out, outputs=outputs)}
    assert states["carvana-small-06-submit-shard-0-of-2"] == "done"
    assert states["carvana-small-06-submit-shard-1-of-2"] != "done"
    assert states["carvana-small-06-submit"] != "done"  # the merge has not run


def test_the_planner_splits_the_test_pass_over_shard_kernels(tmp_path):
    ensemble = _ensemble(tmp_path)
    whole = {e.slug: e.hours for e in plan_budget(ensemble, "NvidiaTeslaT4").kernels}
    ensemble.write_text(json.dumps({**json.loads(ensemble.read_text()), "n_shards": 2}))
    sharded = {e.slug: e.hours for e in plan_budget(ensemble, "NvidiaTeslaT4").kernels}
    shards = [sharded[f"carvana-small-06-submit-shard-{i}-of-2"] for i in (0, 1)]
    assert sum(shards) == pytest.approx(whole["carvana-small-06-submit"])
    assert shards[0] == pytest.approx(shards[1]) and sharded["carvana-small-06-submit"] == 0
