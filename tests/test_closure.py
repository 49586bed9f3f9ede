"""Kernels import on Kaggle with internet off: runtime vs lab dependencies, the image's package
list, the closure of what it lacks, and the notebooks' install cell, run against real pip.

The slow tests build the package dataset (pip wheel + the closure: segmentation-models-pytorch
from PyPI or the wheel cache), then
- resolve `kaggle-utils` with `pip install --dry-run --no-index --find-links <dataset>`
  in a fresh venv where Kaggle's image appears installed (a folder of dist-info records, one per
  line of kaggle_image.txt, at the image's versions) and the image's versions as constraints;
- run the install cell verbatim in a fresh venv that sees only the image's packages we depend on,
  at the versions installed here (symlinks into /work/main/.venv's site-packages, torch and its
  CUDA libraries included, collected by following Requires-Dist from our requirements), then import
  every module 03 and 06 import, and every kaggle_utils module.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kaggle_utils.kernels.build import build_package
from kaggle_utils.kernels.closure import (
    INSTALL_CELL,
    ClosureError,
    build_closure,
    project_requirements,
    read_image,
    wheel_requirements,
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LAB_ONLY = {"jupyterlab", "kaggle", "playwright", "pytest", "ruff", "slugify", "pytest_timeout"}
# the versions issue 15 quotes from Kaggle's list (read 2026-12-01)
ISSUE_VERSIONS = {
    "torch": "2.10.0+cpu",
    "torchvision": "0.25.0+cpu",
    "timm": "1.0.26",
    "albumentations": "2.0.8",
    "pytorch-lightning": "2.6.4",
    "ray": "2.55.1",
    "papermill": "2.7.0",
    "jupyterlab": "3.6.8",
    "ipywidgets": "8.1.5",
    "numba": "0.65.1",
    "pydantic": "2.12.3",
    "numpy": "2.4.6",
    "opencv-python-headless": "4.13.0.92",
}


def test_image_list_has_source_date_and_the_issue_versions():
    image = read_image()
    assert image.source.startswith("https://github.com/Kaggle/docker-python/")
    assert image.read == "2026-12-01"
    assert {n: str(image.versions[n]) for n in ISSUE_VERSIONS} == ISSUE_VERSIONS
    assert "segmentation-models-pytorch" not in image.versions
    assert len(image.versions) > 800  # the full list, not a hand-picked subset


def test_a_bad_line_in_the_list_is_named(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("# header\ntorch==2.10.0\nnot a pin\n")
    with pytest.raises(ValueError, match=r"list\.txt:3: expected `name==version`"):
        read_image(bad)


def test_runtime_requirements_are_what_a_kernel_needs():
    runtime = {canonicalize_name(r.name) for r in project_requirements(REPO)}
    assert not runtime & {"jupyterlab", "kaggle", "playwright", "pytest", "ruff", "python-slugify"}
    image = read_image()
    # all but segmentation-models-pytorch are in Kaggle's image at a version that fits our pins
    unmet = [
        str(r)
        for r in project_requirements(REPO)
        if canonicalize_name(r.name) not in image.versions
        or not r.specifier.contains(image.versions[canonicalize_name(r.name)], prereleases=True)
    ]
    assert unmet == ["segmentation-models-pytorch>=0.4"]


def test_no_module_imports_a_lab_only_package_at_import_time():
    offenders = []
    for path in sorted((REPO / "kaggle_utils").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level: what importing the module runs
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in LAB_ONLY]
    assert offenders == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_offline_install_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == INSTALL_CELL
    assert not code[0].outputs and code[0].execution_count is None
    assert not code[0].metadata.get("tags")
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


def test_a_pin_the_image_torch_does_not_meet_is_refused_before_any_download(tmp_path):
    with pytest.raises(ClosureError, match=r"torch>=3.*widen the pin in pyproject.toml"):
        build_closure([Requirement("torch>=3")], tmp_path / "wheels", cache=tmp_path / "cache")
    assert not list(tmp_path.rglob("*.whl"))


# ------------------------------------------------------------------------- real pip, slow


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The package dataset as `build` writes it (the closure from the wheel cache or PyPI)."""
    return build_package(tmp_path_factory.mktemp("kernels"), "alice")


def _fresh_venv(root: Path, extra_path: Path) -> Path:
    """A venv without pip or system site-packages; a .pth makes `extra_path` importable."""
    venv.create(root, with_pip=False, system_site_packages=False, symlinks=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "image.pth").write_text(f"{extra_path}\n")
    return python


def _clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH: the venv must not see this checkout's kaggle_utils; no pip settings."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    # pip as on Kaggle: no machine-wide config (this box's pip.conf adds indexes and constraints)
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


@pytest.mark.slow
def test_dataset_wheels_hold_our_wheel_and_only_what_the_image_lacks(package):
    image = read_image()
    names = sorted(p.name for p in package.glob("*.whl"))
    dists = {canonicalize_name(n.split("-")[0]) for n in names}
    assert dists == {"kaggle-utils", "segmentation-models-pytorch"}
    assert not dists & set(image.versions)  # no torch, no numpy: the image's own stay


@pytest.mark.slow
def test_dry_run_resolve_needs_only_the_dataset_and_keeps_every_image_pin(package, tmp_path):
    image = read_image()
    fake = tmp_path / "image-site"  # Kaggle's image as pip sees it: one dist-info per package
    for name, version in image.versions.items():
        info = fake / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    python = _fresh_venv(tmp_path / "venv", fake)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(image.constraints())
    report = tmp_path / "report.json"
    wheels = package
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run"]
    cmd += ["--no-index", "--find-links", str(wheels), "--report", str(report)]
    cmd += ["-c", str(constraints), "kaggle-utils"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    installs = json.loads(report.read_text())["install"]
    got = {canonicalize_name(i["metadata"]["name"]): i["download_info"]["url"] for i in installs}
    assert set(got) == {"kaggle-utils", "segmentation-models-pytorch"}
    assert all(url.startswith(wheels.resolve().as_uri()) for url in got.values())
    assert not set(got) & set(image.versions)  # no pin of the image changes


def _image_side(
    wanted: list[Requirement], site: Path, image_names: set[str]
) -> dict[str, md.Distribution]:
    """The distributions installed in `site` that stand for Kaggle's image: each requirement
    the image satisfies, followed through Requires-Dist (torch brings its CUDA libraries)."""
    local = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions(path=[str(site)])}
    found: dict[str, md.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [r for r in wanted if canonicalize_name(r.name) in image_names]  # else: a closure wheel
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        found[name] = local[name]
        for dep in map(Requirement, local[name].requires or []):
            if not dep.marker or any(dep.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(dep)
    return found


def _link_filtered_copy(dists: dict[str, md.Distribution], site: Path, dest: Path) -> None:
    dest.mkdir()
    for dist in dists.values():
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops | {dist._path.name}:  # type: ignore[attr-defined]
            if (site / top).exists() and not (dest / top).exists():
                (dest / top).symlink_to(site / top)


@pytest.mark.slow
def test_install_cell_offline_in_an_image_like_venv_imports_03_and_06(package, tmp_path):
    site = Path(sysconfig.get_paths()["purelib"])  # where this venv's torch & co live
    image = read_image()
    wanted = [
        r
        for w in package.glob("*.whl")
        for r in wheel_requirements(w)
        if not r.marker or r.marker.evaluate({"extra": ""})
    ]
    dists = _image_side([*wanted, Requirement("pip")], site, set(image.versions))
    assert "torch" in dists and "segmentation-models-pytorch" not in dists
    assert "kaggle-utils" not in dists and "jupyterlab" not in dists
    filtered = tmp_path / "image"
    _link_filtered_copy(dists, site, filtered)
    before = sorted(p.name for p in filtered.iterdir())
    python = _fresh_venv(tmp_path / "venv", filtered)
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "kaggle-utils-wheel").symlink_to(package, target_is_directory=True)
    env = _clean_env(KAGGLE_UTILS_KAGGLE_INPUT=str(inp))
    done = subprocess.run(
        [python, "-c", INSTALL_CELL],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Uninstalling" not in done.stdout
    assert sorted(p.name for p in filtered.iterdir()) == before  # the image is untouched

    imports = sorted({n for nb in ("03_train_member", "06_submit") for n in _imports(nb)})
    probe = f"""
import importlib, pkgutil, sys
for name in {imports!r}:
    importlib.import_module(name)
import kaggle_utils, segmentation_models_pytorch, torch
for m in pkgutil.walk_packages(kaggle_utils.__path__, "kaggle_utils."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
print(kaggle_utils.__file__, segmentation_models_pytorch.__file__, torch.__file__, sep="\\n")
"""
    done = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ours, smp, torch_file = done.stdout.split()[-3:]
    venv_root = (tmp_path / "venv").resolve()
    assert Path(ours).resolve().is_relative_to(venv_root)  # installed by the cell
    assert Path(smp).resolve().is_relative_to(venv_root)
    assert Path(torch_file).is_relative_to(filtered)  # the image's torch, as it was


def _imports(stem: str) -> set[str]:
    """Modules a notebook's code cells import (`from a import b`: a.b when b is a module)."""
    nb = nbformat.read(REPO / "notebooks" / f"{stem}.ipynb", as_version=4)
    out: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                out.add(node.module)
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    if (REPO / Path(*candidate.split("."))).is_dir() or (
                        REPO / Path(*candidate.split("."))
                    ).with_suffix(".py").is_file():
                        out.add(candidate)
    return out


@pytest.mark.slow
def test_the_wheel_carries_the_notebooks_a_04_kernel_runs(package, tmp_path):
    """A 04 kernel runs 03 through papermill: with only the installed wheel (no checkout), the
    notebook is found inside the package."""
    wheel = next(package.glob("kaggle_utils-*.whl"))
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*pip, "--target", str(site), str(wheel)], check=True)
    probe = "from kaggle_utils.notebook import notebook_path; print(notebook_path('03_train_member.ipynb'))"
    env = {**os.environ, "PYTHONPATH": str(site), "PIP_CONFIG_FILE": os.devnull}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found = Path(done.stdout.strip())
    assert found == site / "kaggle_utils" / "notebooks" / "03_train_member.ipynb"
    nb = nbformat.read(found, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
