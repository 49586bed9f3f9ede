"""Where we run: locally or inside a Kaggle kernel, and where outputs and upstream results live."""

from __future__ import annotations

import os
from pathlib import Path

KAGGLE_INPUT = Path(os.environ.get("KAGGLE_UTILS_KAGGLE_INPUT", "/kaggle/input"))
KAGGLE_WORKING = Path(os.environ.get("KAGGLE_UTILS_KAGGLE_WORKING", "/kaggle/working"))


def on_kaggle() -> bool:
    """True inside a Kaggle kernel (its input and working folders both exist)."""
    return KAGGLE_INPUT.is_dir() and KAGGLE_WORKING.is_dir()


def resolve_run_dir(run_dir: str | os.PathLike) -> Path:
    """A relative run folder lands in /kaggle/working on Kaggle (the only kept output), else as given."""
    path = Path(run_dir)
    if on_kaggle() and not path.is_absolute():
        return KAGGLE_WORKING / path
    return path


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
