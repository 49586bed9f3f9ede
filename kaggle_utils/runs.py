"""Run-folder rules, torch-free: where a stage's files live, whether it is finished, what is there.

    <run_dir>/<member>/<stage>/             the member's own fold
    <run_dir>/<member>/fold<k>/<stage>/     another fold of the same member

A stage is "finished" when its metrics.json carries the parameter hash it would be trained with
now, "resume" when it has a last.pt, else "new". `find_stages` lists the finished (or at least
checkpointed) stage folders of a run, for the leaderboard and the ensemble.

Kept free of torch (only pandas, yaml and pydantic) so that planning code (kernel builders, status
tables, notebooks that only read results) does not pay torch's import time or need torch at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kaggle_utils.config import MemberConfig

__all__ = [
    "FinishedStage",
    "find_stages",
    "member_names",
    "stage_dir_for",
    "stage_hash",
    "stage_status",
]


# ---------------------------------------------------------------- where a stage lives


def stage_hash(member: MemberConfig, stage: int, fold: int) -> str:
    """What must be unchanged for a finished stage to be skipped: its parameters and fold."""
    return f"{member.params_hash(stage)}-f{fold}"


def stage_dir_for(run_dir: str | os.PathLike, member: MemberConfig, stage: int, fold: int) -> Path:
    """`<run_dir>/<member>/<stage>` for the member's own fold, `<run_dir>/<member>/fold<k>/<stage>`
    for another fold (several folds of one member never share a folder)."""
    base = Path(run_dir) / member.name
    if fold != member.fold:
        base = base / f"fold{fold}"
    return base / member.stage_name(stage)


def stage_status(stage_dir: str | os.PathLike, params_hash: str) -> str:
    """ "finished" (metrics.json written with `params_hash`), "resume" (last.pt) or "new": a stage
    is skipped only when what it would be trained with now is what it was trained with."""
    stage_dir = Path(stage_dir)
    metrics = stage_dir / "metrics.json"
    if metrics.exists():
        try:
            if json.loads(metrics.read_text()).get("params_hash") == params_hash:
                return "finished"
        except ValueError:
            pass
    if (stage_dir / "last.pt").exists():
        return "resume"
    return "new"


# ---------------------------------------------------------------- what a run holds


@dataclass
class FinishedStage:
    """One trained (member, stage) folder in a run."""

    member: str
    stage: str
    path: Path
    metrics: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path:
        best = self.path / "best.pt"
        return best if best.is_file() else self.path / "last.pt"

    @property
    def oof_dir(self) -> Path:
        return self.path / "oof"

    def oof_ids(self) -> list[str]:
        """Validation ids with OOF predictions: oof.csv's (written last, so a PNG left over from
        an earlier split of a retrained stage never counts), else the PNGs present."""
        oof_csv = self.path / "oof.csv"
        if oof_csv.is_file():
            ids = pd.read_csv(oof_csv, usecols=["id"])["id"].astype(str)
            return sorted(i for i in ids if (self.oof_dir / f"{i}.png").is_file())
        return sorted(p.stem for p in self.oof_dir.glob("*.png")) if self.oof_dir.is_dir() else []

    @property
    def size(self) -> tuple[int, int] | None:
        for src in (self.metrics, self.params):
            for key in ("size", "stage_size"):
                if key in src and src[key] is not None:
                    v = src[key]
                    return (int(v[0]), int(v[1]))
        stage = self.params.get("stage")
        if isinstance(stage, dict) and "size" in stage:
            return (int(stage["size"][0]), int(stage["size"][1]))
        tail = self.stage.rsplit("_", 1)[-1]  # "s1_96x144"
        if "x" in tail:
            h, _, w = tail.partition("x")
            if h.isdigit() and w.isdigit():
                return (int(h), int(w))
        return None

    @property
    def cv_dice(self) -> float:
        for key in ("best_dice", "dice", "val_dice", "best_val_dice", "cv_dice"):
            v = self.metrics.get(key)
            if isinstance(v, (int, float)):
                return float(v)
        oof_csv = self.path / "oof.csv"
        if oof_csv.is_file():
            return float(pd.read_csv(oof_csv)["dice"].mean())
        return float("nan")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        out = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    return out if isinstance(out, dict) else {}


def find_stages(
    run_dir: str | os.PathLike | Sequence[str | os.PathLike], members: Sequence[str] | None = None
) -> list[FinishedStage]:
    """Every <run_dir>/<member>[/fold<k>]/<stage>/ with a checkpoint or metrics.json.

    run_dir may be several folders (on Kaggle each upstream member kernel mounts its own copy of the
    run folder); a (member, stage) found twice is taken from the first folder. A member trained on
    a non-default fold is named "<member>/fold<k>"; `members` filters by member name.
    """
    roots = (
        [Path(run_dir)] if isinstance(run_dir, (str, os.PathLike)) else [Path(r) for r in run_dir]
    )
    existing = [r for r in roots if r.is_dir()]
    if not existing:
        raise FileNotFoundError(f"run folder not found: {', '.join(map(str, roots))}")
    found: dict[tuple[str, str], FinishedStage] = {}
    for root in existing:
        dirs = sorted([*root.glob("*/*"), *root.glob("*/fold*/*")])
        for stage_dir in dirs:
            if not stage_dir.is_dir():
                continue
            if not any((stage_dir / f).is_file() for f in ("metrics.json", "best.pt", "last.pt")):
                continue
            member = stage_dir.parent.relative_to(root).as_posix()  # "m1" or "m1/fold2"
            if members is not None and member.split("/")[0] not in members:
                continue
            found.setdefault(
                (member, stage_dir.name),
                FinishedStage(
                    member,
                    stage_dir.name,
                    stage_dir,
                    _read_json(stage_dir / "metrics.json"),
                    _read_json(stage_dir / "params.json"),
                ),
            )
    return sorted(found.values(), key=lambda s: (s.member, s.stage))


def member_names(ensemble_file: str | os.PathLike) -> list[str]:
    """Names of the members an ensemble parameter file lists (their run-folder names)."""
    from kaggle_utils.config import load_ensemble, load_member

    cfg = load_ensemble(ensemble_file)
    return [load_member(p).name for p in cfg.member_paths(ensemble_file)]


def restore_stage(stage_dir: str | os.PathLike) -> Path | None:
    """Copy a stage folder from an upstream kernel's output when this run has none of it yet.

    The next version of a Kaggle kernel, with its previous output attached, finds there the
    stages the last session finished or paused (last.pt, paused.json): they are copied into the
    working folder, so a paused stage resumes and a finished one is skipped (and stays in this
    session's output). Returns the folder copied from, or None.
    """
    import shutil

    from kaggle_utils.environment import upstream_copies

    stage_dir = Path(stage_dir)
    if (stage_dir / "last.pt").exists() or (stage_dir / "metrics.json").exists():
        return None
    for source in upstream_copies(stage_dir):
        if (source / "last.pt").is_file() or (source / "metrics.json").is_file():
            ignore = shutil.ignore_patterns(".lock", ".*.tmp")
            shutil.copytree(source, stage_dir, dirs_exist_ok=True, ignore=ignore)
            print(f"{stage_dir}: continued from the upstream output {source}", flush=True)
            return source
    return None


def paused_info(stage_dir: str | os.PathLike) -> dict | None:
    """paused.json of a stage that stopped early (a time budget) and is to be continued."""
    path = Path(stage_dir) / "paused.json"
    return _read_json(path) if path.is_file() else None
