"""A built 03 bundle runs as a Kaggle kernel would: papermill executes the bundle's own notebook,
from its own folder, in a fresh venv that lacks kaggle_utils, with the package dataset and a
synthetic competition laid out as a stand-in /kaggle/input. Its first cell installs kaggle_utils
from the dataset's wheels (`pip install --no-index --find-links`), then it trains one tiny stage
whose metrics.json lands in the stand-in /kaggle/working.

The fresh venv sees only what Kaggle's image would hold for us (test_closure's approach: symlinks
into this venv's site-packages, found by following Requires-Dist, plus ipykernel for papermill), so
the install can neither see nor replace the editable kaggle_utils of the dev venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from test_closure import _clean_env, _fresh_venv, _image_side, _link_filtered_copy

from kaggle_utils.kernels.build import PACKAGE_DATASET, build_kernels
from kaggle_utils.kernels.closure import read_image, wheel_requirements

# one member, one 64x96 stage of one epoch on a handful of cached images. The bundle trains on
# the two GPUs of Kaggle's default T4 x2 (devices=2, torchrun): here two CPU processes. The model
# is test_ddp's (a timm encoder cut at depth 3; smp's own mobilenet_v2 at depth 3 keeps unused
# parameters, which DDP refuses).
MEMBER = """\
name: tiny
model: {arch: unet, encoder: tu-resnet10t, encoder_weights: null, encoder_depth: 3,
        decoder_channels: [32, 16, 8], decoder_use_norm: identity, norm_layer: groupnorm1}
batch_size: 4
augment: {hflip: 0.5, shift_scale: false, color: false}
n_folds: 4
seed: 3
num_workers: 0
cache: true
val_full_res: false
max_train_images: 8
max_val_images: 4
stages:
  - {size: 64x96, epochs: 1}
"""
ENSEMBLE = {"name": "tiny", "members": ["tiny.yaml"], "folds": [0], "data_dir": "data/tiny"}
KERNEL = "bundle-venv"
BUNDLE = "carvana-tiny-03-tiny-f0-s1"


def _image_venv(package: Path, root: Path) -> tuple[Path, Path]:
    """A fresh venv (its python, and the folder of symlinks standing for Kaggle's image) holding
    our wheel's image-side requirements, pip and ipykernel, but not kaggle_utils."""
    site = Path(sysconfig.get_paths()["purelib"])
    wanted = [
        r
        for w in package.glob("*.whl")
        for r in wheel_requirements(w)
        if not r.marker or r.marker.evaluate({"extra": ""})
    ]
    extra = [Requirement("pip"), Requirement("ipykernel")]
    dists = _image_side([*wanted, *extra], site, set(read_image().versions))
    assert "kaggle-utils" not in dists and "segmentation-models-pytorch" not in dists
    image = root / "image"
    _link_filtered_copy(dists, site, image)
    return _fresh_venv(root / "venv", image), image


def _register_kernel(python: Path, prefix: Path) -> Path:
    """An ipykernel kernelspec for the venv under `prefix`; returns the folder for JUPYTER_PATH."""
    cmd = [python, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", KERNEL]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return prefix / "share" / "jupyter"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_built_03_bundle_installs_the_wheel_and_trains_a_stage(
    small_synthetic, tmp_path, monkeypatch
):
    import papermill as pm

    params = tmp_path / "params" / "tiny"
    params.mkdir(parents=True)
    (params / "tiny.yaml").write_text(MEMBER)
    (params / "ensemble.yaml").write_text(json.dumps(ENSEMBLE))
    inp, work = tmp_path / "input", tmp_path / "working"
    work.mkdir()
    # the real builder; kaggle_input: where this simulated kernel finds its mounts
    ensemble, kernels = params / "ensemble.yaml", tmp_path / "kernels"
    built = build_kernels(ensemble, "alice", kernels, per_stage=True, kaggle_input=str(inp))
    package, bundle = built[0], kernels / BUNDLE
    assert bundle in built
    inp.mkdir()
    (inp / PACKAGE_DATASET).symlink_to(package, target_is_directory=True)
    (inp / "carvana-image-masking-challenge").symlink_to(small_synthetic, target_is_directory=True)

    python, image = _image_venv(package, tmp_path)
    before = sorted(p.name for p in image.iterdir())
    jupyter = _register_kernel(python, tmp_path / "kernelspec")
    # the kernel inherits this environment: no checkout on its path, pip as on Kaggle
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    for key in ("PYTHONPATH", "KAGGLE_UTILS_DATA", "KAGGLE_UTILS_PROJECT_ROOT"):
        monkeypatch.delenv(key, raising=False)
    env = {
        "KAGGLE_UTILS_KAGGLE_INPUT": str(inp),
        "KAGGLE_UTILS_KAGGLE_WORKING": str(work),
        "JUPYTER_PATH": str(jupyter),  # where papermill finds the venv's kernelspec
        "PIP_CONFIG_FILE": os.devnull,  # this box's pip.conf adds indexes and constraints
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    meta = json.loads((bundle / "kernel-metadata.json").read_text())
    out = pm.execute_notebook(
        str(bundle / meta["code_file"]),
        str(tmp_path / "executed.ipynb"),
        kernel_name=KERNEL,
        cwd=str(bundle),
        progress_bar=False,
    )

    # kaggle_utils came from the dataset's wheel, into the fresh venv, without touching the image
    probe = "import kaggle_utils, segmentation_models_pytorch as s; print(kaggle_utils.__file__)"
    probe += "; print(s.__file__)"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    venv_root = (tmp_path / "venv").resolve()
    for found in done.stdout.split():
        assert Path(found).resolve().is_relative_to(venv_root), found
    installed = Path(done.stdout.split()[0]).parent
    assert (installed / "notebooks" / "03_train_member.ipynb").is_file()  # the wheel's payload
    wheel = next(package.glob("kaggle_utils-*.whl")).name
    version = wheel.split("-")[1]
    assert (installed.parent / f"kaggle_utils-{version}.dist-info" / "RECORD").is_file()
    assert sorted(p.name for p in image.iterdir()) == before

    # the stage trained in the stand-in /kaggle/working, relative run_dir and all
    metrics = sorted(work.rglob("metrics.json"))
    assert len(metrics) == 1, metrics
    assert metrics[0].is_relative_to(work / "runs" / "tiny")
    best = json.loads(metrics[0].read_text())["best_dice"]
    assert 0.0 <= best <= 1.0
    assert not list(bundle.rglob("metrics.json"))  # nothing written beside the notebook
    text = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    assert "2 device(s)" in text  # the bundle's devices=2 (T4 x2): torchrun, two processes
    errors = [o for c in out.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    assert nbformat.validate(out) is None
