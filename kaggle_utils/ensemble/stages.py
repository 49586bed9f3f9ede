"""The run folder as 05 sees it: a leaderboard of every trained (member, stage) and the stage
each member contributes. Finding the stages is `runs.find_stages` (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kaggle_utils.runs import FinishedStage, find_stages

__all__ = ["leaderboard", "pick_stages"]


def _model_summary(stage: FinishedStage) -> dict[str, Any]:
    """Architecture, encoder and parameter count (millions) of a stage's checkpoint."""
    member = stage.params.get("member")
    spec = member.get("model") if isinstance(member, dict) else None
    out: dict[str, Any] = {}
    if spec is None and stage.checkpoint.is_file():
        from kaggle_utils.checkpoint import load_checkpoint

        spec = load_checkpoint(stage.checkpoint).get("model_spec")
    if spec:
        out["arch"] = spec.get("arch")
        out["encoder"] = spec.get("encoder")
    if stage.checkpoint.is_file():
        import torch

        state = torch.load(stage.checkpoint, map_location="cpu", weights_only=False, mmap=True)
        out["params_M"] = round(sum(t.numel() for t in state["model"].values()) / 1e6, 2)
    return out


def leaderboard(run_dir: Any, members: Sequence[str] | None = None) -> pd.DataFrame:
    """Members x stages: CV Dice, resolution, OOF count, model, sorted best first."""
    rows = []
    for s in find_stages(run_dir, members):
        size = s.size
        rows.append(
            {
                "member": s.member,
                "stage": s.stage,
                "size": f"{size[0]}x{size[1]}" if size else "?",
                "cv_dice": s.cv_dice,
                "oof_images": len(s.oof_ids()),
                "epochs": s.metrics.get("epochs", s.metrics.get("epoch")),
                **_model_summary(s),
                "checkpoint": str(s.checkpoint) if s.checkpoint.is_file() else None,
            }
        )
    if not rows:
        raise FileNotFoundError(f"no trained member stages under {run_dir} (<member>/<stage>/)")
    return pd.DataFrame(rows).sort_values("cv_dice", ascending=False, ignore_index=True)


def pick_stages(stages: Sequence[FinishedStage], how: str = "best") -> list[FinishedStage]:
    """One stage per member: the best CV Dice ("best") or the last, highest resolution ("last")."""
    if how not in ("best", "last"):
        raise ValueError(f"how={how!r}: choose 'best' or 'last'")
    by_member: dict[str, list[FinishedStage]] = {}
    for s in stages:
        if s.checkpoint.is_file():
            by_member.setdefault(s.member, []).append(s)
    picked = []
    for runs in by_member.values():
        if how == "last":
            picked.append(max(runs, key=lambda r: (np.prod(r.size or (0, 0)), r.stage)))
        else:
            picked.append(max(runs, key=lambda r: np.nan_to_num(r.cv_dice, nan=-1.0)))
    return sorted(picked, key=lambda r: r.member)
