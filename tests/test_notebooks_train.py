"""03 and 04 through real papermill and real kernels on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from _tiny_run import STAGE_ARTEFACTS

from kaggle_utils.notebook import NotebookExecutionError, execute_notebook

REPO = Path(__file__).resolve().parents[1]
TINY = """\
name: tinynb
model: {arch: unet, encoder: mobilenet_v2, encoder_weights: null, encoder_depth: 3,
        decoder_channels: [32, 16, 8]}
optimizer: {name: adamw, lr: 0.003}
batch_size: 4
augment: {hflip: 0.5, shift_scale: false, color: false}
n_folds: 2
num_workers: 0
cache: true
max_train_images: 8
max_val_images: 4
stages:
  - {size: 64x96, epochs: 1}
  - {size: 96x128, epochs: 1}
"""
STAGE_FILES = [*STAGE_ARTEFACTS, "03_train_member.ipynb"]


def test_notebooks_are_clean_and_parameterised():
    for name in ("03_train_member.ipynb", "04_stage_up.ipynb"):
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        assert "kaggle_utils-*.whl" in nb.cells[0].source  # the Kaggle bootstrap cell comes first
        assert nb.cells[1].metadata.get("tags") == ["parameters"]
        assert nb.metadata.kernelspec["name"] == "python3"
        assert all(
            not c.get("outputs") and not c.get("execution_count")
            for c in nb.cells
            if c.cell_type == "code"
        )


@pytest.mark.slow
def test_stage_up_runs_03_per_stage_and_skips_finished(small_synthetic, tmp_path):
    member = tmp_path / "tinynb.yaml"
    member.write_text(TINY)
    run_dir = tmp_path / "runs"
    params = {
        "member_file": str(member),
        "data_dir": str(small_synthetic),
        "run_dir": str(run_dir),
        "device": "cpu",
    }
    execute_notebook("04_stage_up.ipynb", tmp_path / "04.ipynb", params)

    s1, s2 = run_dir / "tinynb" / "s1_64x96", run_dir / "tinynb" / "s2_96x128"
    for stage_dir in (s1, s2):
        for name in STAGE_FILES:
            assert (stage_dir / name).is_file(), stage_dir / name
        assert len(list((stage_dir / "oof").glob("*.png"))) == 4
    # stage 2 started from stage 1's best weights, through the executed 03's parameters
    assert json.loads((s2 / "params.json").read_text())["init_checkpoint"] == str(s1 / "best.pt")
    executed = nbformat.read(s2 / "03_train_member.ipynb", as_version=4)
    injected = next(
        c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])
    )
    assert str(s1 / "best.pt") in injected.source
    table = pd.read_csv(run_dir / "tinynb" / "stages.csv")
    assert list(table["stage_name"]) == ["s1_64x96", "s2_96x128"]
    assert (
        list(table["status"]) == ["trained", "trained"] and table["best_dice"].between(0, 1).all()
    )
    assert (run_dir / "tinynb" / "stages.png").is_file()
    nb04 = nbformat.read(tmp_path / "04.ipynb", as_version=4)
    pngs = [o for c in nb04.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert pngs  # the Dice-per-stage figure is shown

    mtime = (s1 / "last.pt").stat().st_mtime_ns
    execute_notebook("04_stage_up.ipynb", tmp_path / "04_again.ipynb", params)
    again = pd.read_csv(run_dir / "tinynb" / "stages.csv")
    assert list(again["status"]) == ["skipped", "skipped"]
    assert (s1 / "last.pt").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_failing_cell_is_named(small_synthetic, tmp_path):
    member = tmp_path / "tinynb.yaml"
    member.write_text(TINY)
    out = tmp_path / "03.ipynb"
    with pytest.raises(NotebookExecutionError) as err:
        execute_notebook(
            "03_train_member.ipynb",
            out,
            {
                "member_file": str(member),
                "data_dir": str(small_synthetic),
                "run_dir": str(tmp_path / "runs"),
                "overrides": {"batch_sise": 2},
            },
        )
    msg = str(err.value)
    assert "03_train_member.ipynb failed in cell" in msg and "prepare_stage" in err.value.source
    assert "ConfigError" in msg and "batch_sise" in msg and str(out) in msg
    assert out.is_file() and err.value.ename == "ConfigError"
