"""The run folder as 05 sees it: a leaderboard of every trained (member, stage) and the stage
each member contributes. Finding the stages is `runs.find_stages` (torch-free); a stage's
snapshot checkpoints (engine.snapshots) are extra candidates (`snapshot_stages`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kaggle_utils.runs import FinishedStage, find_stages

__all__ = ["SnapshotStage", "leaderboard", "pick_stages", "snapshot_stages"]


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


@dataclass
class SnapshotStage(FinishedStage):
    """A snapshot of a stage (`<stage>/snapshots/epoch_NN.pt`, written by engine.snapshots in
    best.pt's format, with its OOF in `epoch_NN_oof/`) as a candidate in its own right: 05 reads,
    re-predicts, weighs and writes it to ensemble.yaml exactly as a stage."""

    snapshot: str = ""  # "epoch_08"

    @property
    def checkpoint(self) -> Any:
        return self.path / "snapshots" / f"{self.snapshot}.pt"

    @property
    def oof_dir(self) -> Any:
        return self.path / "snapshots" / f"{self.snapshot}_oof"

    def oof_ids(self) -> list[str]:
        oof_csv = self.oof_dir / "oof.csv"
        if not oof_csv.is_file():
            return []
        ids = pd.read_csv(oof_csv, usecols=["id"])["id"].astype(str)
        return sorted(i for i in ids if (self.oof_dir / f"{i}.png").is_file())

    @property
    def cv_dice(self) -> float:
        oof_csv = self.oof_dir / "oof.csv"
        return float(pd.read_csv(oof_csv)["dice"].mean()) if oof_csv.is_file() else float("nan")


def snapshot_stages(stages: Sequence[FinishedStage]) -> list[SnapshotStage]:
    """The snapshots of `stages` that have their OOF, named "<member>@<s1>/<epoch_NN>" (the
    stage's number), the stage's own sizes and parameters. A snapshot of the stage's best epoch
    holds best.pt's weights (unless SWA replaced them): a second copy of a candidate, left out."""
    out = []
    for s in stages:
        best = s.metrics.get("best_epoch")
        same = f"epoch_{int(best):02d}" if best and not (s.path / "swa.pt").is_file() else None
        for pt in sorted((s.path / "snapshots").glob("epoch_*.pt")):
            if pt.stem == same:
                continue
            snap = SnapshotStage(
                f"{s.member}@{s.stage.split('_')[0]}/{pt.stem}",
                s.stage,
                s.path,
                {k: v for k, v in s.metrics.items() if k == "size"},
                s.params,
                snapshot=pt.stem,
            )
            if snap.oof_ids():
                out.append(snap)
    return out
