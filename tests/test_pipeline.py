"""The batch runner: its plan, step selection, and that a crashed member leaves the others running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kaggle_utils.pipeline import build_plan, main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "params" / "demo" / "ensemble.yaml"


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kaggle_utils.pipeline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_dry_run_prints_every_notebook_in_order(tmp_path):
    result = _cli(str(DEMO), "--dry-run", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    notebooks = [line.split()[1] for line in result.stdout.splitlines() if line[:1].isdigit()]
    members = yaml.safe_load(DEMO.read_text())["members"]
    assert notebooks == ["01_eda.ipynb", "02_split.ipynb"] + ["04_stage_up.ipynb"] * len(
        members
    ) + ["05_ensemble.ipynb", "06_submit.ipynb"]
    assert str(tmp_path / "run") in result.stdout
    assert not (tmp_path / "run").exists(), "a dry run must not write anything"


def test_every_planned_parameter_is_declared_by_its_notebook():
    import papermill as pm

    for job in build_plan(DEMO, device="cpu").jobs:
        declared = pm.inspect_notebook(str(REPO / "notebooks" / job.step.notebook))
        unknown = set(job.parameters) - set(declared)
        assert not unknown, f"{job.step.notebook} does not declare {sorted(unknown)}"


def test_only_and_from_select_steps():
    only = build_plan(DEMO, only=["01", "05"])
    assert [j.step.key for j in only.jobs] == ["01", "05"]
    later = build_plan(DEMO, start="05")
    assert [j.step.key for j in later.jobs] == ["05", "06"]


def test_members_get_one_gpu_each_when_several_exist():
    plan = build_plan(DEMO, only=["04"], n_gpus=2)
    assert [j.gpu for j in plan.jobs] == ["0", "1"][: len(plan.jobs)]
    assert all(j.gpu is None for j in build_plan(DEMO, only=["04"], n_gpus=0).jobs)


def test_unknown_step_is_refused():
    with pytest.raises(SystemExit, match="unknown step '07'"):
        main([str(DEMO), "--only", "07", "--dry-run"])


def _member(tmp_path: Path, name: str, encoder: str) -> str:
    spec = {
        "name": name,
        "model": {
            "arch": "unet",
            "encoder": encoder,
            "encoder_weights": None,
            "encoder_depth": 3,
            "decoder_channels": [16, 8, 8],
        },
        "loss": {"bce": 1.0, "dice": 1.0},
        "batch_size": 4,
        "n_folds": 2,
        "fold": 0,
        "num_workers": 0,
        "cache": True,
        "max_train_images": 8,
        "max_val_images": 4,
        "val_full_res": False,
        "stages": [{"size": "64x96", "epochs": 1}],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path.name


@pytest.mark.slow
def test_a_failed_member_is_reported_and_the_others_finish(tmp_path, small_synthetic):
    members = [_member(tmp_path, "good", "resnet18"), _member(tmp_path, "broken", "no_such_net")]
    ensemble = tmp_path / "ensemble.yaml"
    ensemble.write_text(yaml.safe_dump({"name": "t", "members": members, "n_folds": 2}))
    run = tmp_path / "run"
    result = _cli(
        str(ensemble), "--only", "04", "--jobs", "2", "--data-dir", str(small_synthetic),
        "--run-dir", str(run), "--device", "cpu",
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "[FAILED] 04_stage_up:broken:fold0" in out
    assert "cell" in out and "no_such_net" in out
    assert "[ok    ] 04_stage_up:good:fold0" in out
    assert list(run.glob("good/**/best.pt")), "the healthy member must finish its stage"
    assert (run / "executed" / "04_stage_up__broken__fold0.ipynb").exists()
    assert "validation Dice" in result.stdout and "good" in (run / "summary.txt").read_text()
