"""Run-folder rules (kaggle_utils.runs): stage folders, finished/resume/new, finding finished stages,
and that reading a run never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kaggle_utils.config import MemberConfig
from kaggle_utils.runs import (
    FinishedStage,
    find_stages,
    member_names,
    stage_dir_for,
    stage_hash,
    stage_status,
)

REPO = Path(__file__).resolve().parents[1]


def member(**kw) -> MemberConfig:
    spec = {"name": "m1", "model": {"arch": "unet"}, "n_folds": 3, "fold": 0}
    stages = [{"size": "64x96", "epochs": 1}, {"size": "96x128", "epochs": 1}]
    return MemberConfig.model_validate({**spec, "stages": stages, **kw})


def test_importing_runs_does_not_import_torch():
    """Planning code (kernel builders, status tables) reads run folders without paying for torch."""
    code = "import kaggle_utils.runs, sys; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_stage_dir_for_the_members_own_fold_and_another():
    m = member()
    assert stage_dir_for("runs/x", m, 0, 0) == Path("runs/x/m1/s1_64x96")
    assert stage_dir_for("runs/x", m, 1, 2) == Path("runs/x/m1/fold2/s2_96x128")
    assert stage_dir_for("runs/x", member(fold=2), 1, 2) == Path("runs/x/m1/s2_96x128")


def test_stage_hash_covers_parameters_and_fold():
    m = member()
    assert stage_hash(m, 0, 0) == stage_hash(member(), 0, 0)
    assert stage_hash(m, 0, 0) != stage_hash(m, 0, 1)
    assert stage_hash(m, 0, 0) != stage_hash(member(seed=1), 0, 0)
    assert stage_hash(m, 0, 0) != stage_hash(m, 1, 0)
    # a later stage does not change what an earlier one was trained with
    later = member(stages=[{"size": "64x96", "epochs": 1}, {"size": "128x192", "epochs": 5}])
    assert stage_hash(later, 0, 0) == stage_hash(m, 0, 0)


def test_stage_status_new_resume_finished(tmp_path):
    d = tmp_path / "m1" / "s1_64x96"
    assert stage_status(d, "h") == "new"
    d.mkdir(parents=True)
    (d / "last.pt").write_bytes(b"")
    assert stage_status(d, "h") == "resume"
    (d / "metrics.json").write_text(json.dumps({"params_hash": "other"}))
    assert stage_status(d, "h") == "resume"  # trained with other parameters: not skipped
    (d / "metrics.json").write_text("{not json")
    assert stage_status(d, "h") == "resume"
    (d / "metrics.json").write_text(json.dumps({"params_hash": "h"}))
    assert stage_status(str(d), "h") == "finished"


def _stage(root: Path, rel: str, **files: str) -> Path:
    d = root / rel
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name.replace("_", ".")).write_text(text)
    return d


def test_find_stages_across_folds_and_roots(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _stage(a, "m1/s1_64x96", metrics_json=json.dumps({"best_dice": 0.9}), best_pt="")
    _stage(a, "m1/fold2/s1_64x96", last_pt="")
    _stage(a, "m2/s1_32x64", params_json=json.dumps({"size": [32, 64]}))  # no checkpoint: skipped
    _stage(a, "m2/s2_32x64")  # empty: skipped
    _stage(b, "m1/s1_64x96", metrics_json=json.dumps({"best_dice": 0.1}), best_pt="")
    _stage(b, "m3/s1_96x144", last_pt="", oof_csv="id,dice\nx_01,0.5\nx_02,0.7\n")
    stages = find_stages([a, b, tmp_path / "missing"])
    assert all(isinstance(s, FinishedStage) for s in stages)
    assert [(s.member, s.stage) for s in stages] == [
        ("m1", "s1_64x96"),
        ("m1/fold2", "s1_64x96"),
        ("m3", "s1_96x144"),
    ]
    first, fold2, m3 = stages
    assert first.path == a / "m1" / "s1_64x96" and first.cv_dice == 0.9  # the first root wins
    assert first.checkpoint.name == "best.pt" and fold2.checkpoint.name == "last.pt"
    assert first.size == (64, 96) and m3.size == (96, 144)  # from the folder name
    assert m3.cv_dice == pytest.approx(0.6) and m3.oof_ids() == []  # no PNGs: no OOF
    (m3.oof_dir).mkdir()
    (m3.oof_dir / "x_02.png").write_bytes(b"")
    assert m3.oof_ids() == ["x_02"]
    assert [s.member for s in find_stages(a, members=["m1"])] == ["m1", "m1/fold2"]
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        find_stages(tmp_path / "nowhere")


def test_find_stages_names_a_broken_metrics_file(tmp_path):
    _stage(tmp_path, "m1/s1_64x96", metrics_json="{broken", best_pt="")
    with pytest.raises(ValueError, match=r"metrics\.json: not valid JSON"):
        find_stages(tmp_path)


def test_member_names_are_the_members_run_folder_names(tmp_path):
    for name in ("alpha", "beta"):
        stage = "stages: [{size: 64x96, epochs: 1}]"
        (tmp_path / f"{name}_file.yaml").write_text(
            f"name: {name}\nmodel: {{arch: unet}}\n{stage}\n"
        )
    ensemble = tmp_path / "ensemble.yaml"
    ensemble.write_text("name: e\nmembers: [beta_file.yaml, alpha_file.yaml]\n")
    assert member_names(ensemble) == ["beta", "alpha"]
