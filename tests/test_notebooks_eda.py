"""01_eda and 02_split executed by papermill on synthetic data and on the real Kaggle sample."""

from __future__ import annotations

import nbformat
import pandas as pd
import pytest

from kaggle_utils.folds import load_folds
from kaggle_utils.kernels.closure import INSTALL_CELL
from kaggle_utils.notebook import execute_notebook

PARAMETERS = {
    "01_eda.ipynb": {"data_dir", "sample_size", "run_dir", "corrected_masks"},
    "02_split.ipynb": {"data_dir", "run_dir", "n_folds", "stratify", "seed"},
}
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def outputs_of(nb, mime: str) -> list[int]:
    """Indices of the code cells with an output of the given MIME type."""
    return [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and any(mime in out.get("data", {}) for out in cell.get("outputs", []))
    ]


def errors_of(nb) -> list[str]:
    return [
        f"{out.get('ename')}: {out.get('evalue')}"
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.output_type == "error"
    ]


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_notebook_is_committed_clean(repo_root, name):
    nb = nbformat.read(repo_root / "notebooks" / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"] == {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == INSTALL_CELL and not code[0].metadata.get("tags")
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = {line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line}
    assert names == PARAMETERS[name]
    assert all(not c.outputs and c.execution_count is None for c in code)


def run_eda(repo_root, tmp_path, data_dir, sample_size, **params):
    out = tmp_path / "01_eda.ipynb"
    execute_notebook(
        repo_root / "notebooks" / "01_eda.ipynb",
        out,
        {"data_dir": str(data_dir), "sample_size": sample_size, **params},
        cwd=tmp_path,
    )
    nb = nbformat.read(out, as_version=4)
    assert errors_of(nb) == []
    return nb


def run_split(repo_root, tmp_path, data_dir, **params):
    run_dir = tmp_path / "run"
    execute_notebook(
        repo_root / "notebooks" / "02_split.ipynb",
        tmp_path / "02_split.ipynb",
        {"data_dir": str(data_dir), "run_dir": str(run_dir), **params},
        cwd=tmp_path,
    )
    nb = nbformat.read(tmp_path / "02_split.ipynb", as_version=4)
    assert errors_of(nb) == []
    return nb, run_dir / "folds.csv"


def assert_valid_split(path, data_dir, n_folds):
    folds = load_folds(path)  # validates: no car in two folds
    raw = pd.read_csv(path)
    assert raw.groupby("car")["fold"].nunique().max() == 1
    assert sorted(raw["fold"].unique()) == list(range(n_folds))
    train_ids = {p.stem for p in (data_dir / "train").glob("*.jpg")}
    assert set(folds["id"]) == train_ids
    assert (folds.groupby("car").size() == 16).all()


@pytest.mark.slow
def test_eda_notebook_on_synthetic(repo_root, tmp_path, small_synthetic):
    from kaggle_utils.imageio import encode_mask_gif
    from kaggle_utils.layout import find_data

    data = find_data(small_synthetic)  # one corrected mask: the report and the old/new viewer
    fixed_id = sorted(data.train.names())[0][: -len(".jpg")]
    fixed = data.load_mask(fixed_id)
    fixed[:8, :8] = 1
    (tmp_path / "fixed").mkdir()
    (tmp_path / "fixed" / f"{fixed_id}_mask.gif").write_bytes(encode_mask_gif(fixed))
    nb = run_eda(
        repo_root, tmp_path, small_synthetic, sample_size=2, corrected_masks=str(tmp_path / "fixed")
    )
    # metadata, coverage, hardest angles, sample grid
    assert len(outputs_of(nb, "image/png")) >= 4
    # mask overlay browser, boundary-weight viewer, corrected masks' old/new viewer
    assert len(outputs_of(nb, WIDGET_MIME)) == 3
    report = next(c for c in nb.cells if "corrections_report" in c.source)
    table = "".join(o.get("data", {}).get("text/html", "") for o in report.outputs)
    assert fixed_id in table and "dice_old_new" in table
    html = "".join(
        out["data"].get("text/html", "")
        for c in nb.cells
        if c.cell_type == "code"
        for out in c.outputs
        if "data" in out
    )
    assert "cars with all 16 angles" in html and "4/4" in html


@pytest.mark.slow
def test_split_notebook_on_synthetic(repo_root, tmp_path, small_synthetic):
    # stratified by mask-area bucket here, by make on the real sample below
    nb, path = run_split(
        repo_root, tmp_path, small_synthetic, n_folds=2, stratify="coverage", seed=1
    )
    assert_valid_split(path, small_synthetic, 2)
    assert outputs_of(nb, "image/png")  # the fold balance plots


@pytest.mark.slow
def test_eda_notebook_on_real_sample(repo_root, tmp_path, real_sample):
    nb = run_eda(repo_root, tmp_path, real_sample, sample_size=1)
    assert len(outputs_of(nb, "image/png")) >= 4
    assert len(outputs_of(nb, WIDGET_MIME)) == 2
    text = "".join(
        out.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for out in c.outputs
        if out.output_type == "stream"
    )
    assert "768 train images of 48 cars" in text


@pytest.mark.slow
def test_split_notebook_on_real_sample(repo_root, tmp_path, real_sample):
    nb, path = run_split(repo_root, tmp_path, real_sample, n_folds=5, stratify="make", seed=0)
    assert_valid_split(path, real_sample, 5)
    assert outputs_of(nb, "image/png")
    assert (pd.read_csv(path).groupby("fold")["car"].nunique() >= 9).all()  # 48 cars / 5 folds


@pytest.mark.slow
def test_eda_notebook_as_shipped_from_notebooks_dir(
    repo_root, tmp_path, small_synthetic, monkeypatch
):
    """Opened in notebooks/ after `make demo` (data/synthetic and runs/demo at the project root),
    01 finds both with no parameter changed, and shows the measured Dice by angle."""
    import shutil

    from _tiny_run import make_run

    from kaggle_utils.layout import find_data

    project = tmp_path / "project"
    shutil.copytree(repo_root / "params" / "demo", project / "params" / "demo")
    shutil.copytree(small_synthetic, project / "data" / "synthetic")
    (project / "notebooks").mkdir()
    make_run(find_data(small_synthetic), project / "runs" / "demo", n_val_cars=1)
    monkeypatch.delenv("KAGGLE_UTILS_DATA", raising=False)
    monkeypatch.delenv("KAGGLE_UTILS_PROJECT_ROOT", raising=False)
    out = project / "notebooks" / "01_eda.ipynb"
    execute_notebook(
        repo_root / "notebooks" / "01_eda.ipynb", out, {"sample_size": 1}, cwd=project / "notebooks"
    )
    nb = nbformat.read(out, as_version=4)
    assert errors_of(nb) == []
    text = "".join(
        out.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for out in c.outputs
        if out.output_type == "stream"
    )
    assert str(project.resolve() / "data" / "synthetic") in text
    measured = next(
        c for c in nb.cells if "measured_angle_difficulty" in c.source and c.cell_type == "code"
    )
    assert [o.output_type for o in measured.outputs] == ["execute_result"]
    assert "image/png" in measured.outputs[0]["data"]  # the figure, not the "no run yet" note
