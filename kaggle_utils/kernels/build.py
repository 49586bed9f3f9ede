"""Kernel bundles: the workflow's notebooks with their parameters baked in, one folder per kernel.

For an ensemble file the build writes, under `out` (default build/kernels):

    _package/                 the helper package as a Kaggle dataset: the kaggle_utils wheel,
                              dataset-metadata.json and the ensemble's parameter files (flattened,
                              e.g. demo__m1.yaml) so kernels read the very YAML a local run reads
    <prefix>-01-eda/          one folder per kernel: <slug>.ipynb + kernel-metadata.json
    <prefix>-02-split/
    <prefix>-04-<member>-f<fold>/   (or, with per_stage, <prefix>-03-<member>-f<fold>-s<k>/ chained)
    <prefix>-05-ensemble/
    <prefix>-06-submit/             (with the ensemble's n_shards: N, also
    <prefix>-06-submit-shard-<i>-of-<N>/   one per shard, i = 0..N-1, read by 06, the merge)

Notebooks are parameterised with papermill's own prepare-only path (`execute_notebook(...,
prepare_only=True)`), so a kernel runs exactly what `papermill` would run locally with the same
parameters. Inside the kernel: `data_dir=None` finds the competition mount, a relative `run_dir`
lands in /kaggle/working, and results of upstream kernels (kernel_sources) are found under
/kaggle/input (see `kaggle_utils.environment`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kaggle_utils.constants import COMPETITION
from kaggle_utils.kernels.validate import (
    DATASET_METADATA_FILE,
    DEFAULT_ACCELERATOR,
    KERNEL_METADATA_FILE,
    MAX_TITLE,
    OWNER_RE,
    SLUG_RE,
    BundleError,
    accelerator_problem,
    accelerator_warning,
    dataset_problems,
    kernel_problems,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PACKAGE_DATASET = "kaggle-utils-wheel"
PACKAGE_DIR = "_package"
KAGGLE_INPUT = "/kaggle/input"

NOTEBOOKS = {
    "01": "01_eda.ipynb",
    "02": "02_split.ipynb",
    "03": "03_train_member.ipynb",
    "04": "04_stage_up.ipynb",
    "05": "05_ensemble.ipynb",
    "06": "06_submit.ipynb",
}
# training, and the notebooks that run the trained models (05 re-predicts validation images with
# TTA to tune weights and threshold; 06 predicts the test set)
GPU_STEPS = {"03", "04", "05", "06"}
TRAIN_STEPS = {"03", "04"}
# accelerators with several GPUs in one session: a training kernel there runs the member on all of
# them (engine.launch, torchrun) unless the member file states `devices`
ACCELERATOR_GPUS = {"NvidiaTeslaT4": 2}

__all__ = [
    "COMPETITION",
    "PACKAGE_DATASET",
    "PACKAGE_DIR",
    "KernelSpec",
    "KernelPlan",
    "plan_kernels",
    "build_kernels",
    "build_package",
    "kernel_metadata",
]


@dataclass
class KernelSpec:
    """One Kaggle kernel: which notebook, with which parameters, reading which upstream kernels."""

    slug: str
    step: str
    parameters: dict[str, Any]
    upstream: list[str] = field(default_factory=list)  # slugs of kernels whose output it reads
    datasets: list[str] = field(default_factory=list)  # extra owner/slug datasets (weights)
    internet: bool = False
    accelerator: str | None = None  # Kaggle's machine_shape; None: the default GPU for GPU steps

    @property
    def notebook(self) -> str:
        return NOTEBOOKS[self.step]

    @property
    def machine_shape(self) -> str | None:
        """The accelerator id the kernel asks for (None: no accelerator, a CPU session)."""
        if self.accelerator is not None:
            return self.accelerator
        return DEFAULT_ACCELERATOR if self.step in GPU_STEPS else None

    @property
    def gpu(self) -> bool:
        shape = self.machine_shape
        return shape is not None and not shape.startswith("Tpu")

    @property
    def tpu(self) -> bool:
        return (self.machine_shape or "").startswith("Tpu")

    @property
    def title(self) -> str:
        """A title that Kaggle resolves back to exactly this slug."""
        return " ".join(w.upper() if w == "eda" else w.capitalize() for w in self.slug.split("-"))


@dataclass
class KernelPlan:
    """Every kernel of one ensemble, upstream first, plus the parameter files they read."""

    ensemble: str
    prefix: str
    kernels: list[KernelSpec]
    params_files: dict[str, str]  # flat file name in the package dataset -> YAML text
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = []
        for k in self.kernels:
            flags = ", ".join(f for f, on in (("gpu", k.gpu), ("internet", k.internet)) if on)
            lines.append(f"{k.slug:<42} {k.notebook}{f'  [{flags}]' if flags else ''}")
            lines += [f"    {name} = {value!r}" for name, value in k.parameters.items()]
            if k.upstream:
                lines.append(f"    reads: {', '.join(k.upstream)}")
        return "\n".join(lines)


def _slug(text: str) -> str:
    from slugify import slugify

    return slugify(str(text))


def _params_root(ensemble_path: Path) -> Path:
    """The nearest enclosing folder named `params` (names of shipped files are relative to it)."""
    for parent in ensemble_path.parents:
        if parent.name == "params":
            return parent
    return ensemble_path.parent


def _flat_name(path: Path, root: Path, what: str) -> str:
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        raise ValueError(
            f"{what} {path} lies outside the params folder {root}: move it there"
        ) from None
    return "__".join(rel.parts)


def _relative_run_dir(ens: Any) -> str:
    """The ensemble's run folder as a relative path (it lands in /kaggle/working on Kaggle)."""
    run_dir = ens.run_dir
    if not run_dir or Path(run_dir).is_absolute():
        return f"runs/{ens.name}"
    return Path(run_dir).as_posix()


@contextlib.contextmanager
def _quiet_papermill() -> Iterator[None]:
    """papermill warns about comment lines it cannot parse in a parameters cell; not our news."""
    logger = logging.getLogger("papermill")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _declared_parameters(notebook: Path) -> dict[str, Any]:
    """papermill's view of the `parameters` cell, plus every name the cell assigns: papermill's
    line parser skips a line whose comment holds `=` (e.g. 06's `n_shards = None  # ...
    shard=None ...`), yet papermill injects and the notebook reads that parameter all the same."""
    import ast

    import nbformat
    import papermill as pm

    if not notebook.is_file():
        raise FileNotFoundError(f"notebook not found: {notebook}")
    with _quiet_papermill():
        declared = dict(pm.inspect_notebook(str(notebook)))
    nb = nbformat.read(str(notebook), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            with contextlib.suppress(SyntaxError):
                for node in ast.parse(cell.source).body:
                    if isinstance(node, ast.Assign):
                        targets = node.targets
                    elif isinstance(node, ast.AnnAssign):
                        targets = [node.target]
                    else:
                        continue
                    names = [t.id for t in targets if isinstance(t, ast.Name)]
                    declared.update({n: declared.get(n) for n in names})
    return declared


def plan_kernels(
    ensemble_file: str | os.PathLike,
    *,
    prefix: str | None = None,
    per_stage: bool = False,
    datasets: Sequence[str] = (),
    internet: bool = False,
    package_dataset: str = PACKAGE_DATASET,
    kaggle_input: str = KAGGLE_INPUT,
    accelerator: str | None = None,
) -> KernelPlan:
    """The kernels for one ensemble file: 01, 02, one training kernel per member and fold (04, or
    one 03 per stage with `per_stage`, each starting from the previous stage's best.pt), 05, 06.

    accelerator: the machine_shape of every GPU kernel, over the ensemble's and members' own."""
    from kaggle_utils.config import load_ensemble, load_member
    from kaggle_utils.runs import stage_dir_for

    ensemble_path = Path(ensemble_file).resolve()
    ens = load_ensemble(ensemble_path)
    root = _params_root(ensemble_path)
    member_paths = [(ensemble_path.parent / m).resolve() for m in ens.members]
    members = [load_member(p) for p in member_paths]

    prefix = _slug(prefix) if prefix else _slug(ens.name)
    if "carvana" not in prefix:
        prefix = f"carvana-{prefix}"
    if not SLUG_RE.match(prefix):
        raise ValueError(f"kernel prefix {prefix!r} must be lowercase words joined by hyphens")

    # Parameter files travel in the package dataset, flattened; the ensemble's member list points
    # at the flattened names, and its local data folder is dropped (on Kaggle: the competition).
    files: dict[str, str] = {}
    ens_raw = yaml.safe_load(ensemble_path.read_text())
    flat_members = [_flat_name(p, root, "member file") for p in member_paths]
    ens_raw = {**ens_raw, "members": flat_members, "data_dir": None}
    ens_raw.pop("synthetic", None)
    if ens_raw.get("run_dir") and Path(ens_raw["run_dir"]).is_absolute():
        ens_raw["run_dir"] = None
    ens_flat = _flat_name(ensemble_path, root, "ensemble file")
    header = (
        f"# {ensemble_path.name} as shipped to Kaggle by kaggle_utils.kernels "
        "(data_dir: the competition)\n"
    )
    files[ens_flat] = header + yaml.safe_dump(ens_raw, sort_keys=False)
    for path, flat in zip(member_paths, flat_members, strict=True):
        files[flat] = path.read_text()

    def mount(slug: str) -> str:
        """Where Kaggle mounts an attached dataset's files or a source kernel's output."""
        return f"{kaggle_input.rstrip('/')}/{slug}"

    def on_kaggle(flat: str) -> str:
        return f"{mount(package_dataset)}/{flat}"

    run_dir = _relative_run_dir(ens)
    common: dict[str, Any] = {"data_dir": None, "run_dir": run_dir}
    kernels: list[KernelSpec] = [KernelSpec(f"{prefix}-01-eda", "01", {"data_dir": None})]
    # 02 gets what the local pipeline passes it (kaggle_utils.pipeline.build_plan)
    split_params = dict(common)
    for key in ("n_folds", "stratify", "seed"):
        if hasattr(ens, key):
            split_params[key] = getattr(ens, key)
    split = KernelSpec(f"{prefix}-02-split", "02", split_params)
    kernels.append(split)

    warnings: list[str] = []
    member_slugs: list[str] = []
    for member, path, flat in zip(members, member_paths, flat_members, strict=True):
        weights = member.model.spec().get("encoder_weights")
        kaggle_prefix = kaggle_input.rstrip("/") + "/"
        if isinstance(weights, str) and weights.startswith(kaggle_prefix):
            source = weights[len(kaggle_prefix) :].split("/")[0]
            if not any(d.split("/")[-1] == source for d in datasets):
                raise ValueError(
                    f"{path}: key 'model.encoder_weights' reads {weights}: attach that dataset "
                    f"with --dataset OWNER/{source}"
                )
        elif isinstance(weights, str) and Path(weights).is_absolute():
            warnings.append(
                f"{path}: model.encoder_weights={weights!r} is a local file, absent on Kaggle: "
                "upload it as a dataset and point encoder_weights at /kaggle/input/SLUG/..."
            )
        elif isinstance(weights, str) and not internet:
            warnings.append(
                f"{path}: model.encoder_weights={weights!r} downloads at run time, but kernels "
                "run without internet: point it at a weights dataset under /kaggle/input (and "
                "pass --dataset OWNER/SLUG), or build with --internet"
            )
        folds = ens.folds
        mslug = _slug(member.name)
        for fold in folds:
            base = {**common, "member_file": on_kaggle(flat), "fold": fold}
            if not per_stage:
                slug = f"{prefix}-04-{mslug}-f{fold}"
                kernels.append(KernelSpec(slug, "04", base, [split.slug], list(datasets), internet))
                member_slugs.append(slug)
                continue
            previous = None
            for i in range(len(member.stages)):
                params = {**base, "stage": i, "init_checkpoint": None}
                upstream = [split.slug]
                if previous is not None:
                    # the previous stage's kernel output, mounted read-only under /kaggle/input
                    rel = stage_dir_for(run_dir, member, i - 1, fold).as_posix()
                    params["init_checkpoint"] = f"{mount(previous)}/{rel}/best.pt"
                    upstream.append(previous)
                slug = f"{prefix}-03-{mslug}-f{fold}-s{i + 1}"
                kernels.append(KernelSpec(slug, "03", params, upstream, list(datasets), internet))
                member_slugs.append(slug)
                previous = slug

    ens_params = {**common, "ensemble_file": on_kaggle(ens_flat)}
    ensemble = KernelSpec(
        f"{prefix}-05-ensemble", "05", dict(ens_params), [split.slug, *member_slugs]
    )
    kernels.append(ensemble)
    kernels += _submit_kernels(prefix, ens_params, [*member_slugs, ensemble.slug], ens.n_shards)

    where = (accelerator, "--accelerator")
    _assign_accelerators(kernels, ens, ensemble_path, members, member_paths, files, warnings, where)

    slugs = [k.slug for k in kernels]
    too_long = [s for s in slugs if len(s) > MAX_TITLE]
    if too_long:
        raise ValueError(
            f"{ensemble_path}: kernel slugs longer than {MAX_TITLE} characters (Kaggle's title "
            f"limit): {too_long}; pass a shorter --prefix or shorten the member names"
        )
    duplicates = sorted({s for s in slugs if slugs.count(s) > 1})
    if duplicates:
        raise ValueError(f"{ensemble_path}: member names give the same kernel slug: {duplicates}")
    return KernelPlan(ens.name, prefix, kernels, files, warnings)


def _submit_kernels(
    prefix: str, params: dict[str, Any], upstream: list[str], n_shards: int | None
) -> list[KernelSpec]:
    """06: one kernel, or with the ensemble's `n_shards: N` one kernel per shard (they run in
    parallel, each within a session's time limit) and a merge kernel reading their outputs.

    The merge kernel also reads 06's usual upstream (members and 05): 06 loads the ensemble before
    it merges; kaggle_utils.shards finds the shards' files under /kaggle/input."""
    slug = f"{prefix}-06-submit"
    if not n_shards:
        return [KernelSpec(slug, "06", dict(params), list(upstream))]
    shards = [
        KernelSpec(
            f"{slug}-shard-{i}-of-{n_shards}",
            "06",
            {**params, "shard": i, "n_shards": n_shards},
            list(upstream),
        )
        for i in range(n_shards)
    ]
    merge = KernelSpec(  # the submission kernel keeps its slug: its output is submission.csv.gz
        slug,
        "06",
        {**params, "shard": None, "n_shards": n_shards},
        [*upstream, *(s.slug for s in shards)],
    )
    return [*shards, merge]


def _checked_accelerator(value: str | None, where: Path, warnings: list[str]) -> str | None:
    """`value` if Kaggle takes it (its warning, e.g. P100's, added); else a ValueError naming the
    file and the key, raised before any bundle is written."""
    if value is None:
        return None
    what = f"{where}" if str(where).startswith("--") else f"{where}: key 'accelerator'"
    problem = accelerator_problem(value)
    if problem:
        raise ValueError(f"{what}: {problem}")
    warning = accelerator_warning(value)
    if warning:
        warnings.append(f"{what}: {warning}")
    return value


def _with_devices(text: str, devices: int, accelerator: str) -> str:
    """The member file as shipped with `devices` set: the line appended where the file stays
    what it was plus that key (comments kept), else the file re-dumped."""
    raw = yaml.safe_load(text) or {}
    line = f"devices: {devices}  # kaggle_utils.kernels: the {devices} GPUs of {accelerator}\n"
    appended = text.rstrip("\n") + "\n" + line
    try:
        if yaml.safe_load(appended) == {**raw, "devices": devices}:
            return appended
    except yaml.YAMLError:
        pass
    header = (
        f"# as shipped by kaggle_utils.kernels: devices {devices} (the GPUs of {accelerator})\n"
    )
    return header + yaml.safe_dump({**raw, "devices": devices}, sort_keys=False)


def _assign_accelerators(
    kernels: list[KernelSpec],
    ens: Any,
    ensemble_path: Path,
    members: list[Any],
    member_paths: list[Path],
    files: dict[str, str],
    warnings: list[str],
    override: tuple[str | None, str] = (None, ""),
) -> None:
    """Each GPU kernel's machine_shape: the member's `accelerator` for its training kernels, else
    the ensemble's, else Kaggle's default GPU (T4 x2); CPU kernels (01, 02) get none. On a
    several-GPU accelerator a member that does not state `devices` trains on all of them: its
    shipped member file says so (04 reads it) and 03 kernels get the `devices` parameter."""
    root = _params_root(ensemble_path)
    forced = _checked_accelerator(override[0], Path(override[1]), warnings)
    default = forced or _checked_accelerator(ens.accelerator, ensemble_path, warnings)
    default = default or DEFAULT_ACCELERATOR
    by_file: dict[str, tuple[str, int | None]] = {}
    for member, path in zip(members, member_paths, strict=True):
        accelerator = forced or _checked_accelerator(member.accelerator, path, warnings) or default
        flat = _flat_name(path, root, "member file")
        devices = ACCELERATOR_GPUS.get(accelerator)
        if devices and "devices" not in member.model_fields_set:
            files[flat] = _with_devices(files[flat], devices, accelerator)
        else:
            devices = None
        by_file[flat] = (accelerator, devices)
    for spec in kernels:
        if spec.step not in GPU_STEPS or spec.accelerator is not None:
            continue
        member_file = str(spec.parameters.get("member_file") or "")
        accelerator, devices = by_file.get(member_file.rsplit("/", 1)[-1], (default, None))
        spec.accelerator = accelerator
        if spec.step == "03" and devices:
            spec.parameters["devices"] = devices


def kernel_metadata(
    spec: KernelSpec, owner: str, code_file: str, package_dataset: str = PACKAGE_DATASET
) -> dict[str, Any]:
    """kernel-metadata.json for one kernel (all fields stated, internet off unless asked)."""
    return {
        "id": f"{owner}/{spec.slug}",
        "title": spec.title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": spec.gpu,
        "enable_tpu": spec.tpu,
        "enable_internet": spec.internet,
        "dataset_sources": [f"{owner}/{package_dataset}", *spec.datasets],
        "competition_sources": [COMPETITION],
        "kernel_sources": [f"{owner}/{s}" for s in spec.upstream],
        "model_sources": [],
        # the kaggle CLI's `kernels push --accelerator` overrides it; upload.push passes both
        **({"machine_shape": spec.machine_shape} if spec.machine_shape else {}),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def check_parameters(kernels: Iterable[KernelSpec], notebook_dir: Path = NOTEBOOK_DIR) -> None:
    """Every parameter a kernel injects is declared in its notebook's `parameters` cell (papermill
    would inject an unknown name silently and the notebook would never read it)."""
    problems = []
    declared: dict[str, dict[str, Any]] = {}
    for spec in kernels:
        notebook = notebook_dir / spec.notebook
        if spec.notebook not in declared:
            declared[spec.notebook] = _declared_parameters(notebook)
        unknown = [p for p in spec.parameters if p not in declared[spec.notebook]]
        if unknown:
            problems.append(
                f"{notebook}: no parameter {', '.join(map(repr, unknown))} in its `parameters` "
                f"cell (declared: {', '.join(declared[spec.notebook]) or 'none'}); "
                f"kernel {spec.slug} needs it"
            )
    if problems:
        raise ValueError("\n".join(dict.fromkeys(problems)))


def write_kernel_bundle(
    spec: KernelSpec,
    owner: str,
    out: Path,
    *,
    notebook_dir: Path = NOTEBOOK_DIR,
    package_dataset: str = PACKAGE_DATASET,
) -> Path:
    """Parameterise the notebook (papermill prepare-only) and write the metadata; validate; then
    move the finished folder into place so a failed build never leaves half a bundle."""
    import nbformat
    import papermill as pm

    notebook = notebook_dir / spec.notebook
    check_parameters([spec], notebook_dir)
    final = out / spec.slug
    tmp = out / f".{spec.slug}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    code_file = f"{spec.slug}.ipynb"
    with _quiet_papermill():
        nb = pm.execute_notebook(
            str(notebook),
            None,
            parameters=spec.parameters,
            prepare_only=True,
            kernel_name="python3",
            language="python",
            progress_bar=False,
        )
    # papermill records where it read and wrote; say what the kernel is, not our temp folder.
    nb.metadata.papermill["input_path"] = f"notebooks/{spec.notebook}"
    nb.metadata.papermill["output_path"] = code_file
    text = nbformat.writes(nb)
    (tmp / code_file).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    _write_json(
        tmp / KERNEL_METADATA_FILE, kernel_metadata(spec, owner, code_file, package_dataset)
    )
    problems = kernel_problems(tmp)
    if problems:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(final / KERNEL_METADATA_FILE, problems)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


# Kaggle has no MIT dataset licence: the names it takes (docs/datasets_metadata.md of the kaggle
# CLI; the CLI's own list, KaggleApi.valid_dataset_license_names, is all/cc/gpl/odb/other) offer
# "other", which Kaggle shows as "Other (specified in description)": the description says MIT.
PACKAGE_LICENSE = "other"


def package_metadata(owner: str, package_dataset: str = PACKAGE_DATASET) -> dict[str, Any]:
    """dataset-metadata.json of the package dataset: the licence in the description (MIT, the
    LICENSE file shipped beside the wheel) and `other` as Kaggle's licence name for it."""
    from kaggle_utils import __version__

    return {
        "id": f"{owner}/{package_dataset}",
        "title": "kaggle-utils wheel",
        "subtitle": "kaggle_utils package and parameter files for kernels",
        "description": (
            f"kaggle_utils {__version__} as a wheel, installed by the first cell of the Carvana "
            "workflow notebooks, plus the parameter files the kernels read.\n\n"
            "License: MIT (Copyright (c) 2026 kaggle-utils contributors); the full text is the "
            "LICENSE file of this dataset."
        ),
        "licenses": [{"name": PACKAGE_LICENSE}],
    }


def wheel_command(pkg: Path) -> list[str]:
    """The pip command that builds the kaggle_utils wheel into `pkg` (run in a clean copy of the
    project; no build isolation, so it builds offline with the setuptools already installed)."""
    cmd = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation"]
    return [*cmd, "-q", "-w", str(Path(pkg).resolve())]


def _write_closure(pkg: Path, wheel: Path) -> None:
    """Beside our wheel, the wheels of what Kaggle's image lacks or has too old. Flat, not in a
    subfolder: `kaggle datasets create` skips subfolders unless told a --dir-mode."""
    from kaggle_utils.kernels.closure import build_closure, wheel_requirements

    shipped = build_closure(wheel_requirements(wheel), pkg, keep=[wheel.name])
    print(shipped.describe(), flush=True)


def build_package(
    out: Path,
    owner: str,
    *,
    package_dataset: str = PACKAGE_DATASET,
    params_files: dict[str, str] | None = None,
    project_dir: Path = REPO_ROOT,
    closure: bool = True,
) -> Path:
    """The helper package as a dataset: `pip wheel . --no-deps`, the parameter files, metadata,
    and beside our wheel the wheels of what Kaggle's image lacks (kaggle_utils.kernels.closure),
    so the notebooks' first cell installs offline without touching the image's torch.
    `closure=False` leaves them out (a dataset for a machine with internet)."""
    pkg = out / PACKAGE_DIR
    pkg.mkdir(parents=True, exist_ok=True)
    for old in pkg.glob("kaggle_utils-*.whl"):
        old.unlink()
    # Build from a clean copy: setuptools' build/lib in the checkout may hold deleted modules.
    with tempfile.TemporaryDirectory(prefix="kaggle-utils-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "setup.py"):
            if (project_dir / name).is_file():
                shutil.copy2(project_dir / name, src / name)
        shutil.copytree(
            project_dir / "kaggle_utils",
            src / "kaggle_utils",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        # the notebooks travel inside the wheel: a 04 kernel runs 03 from there (notebook_path)
        shutil.copytree(project_dir / "notebooks", src / "kaggle_utils" / "notebooks")
        cmd = wheel_command(pkg)
        print(f"# in {src} (a clean copy of {project_dir})", flush=True)
        print(f"$ {shlex.join(cmd)}", flush=True)
        done = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    wheels = sorted(pkg.glob("kaggle_utils-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip wheel left {len(wheels)} kaggle_utils wheels in {pkg}")
    if closure:
        _write_closure(pkg, wheels[0])
    for name, text in (params_files or {}).items():
        tmp = pkg / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, pkg / name)
    if (project_dir / "LICENSE").is_file():  # the licence the description names travels with it
        shutil.copy2(project_dir / "LICENSE", pkg / ".LICENSE.tmp")
        os.replace(pkg / ".LICENSE.tmp", pkg / "LICENSE")
    meta = package_metadata(owner, package_dataset)
    _write_json(pkg / DATASET_METADATA_FILE, meta)
    problems = dataset_problems(pkg)
    if problems:
        raise BundleError(pkg / DATASET_METADATA_FILE, problems)
    return pkg


def check_owner(owner: str) -> str:
    if not owner or not OWNER_RE.match(owner):
        raise ValueError(
            f"--owner {owner!r}: give your Kaggle username (lowercase letters, digits, - or _)"
        )
    return owner


def build_kernels(
    ensemble_file: str | os.PathLike,
    owner: str,
    out: str | os.PathLike = "build/kernels",
    *,
    notebook_dir: str | os.PathLike = NOTEBOOK_DIR,
    prefix: str | None = None,
    per_stage: bool = False,
    datasets: Iterable[str] = (),
    internet: bool = False,
    package: bool = True,
    package_dataset: str = PACKAGE_DATASET,
    kaggle_input: str = KAGGLE_INPUT,
) -> list[Path]:
    """Build (and validate) every bundle of one ensemble; returns the folders, upstream first.

    `kaggle_input` is where kernels find attached data (/kaggle/input; other values only to
    simulate a kernel locally).

    Bundles of this prefix left over from an earlier build (a member since removed) are deleted so
    `push` never uploads a stale kernel.
    """
    owner = check_owner(owner)
    out = Path(out)
    datasets = list(datasets)
    for d in datasets:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*/[a-z0-9][a-z0-9-]*", d):
            raise ValueError(f"--dataset {d!r} must be 'owner/dataset-slug'")
    plan = plan_kernels(
        ensemble_file,
        prefix=prefix,
        per_stage=per_stage,
        datasets=datasets,
        internet=internet,
        package_dataset=package_dataset,
        kaggle_input=kaggle_input,
    )
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    notebook_dir = Path(notebook_dir)
    check_parameters(plan.kernels, notebook_dir)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    built: list[Path] = []
    if package:
        built.append(
            build_package(
                out, owner, package_dataset=package_dataset, params_files=plan.params_files
            )
        )
    wanted = {k.slug for k in plan.kernels}
    for spec in plan.kernels:
        built.append(
            write_kernel_bundle(
                spec,
                owner,
                out,
                notebook_dir=notebook_dir,
                package_dataset=package_dataset,
            )
        )
        print(f"built {built[-1]}", flush=True)
    manifest = out / f"{plan.prefix}.manifest.json"
    if manifest.exists():
        previous = json.loads(manifest.read_text(encoding="utf-8")).get("kernels", [])
        for slug in previous:
            stale = out / slug
            if slug not in wanted and (stale / KERNEL_METADATA_FILE).exists():
                print(f"removed stale bundle {stale}", flush=True)
                shutil.rmtree(stale)
    _write_json(
        manifest,
        {"ensemble": str(Path(ensemble_file)), "kernels": [k.slug for k in plan.kernels]},
    )
    return built
