"""05_ensemble and 06_submit executed by real papermill on a tiny synthetic run folder."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest
import yaml
from _tiny_run import TINY_SPEC, make_run

from kaggle_utils.layout import find_data

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _outputs(nb_path: Path) -> str:
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", ""))
            data = out.get("data", {})
            text.append(data.get("text/plain", ""))
            if "image/png" in data:
                text.append("<image/png>")
    return "\n".join(text)


@pytest.fixture(scope="module")
def tiny_project(small_synthetic, tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    data = find_data(small_synthetic)
    run_dir = root / "run"
    members = (("alpha", (64, 96), 0.35), ("beta", (96, 160), 0.35))
    make_run(data, run_dir, members=members)
    for name, size, _ in members:
        member = {"name": name, "model": TINY_SPEC, "stages": [{"size": list(size), "epochs": 1}]}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(member))
    ensemble = {
        "name": "tiny",
        "members": ["alpha.yaml", "beta.yaml"],
        "data_dir": str(small_synthetic),
        "tta": ["none", "hflip"],
        "predict_batch_size": 4,
    }
    (root / "ensemble.yaml").write_text(yaml.safe_dump(ensemble))
    return {"root": root, "run_dir": run_dir, "data": small_synthetic}


def _execute(name: str, out: Path, **params) -> Path:
    pm.execute_notebook(
        str(REPO / "notebooks" / name),
        str(out),
        parameters=params,
        kernel_name="python3",
        progress_bar=False,
        cwd=str(REPO),
    )
    return out


def test_05_then_06_through_papermill(tiny_project, tmp_path):
    root, run_dir = tiny_project["root"], tiny_project["run_dir"]
    common = {
        "ensemble_file": str(root / "ensemble.yaml"),
        "run_dir": str(run_dir),
        "data_dir": str(tiny_project["data"]),
    }
    nb05 = _execute("05_ensemble.ipynb", tmp_path / "05.ipynb", **common, device="cpu")
    spec = yaml.safe_load((run_dir / "ensemble.yaml").read_text())
    assert [m["name"] for m in spec["members"]] == ["alpha", "beta"]
    assert abs(sum(m["weight"] for m in spec["members"]) - 1) < 1e-6
    assert 0.1 <= spec["threshold"] <= 0.9 and spec["tta"] is True
    assert spec["scores"]["cv_heldout_dice"] > 0.5
    text = _outputs(nb05)
    assert "cv_dice" in text and "heldout_dice" in text and "<image/png>" in text

    nb06 = _execute("06_submit.ipynb", tmp_path / "06.ipynb", **common, device="cpu")
    sub_path = run_dir / "submission.csv.gz"
    with gzip.open(sub_path, "rt") as f:
        sub = pd.read_csv(f, keep_default_na=False)
    sample = pd.read_csv(Path(tiny_project["data"]) / "sample_submission.csv")
    assert list(sub["img"]) == list(sample["img"])
    text = _outputs(nb06)
    assert "synthetic test score" in text
    assert "not submitting" in text
