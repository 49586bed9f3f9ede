"""ensemble.yaml: what 05 writes and 06 reads (members, weights, threshold, TTA, clean-up).

06 without 05 falls back to equal weights over each member's best stage (`default_spec`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kaggle_utils.ensemble.search import Choice
from kaggle_utils.ensemble.stages import pick_stages
from kaggle_utils.runs import FinishedStage, find_stages
from kaggle_utils.tta import parse_setting

__all__ = ["default_spec", "ensemble_spec", "read_ensemble", "submit_ensemble", "write_ensemble"]


def ensemble_spec(
    stages: Sequence[FinishedStage],
    choice: Choice,
    run_dir: str | os.PathLike,
    *,
    name: str = "ensemble",
    tta: Any = True,
    mode: str = "mean",
    largest_component: bool = False,
    guided_filter: Any = None,
    scores: dict | None = None,
) -> dict:
    """The mapping 06 reads: members (checkpoint relative to run_dir), weights, threshold, tta,
    whether each mask keeps only its largest component, and the guided upsampling (``refine``;
    a ``GuidedFilterConfig``, its dict or None).

    tta: any `kaggle_utils.tta` setting; recorded as true / false for hflip / none (what older
    specs hold) and as the list of transform names otherwise (`TTASetting.record`)."""
    run_dir = Path(run_dir).resolve()
    members = []
    for s, w in zip(stages, choice.weights, strict=True):
        ckpt = s.checkpoint.resolve()
        try:
            rel = str(ckpt.relative_to(run_dir))
        except ValueError:
            rel = str(ckpt)
        size = s.size
        members.append(
            {
                "name": s.member,
                "stage": s.stage,
                "checkpoint": rel,
                "size": list(size) if size else None,
                "weight": round(float(w), 6),
                "cv_dice": None if np.isnan(s.cv_dice) else round(float(s.cv_dice), 6),
            }
        )
    return {
        "name": name,
        "combine": mode,
        "threshold": round(float(choice.threshold), 4),
        "tta": parse_setting(tta).record,
        "largest_component": bool(largest_component),
        "guided_filter": _as_dict(guided_filter),
        "oof_dice": round(float(choice.dice), 6),
        "members": members,
        "scores": scores or {},
    }


def _as_dict(cfg: Any) -> dict | None:
    if cfg is None:
        return None
    return dict(cfg.model_dump() if hasattr(cfg, "model_dump") else cfg)


def write_ensemble(spec: dict, path: str | os.PathLike) -> Path:
    """Write ensemble.yaml atomically."""
    import yaml

    from kaggle_utils.atomic import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(spec, sort_keys=False))


def read_ensemble(path: str | os.PathLike) -> dict:
    """Read 05's ensemble.yaml; a missing file or key fails naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ensemble file not found: {path} (run 05_ensemble first)")
    spec = yaml.safe_load(path.read_text()) or {}
    for key in ("members", "threshold"):
        if key not in spec:
            raise ValueError(f"{path}: key '{key}' missing")
    for i, m in enumerate(spec["members"]):
        if "checkpoint" not in m:
            raise ValueError(f"{path}: members[{i}] has no 'checkpoint'")
    try:
        parse_setting(spec.get("tta", True))
    except ValueError as exc:
        raise ValueError(f"{path}: key 'tta': {exc}") from None
    return spec


def default_spec(
    run_dir: str | os.PathLike, members: Sequence[str] | None = None, how: str = "best"
) -> dict:
    """Equal-weight ensemble at threshold 0.5 over each member's picked stage (06 without 05)."""
    stages = pick_stages(find_stages(run_dir, members), how)
    if not stages:
        raise FileNotFoundError(f"no member checkpoints under {run_dir}")
    n = len(stages)
    return ensemble_spec(stages, Choice([1.0 / n] * n, 0.5, float("nan")), run_dir)


def submit_ensemble(run_dir: str | os.PathLike) -> tuple[dict, Path]:
    """05's ensemble.yaml from the run folder (or an upstream kernel's copy) and the folder its
    checkpoint paths are relative to; without one, equal weights over each member's best stage."""
    from kaggle_utils.environment import run_dir_candidates

    candidates = run_dir_candidates(run_dir)
    for folder in candidates:
        if (folder / "ensemble.yaml").is_file():
            print(f"ensemble: {folder / 'ensemble.yaml'}", flush=True)
            return read_ensemble(folder / "ensemble.yaml"), folder
    folders = [c for c in candidates if c.is_dir()]
    if not folders:
        raise FileNotFoundError(
            f"run folder not found: {', '.join(map(str, candidates))} (train members first)"
        )
    print(
        f"no ensemble.yaml in {', '.join(map(str, folders))} (05_ensemble not run): "
        "equal weights over each member's best stage, threshold 0.5",
        flush=True,
    )
    return default_spec(folders[0]), folders[0]
