"""bench/gpu_suite.py without a GPU: the CPU path end to end, the carry that travels to a lent GPU
(its size, its whole cars, its wheel closure), the figures it records and the budget reader."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_carry  # noqa: E402
import gpu_suite  # noqa: E402

from kaggle_utils.kernels import budget  # noqa: E402

GPU_SECTIONS = ("train_throughput", "full_frame", "quality", "submit_path", "device_predict")


def run_suite(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_suite.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cpu_path_runs_end_to_end_skips_the_gpu_and_says_so(tmp_path):
    out = tmp_path / "out"
    proc = run_suite("--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no CUDA device" in proc.stdout
    report = json.loads((out / "gpu_report.json").read_text())
    assert report["finished"] and report["environment"]["cuda_available"] is False
    sections = report["sections"]
    assert set(sections) == {"cuda_tests", *GPU_SECTIONS}
    for name in GPU_SECTIONS:
        assert sections[name]["status"] == "skipped"
        assert "no CUDA device" in sections[name]["reason"]
    tests = sections["cuda_tests"]["tests"]
    assert sections["cuda_tests"]["status"] == "skipped" and len(tests) >= 8
    assert {t["outcome"] for t in tests.values()} == {"skipped"}
    assert any("test_amp_steps_stay_finite_and_match_fp32" in name for name in tests)
    assert any("test_metrics_on_gpu" in name for name in tests)
    assert report["figures"] == {}
    log = (out / "gpu_suite.log").read_text()
    assert "cuda_tests" in log and "done in" in log  # the log holds what the terminal showed


@pytest.mark.slow
def test_cpu_smoke_runs_every_gpu_section_at_toy_sizes(tmp_path):
    """--cpu-smoke: the GPU sections' plumbing on the CPU, so a bug costs no GPU minutes."""
    out = tmp_path / "out"
    proc = run_suite("--out", str(out), "--cpu-smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = json.loads((out / "gpu_report.json").read_text())["sections"]
    assert all(sections[name]["status"] == "passed" for name in GPU_SECTIONS), sections
    quality, submit = sections["quality"], sections["submit_path"]
    # the rows 06 wrote score what the stage's validation scored (val_tta, guided, component)
    assert submit["val_dice"] == pytest.approx(quality["dice"], abs=1e-4)
    assert submit["val_rows"] == quality["n_val"] and submit["output_shape"] == [160, 240]
    assert sections["train_throughput"]["fp32"]["images_per_s"] > 0


def test_dry_run_lists_a_carry_under_64_mib_of_whole_cars(real_sample):
    proc = run_suite("--dry-run", "--sample", str(real_sample), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "['.gpu_suite']" in proc.stdout and "(fits;" in proc.stdout
    for name in ("segmentation_models_pytorch==", "pydantic_core==", "albumentations=="):
        assert name in proc.stdout
    plan = gpu_carry.make_plan(real_sample)
    assert plan.total < gpu_carry.LIMIT - gpu_carry.MARGIN
    assert len(plan.cars) >= 2 * 4  # at least two cars per fold of the suite's member
    assert all(len(c.images) == len(c.rows) == 16 for c in plan.cars)


def test_subset_is_whole_real_cars_with_csv_masks_and_ignored_by_git(real_sample, tmp_path):
    from kaggle_utils.index import train_index
    from kaggle_utils.layout import find_data

    plan = gpu_carry.make_plan(real_sample, max_cars=2)
    dest = tmp_path / "carvana_subset"
    gpu_carry.write_subset(plan, dest)
    data = find_data(dest)
    index = train_index(data)
    assert sorted(index["car"].unique()) == [c.car for c in plan.cars]
    assert len(index) == 32 and not (dest / "train_masks").exists()  # RLE rows, no GIFs
    original = find_data(real_sample, mask_source="gif")
    image_id = index["id"].iloc[5]
    assert (data.load_mask(image_id) == original.load_mask(image_id)).all()
    assert index["make"].notna().all()  # the cars' metadata rows came along
    ignored = subprocess.run(["git", "check-ignore", "-q", ".gpu_suite/x"], cwd=REPO)
    assert ignored.returncode == 0, ".gpu_suite/ must stay out of git"


def test_carried_wheels_close_over_their_requirements():
    """Every requirement of a carried distribution (for the GPU's Python) is carried too or on
    the machine already: a missing one would fail the install there, at GPU cost."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    carried = {canonicalize_name(n) for n in gpu_carry.WHEELS}
    env = {**default_environment(), "python_version": gpu_carry.GPU_PYTHON, "extra": ""}
    missing = set()
    for name in gpu_carry.WHEELS:
        for text in importlib.metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            if dep not in carried and dep not in gpu_carry.GPU_HAS:
                missing.add(f"{name} -> {dep}")
    assert not missing, sorted(missing)
    pins = gpu_carry.wheel_pins()
    assert [p.split("==")[0] for p in pins] == list(gpu_carry.WHEELS)
    assert all(p.split("==")[1] == importlib.metadata.version(p.split("==")[0]) for p in pins)


def test_plan_epochs_fit_the_budget():
    assert gpu_suite.plan_epochs(60, 200, 400, 15, 60) == 22  # (60 - 15) s x 200 / 400
    assert gpu_suite.plan_epochs(10, 200, 400, 15, 60) == 1  # always one epoch
    assert gpu_suite.plan_epochs(600, 1000, 100, 0, 30) == 30  # capped


# --------------------------------------------------------------------------------------------------
# figures: recorded from a report, read by the budget planner

ENTRY = {
    "date": "2026-12-01",
    "torch": "2.11.0+cu130",
    "cuda": "13.0",
    "train": {"fp32_images_per_s": 40.0, "amp_images_per_s": 120.0, "ratio": 3.0},
    "submit": {"images_per_s": 27.8, "hours_100064": 1.0},
    "quality": {"dice": 0.99},
}


def test_record_merges_a_report_into_the_figures(tmp_path, capsys):
    figures = tmp_path / "gpu_figures.json"
    figures.write_text(json.dumps({"Tesla T4": {"date": "2026-01-01"}}))
    report = tmp_path / "gpu_report.json"
    report.write_text(json.dumps({"figures": {"NVIDIA H200": ENTRY}}))
    merged = gpu_suite.record(report, figures)
    assert set(merged) == {"NVIDIA H200", "Tesla T4"}
    assert json.loads(figures.read_text())["NVIDIA H200"] == ENTRY
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| 2026-12-01 | NVIDIA H200 | 2.11.0+cu130 | 13.0 |") and "3.0x" in row
    report.write_text(json.dumps({"figures": {}}))
    with pytest.raises(SystemExit, match="no figures"):
        gpu_suite.record(report, figures)


def test_budget_reads_figures_by_gpu_name(tmp_path):
    path = tmp_path / "gpu_figures.json"
    path.write_text(json.dumps({"NVIDIA H200": ENTRY, "Tesla T4": {"date": "x"}}))
    assert budget.gpu_figures("NVIDIA H200", path) == ENTRY
    assert budget.gpu_figures(" nvidia h200 ", path) == ENTRY
    assert budget.gpu_figures("H200", path) == ENTRY  # a unique partial name
    assert budget.gpu_figures("NVIDIA A100-SXM4-80GB", path) is None
    assert budget.submit_hours("NVIDIA H200", path=path) == pytest.approx(100064 / 27.8 / 3600)
    assert budget.submit_hours("Tesla T4", path=path) is None  # no submit figure measured
    assert budget.load_figures(tmp_path / "absent.json") == {}
    path.write_text("{not json")
    with pytest.raises(ValueError, match="gpu_figures.json: not valid JSON"):
        budget.gpu_figures("NVIDIA H200", path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"expected \{gpu name"):
        budget.load_figures(path)


def test_committed_figures_file_reads():
    figures = budget.load_figures()
    assert isinstance(figures, dict)
    for gpu, entry in figures.items():
        assert {"date", "torch", "cuda"} <= set(entry), gpu
