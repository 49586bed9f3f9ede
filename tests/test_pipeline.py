"""The batch runner: its plan, step selection, and that a crashed member leaves the others running."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kaggle_utils.pipeline import STEPS, build_plan, main

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
    result = _cli(str(DEMO), "--dry-run", "--make-synthetic", "--run-dir", str(tmp_path / "run"))
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


# ------------------------------------------------------------------ the command line as users meet it


def _make_demo_command() -> list[str]:
    """`make demo`'s pipeline command from the Makefile, with its default variables filled in."""
    text = (REPO / "Makefile").read_text()
    defaults = dict(
        line.split(" ?= ", 1) for line in text.splitlines() if " ?= " in line and "$" not in line
    )
    (line,) = [x for x in text.splitlines() if "-m kaggle_utils.pipeline" in x]
    words = shlex.split(line.strip())[1:]  # drop $(PY)
    return [defaults[w[2:-1]] if w.startswith("$(") else w for w in words]


def test_help_lists_the_steps_the_layout_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: kaggle-utils-pipeline params/<set>/ensemble.yaml" in out
    assert "params/<ensemble>.yaml" not in out
    for step in STEPS:  # every step, with the notebook it runs, on a line of its own
        assert any(line.split()[:2] == [step.key, step.notebook] for line in out.splitlines())
    assert "04 runs it once per stage" in out and "03_train_member" in out
    joined = " ".join(out.replace("\\\n", " ").split())  # shell continuation lines joined
    assert " ".join(_make_demo_command()) in joined
    for example in ("--only 04", "--jobs 2", "--dry-run"):
        assert f"ensemble.yaml {example}" in joined or f" {example}" in joined


def test_a_missing_file_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "params" / "nope" / "ensemble.yaml"
    result = _cli(str(missing), "--dry-run")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {missing}: parameter file not found")
    assert result.stdout == ""


def test_a_misspelt_key_is_one_line_and_exit_2(tmp_path):
    member = tmp_path / _member(tmp_path, "m1", "resnet18")
    member.write_text(member.read_text().replace("batch_size:", "batch_sise:"))
    ensemble = tmp_path / "ensemble.yaml"
    ensemble.write_text(yaml.safe_dump({"name": "t", "members": [member.name], "n_folds": 2}))
    result = _cli(str(ensemble), "--dry-run", "--data-dir", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(member) in line and "'batch_sise'" in line and "batch_size" in line


def test_an_unexpected_error_is_not_taken_for_a_user_error(monkeypatch):
    """Only users' mistakes become one line: a bug (here a KeyError out of planning) propagates,
    so its traceback is printed."""
    import kaggle_utils.pipeline as pipeline

    def broken_plan(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(pipeline.cli, "build_plan", broken_plan)  # where main looks it up
    with pytest.raises(KeyError, match="a bug"):
        main([str(DEMO), "--dry-run"])


def _stage_member(tmp_path: Path) -> Path:
    """A member of four three-epoch stages (s1_64x96 .. s4_64x96)."""
    path = tmp_path / _member(tmp_path, "m1", "resnet18")
    spec = yaml.safe_load(path.read_text())
    spec["stages"] = [{"size": "64x96", "epochs": 3} for _ in range(4)]
    path.write_text(yaml.safe_dump(spec))
    return path


def _save_last_pt(stage_dir: Path, params_hash: str, epoch: int) -> None:
    """last.pt as LastCheckpoint writes it: Fabric saves {"state": TrainState, **meta}."""
    import torch
    from lightning_fabric import Fabric

    from kaggle_utils.engine.state import TrainState

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    state = TrainState(model, optimizer, scheduler, epoch=epoch, history=[{}] * epoch)
    stage_dir.mkdir(parents=True, exist_ok=True)
    fabric = Fabric(accelerator="cpu", devices=1)
    fabric.save(stage_dir / "last.pt", {"state": state, "params_hash": params_hash})


def test_dry_run_says_which_stages_are_finished_resumed_or_new(tmp_path, capsys):
    from kaggle_utils.config import load_member
    from kaggle_utils.engine.state import load_train_state
    from kaggle_utils.runs import stage_dir_for, stage_hash

    member_file = _stage_member(tmp_path)
    ensemble = tmp_path / "ensemble.yaml"
    ensemble.write_text(yaml.safe_dump({"name": "t", "members": [member_file.name], "n_folds": 2}))
    member, run = load_member(member_file), tmp_path / "run"
    dirs = [stage_dir_for(run, member, i, 0) for i in range(4)]
    # s1 finished: metrics.json carries the hash it would be trained with now
    dirs[0].mkdir(parents=True)
    (dirs[0] / "metrics.json").write_text(
        json.dumps({"params_hash": stage_hash(member, 0, 0), "best_dice": 0.9})
    )
    _save_last_pt(dirs[1], stage_hash(member, 1, 0), epoch=2)  # s2 killed after 2 of 3 epochs
    assert load_train_state(dirs[1] / "last.pt")["epoch"] == 2  # the engine's own reader agrees
    _save_last_pt(dirs[2], "another-hash", epoch=1)  # s3: last.pt of since-changed parameters
    before = sorted(p.relative_to(run) for p in run.rglob("*"))

    code = main([str(ensemble), "--dry-run", "--data-dir", str(tmp_path), "--run-dir", str(run)])
    assert code == 0
    out = capsys.readouterr().out
    states = {
        line.split()[3]: " ".join(line.split()[4:])
        for line in out.splitlines()
        if " fold 0 " in line
    }
    assert states == {
        dirs[0].name: "finished (skipped)",
        dirs[1].name: "resume from epoch 2/3",
        dirs[2].name: "new (last.pt was written with other parameters: starts afresh)",
        dirs[3].name: "new",
    }
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # read only


def test_a_missing_data_dir_fails_with_its_absolute_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    for extra in (["--dry-run"], []):  # the dry run says what the run itself would refuse
        code = main([str(DEMO), "--data-dir", "data/missing", "--run-dir", str(run), *extra])
        assert code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp_path / "data" / "missing") in err
        assert "--data-dir" in err and not run.exists()
