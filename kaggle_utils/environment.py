"""Where we run: locally or inside a Kaggle kernel, and where outputs and upstream results live."""

from __future__ import annotations

import os
from pathlib import Path

KAGGLE_INPUT = Path(os.environ.get("KAGGLE_UTILS_KAGGLE_INPUT", "/kaggle/input"))
KAGGLE_WORKING = Path(os.environ.get("KAGGLE_UTILS_KAGGLE_WORKING", "/kaggle/working"))
PROJECT_ENV = "KAGGLE_UTILS_PROJECT_ROOT"
PROJECT_MARKER = "params"  # the folder of parameter files marks the project root


def on_kaggle() -> bool:
    """True inside a Kaggle kernel (its input and working folders both exist)."""
    return KAGGLE_INPUT.is_dir() and KAGGLE_WORKING.is_dir()


def project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The project root: $KAGGLE_UTILS_PROJECT_ROOT, else the first folder holding `params/` at or
    above `start` (the cwd); None when there is none.

    A JupyterLab kernel starts in `notebooks/`, `make demo` in the repository root: relative
    parameters such as `run_dir="runs/demo"` must mean the same folder in both.
    """
    if os.environ.get(PROJECT_ENV):
        return Path(os.environ[PROJECT_ENV]).expanduser().resolve()
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_MARKER).is_dir():
            return folder
    return None


def path_candidates(path: str | os.PathLike) -> list[Path]:
    """The absolute places a path may mean, in the order they are tried: an absolute path itself;
    a relative one under the project root, then from the cwd (one entry when they coincide)."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return [path]
    found = [Path.cwd().resolve() / path]
    root = project_root()
    if root is not None and root / path not in found:
        found.insert(0, root / path)
    return found


def project_path(path: str | os.PathLike) -> Path:
    """A relative path resolved against the project root (see `project_root`) wherever the cwd is:
    the first of `path_candidates` that exists, else the one under the project root (a folder to
    create). Unchanged when the cwd is the project root, when there is no project root, on Kaggle,
    and for absolute paths."""
    path = Path(path).expanduser()
    if path.is_absolute() or on_kaggle():
        return path
    candidates = path_candidates(path)
    if len(candidates) == 1:  # the cwd is the project root, or there is none: as given
        return path
    return next((c for c in candidates if c.exists()), candidates[0])


def resolve_run_dir(run_dir: str | os.PathLike) -> Path:
    """A relative run folder lands in /kaggle/working on Kaggle (the only kept output), else under
    the project root (`project_path`), so a kernel started in notebooks/ finds `make demo`'s runs."""
    path = Path(run_dir)
    if on_kaggle() and not path.is_absolute():
        return KAGGLE_WORKING / path
    return project_path(path)


def _input_matches(rel: Path) -> list[Path]:
    """`rel` inside each input mount: /kaggle/input/<slug>/rel, and the nested
    /kaggle/input/<kind>/<owner>/<slug>/rel layout, in a stable order."""
    found: list[Path] = []
    for pattern in (f"*/{rel.as_posix()}", f"*/*/*/{rel.as_posix()}"):
        found += sorted(p for p in KAGGLE_INPUT.glob(pattern) if p not in found)
    return found


def run_dir_candidates(run_dir: str | os.PathLike) -> list[Path]:
    """The run folder plus its copies in upstream kernels' outputs (Kaggle mounts them read-only)."""
    path = resolve_run_dir(run_dir)
    found = [path]
    if on_kaggle():
        rel = Path(run_dir)
        if not rel.is_absolute():
            found += [p for p in _input_matches(rel) if p.is_dir()]
    return found


def find_input(path: str | os.PathLike) -> Path:
    """A file or folder written by this run or by an upstream kernel: a relative path is looked up
    in the (resolved) working folder first, then in every input mount; otherwise returned as is.

    Lets a parameter such as `init_checkpoint="runs/x/m1/s1_256x256/best.pt"` mean the same file
    locally and inside a Kaggle kernel whose previous stage ran in another kernel.
    """
    path = Path(path)
    local = resolve_run_dir(path)
    if path.is_absolute() or local.exists() or not on_kaggle():
        return local
    matches = _input_matches(path)
    return matches[0] if matches else local


def upstream_copies(local: str | os.PathLike) -> list[Path]:
    """Copies of a folder of this run in upstream kernels' outputs: on Kaggle, for
    /kaggle/working/REL, every /kaggle/input/.../REL that exists (e.g. the previous version of
    the same kernel, attached as an input); [] elsewhere."""
    local = Path(local)
    if not on_kaggle():
        return []
    try:
        rel = local.resolve().relative_to(KAGGLE_WORKING.resolve())
    except ValueError:
        return []
    return [p for p in _input_matches(rel) if p.is_dir()]
