"""One stage of one member: resolve everything up front, then build the engine and fit.

`prepare_stage` reads and validates the member's parameters, splits train/validation by car and
says whether the stage is new, resumable (its folder holds last.pt) or finished (metrics.json with
an unchanged parameter hash), all before anything is written. `train_stage` builds the Fabric,
data, model, optimizer and callbacks and runs `Engine.fit`.

Several devices (`devices: N`, `num_nodes: M`): the member's `batch_size` is the GLOBAL batch of
one forward step. Each of the N x M processes takes batch_size / (N x M) images of it, and an
optimizer step sees batch_size x accumulate images, on one CPU or on 20 GPUs alike. So the
learning rate, schedule and steps per epoch of a member file never change with the hardware, and a
2-GPU run follows the 1-GPU run's optimisation (up to BatchNorm statistics, which are per device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from kaggle_utils.config import ConfigError, MemberConfig, load_member
from kaggle_utils.runs import stage_dir_for, stage_hash, stage_status

__all__ = ["StageRun", "build_stage_model", "prepare_stage"]


@dataclass
class StageRun:
    """Everything one stage needs, resolved and validated before training starts."""

    member: MemberConfig
    member_file: Path
    stage: int
    fold: int
    data: Any
    train_index: pd.DataFrame
    val_index: pd.DataFrame
    split_source: str
    run_dir: Path
    stage_dir: Path
    device: torch.device
    init_checkpoint: Path | None
    overrides: dict[str, Any] = field(default_factory=dict)
    devices: int = 1
    num_nodes: int = 1
    time_budget_s: float | None = None  # None: 11 h 30 min on Kaggle, no limit elsewhere

    @property
    def size(self) -> tuple[int, int]:
        return self.member.stages[self.stage].size

    @property
    def stage_name(self) -> str:
        return self.member.stage_name(self.stage)

    @property
    def params_hash(self) -> str:
        return stage_hash(self.member, self.stage, self.fold)

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def status(self) -> str:
        """ "finished" (metrics.json with this params hash), "resume" (last.pt) or "new"."""
        return stage_status(self.stage_dir, self.params_hash)

    def describe(self) -> str:
        cfg, member = self.member.stages[self.stage], self.member
        h, w = cfg.size
        batch = member.stage_batch_size(self.stage)
        devices = (
            f"  {self.devices} device(s) x {self.num_nodes} node(s)" if self.world_size > 1 else ""
        )
        return "\n".join(
            [
                f"member {member.name}  stage {self.stage} ({self.stage_name})  fold {self.fold}",
                f"size {h}x{w}  epochs {cfg.epochs}  lr {member.stage_lr(self.stage):g}  "
                f"batch {batch} x accumulate {member.accumulate}{devices}",
                f"train {len(self.train_index)} images / {self.train_index['car'].nunique()} cars;  "
                f"val {len(self.val_index)} images / {self.val_index['car'].nunique()} cars  "
                f"[{self.split_source}]",
                f"device {self.device}  init {self.init_checkpoint or '-'}  status {self.status()}",
                f"-> {self.stage_dir}",
            ]
        )


def prepare_stage(
    member_file: str | os.PathLike,
    stage: int = 0,
    *,
    fold: int | None = None,
    data_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike = "runs/demo",
    init_checkpoint: str | os.PathLike | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    devices: int | None = None,
    num_nodes: int | None = None,
    time_budget_s: float | None = None,
) -> StageRun:
    """Validate parameters, find the data, split by car and locate the stage folder.

    Args:
        member_file: the member's YAML.
        stage: index into its stages.
        fold: None for the member's own fold.
        data_dir: competition files (None: auto-detect).
        run_dir: where `<member>/<stage>/` is written.
        init_checkpoint: weights to start from (the previous stage's best.pt).
        device: "cpu", "cuda", "cuda:1" or None (CUDA when present).
        overrides: dotted keys, e.g. {"optimizer.lr": 1e-3}.
        devices, num_nodes: processes per machine and machines (None: the member's).
        time_budget_s: the session's time budget (engine.timelimit; None: 11 h 30 min on Kaggle,
            none elsewhere): the stage stops cleanly, to be continued, when it would run over.
    """
    from kaggle_utils.environment import resolve_run_dir
    from kaggle_utils.folds import make_split
    from kaggle_utils.index import train_index, with_masks
    from kaggle_utils.inference import pick_device

    member = load_member(member_file, overrides)
    _check_stage_and_fold(member, member_file, stage, fold)
    fold = member.fold if fold is None else int(fold)
    devices = int(devices or getattr(member, "devices", 1))
    num_nodes = int(num_nodes or getattr(member, "num_nodes", 1))
    _check_world(member, member_file, stage, devices * num_nodes)
    if init_checkpoint and not Path(init_checkpoint).is_file():
        raise FileNotFoundError(f"init_checkpoint not found: {Path(init_checkpoint).resolve()}")
    data = _member_data(member, data_dir)
    index = train_index(data)
    index = with_masks(index)  # drops (and counts) images with neither a GIF nor a CSV row
    run_path = resolve_run_dir(run_dir)
    train, val, source = make_split(index, member, fold, run_dir)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"split {source} left {len(train)} train / {len(val)} val images")
    _check_pseudo_labels(member, member_file, stage, run_path, data, val)
    return StageRun(
        member=member,
        member_file=Path(member_file),
        stage=stage,
        fold=fold,
        data=data,
        train_index=train,
        val_index=val,
        split_source=source,
        run_dir=run_path,
        stage_dir=stage_dir_for(run_path, member, stage, fold),
        device=pick_device(device),
        init_checkpoint=Path(init_checkpoint) if init_checkpoint else None,
        overrides=dict(overrides or {}),
        devices=devices,
        num_nodes=num_nodes,
        time_budget_s=time_budget_s,
    )


def _member_data(member: MemberConfig, data_dir: Any) -> Any:
    """The competition files, with the member's corrected masks applied (checked against the data
    here, before anything is written)."""
    from kaggle_utils.layout import find_data

    data = find_data(data_dir)
    if member.corrected_masks is None:
        return data
    from kaggle_utils.corrections import apply_corrections, load_corrections

    return apply_corrections(data, load_corrections(member.corrected_masks, data))


def _check_pseudo_labels(
    member: MemberConfig, member_file: Any, stage: int, run_path: Path, data: Any, val: Any
) -> None:
    """A stage's pseudo-label folder, checked before any write (test ids only, no validation car)."""
    pseudo = member.stages[stage].pseudo_labels
    if pseudo is None:
        return
    from kaggle_utils.pseudo import load_pseudo_labels

    load_pseudo_labels(pseudo, run_path, data, val, f"{member_file} stages[{stage}].pseudo_labels")


def _check_stage_and_fold(member: MemberConfig, member_file: Any, stage: int, fold: Any) -> None:
    if not 0 <= stage < len(member.stages):
        names = ", ".join(member.stage_name(i) for i in range(len(member.stages)))
        raise ValueError(
            f"{member_file}: stage {stage} does not exist; stages are "
            f"0..{len(member.stages) - 1} ({names})"
        )
    if fold is not None and not 0 <= int(fold) < member.n_folds:
        raise ValueError(
            f"fold {fold} must be in 0..{member.n_folds - 1} (n_folds of {member_file})"
        )


def _check_world(member: MemberConfig, member_file: Any, stage: int, world: int) -> None:
    batch = member.stage_batch_size(stage)
    if world < 1 or batch % world:
        raise ConfigError(
            f"{member_file}: batch_size {batch} (the global batch) cannot be shared by {world} "
            f"processes (devices x num_nodes); make batch_size a multiple of {world}"
        )


def build_stage_model(run: StageRun) -> torch.nn.Module:
    """The member's model, initialised from `init_checkpoint` (previous stage's best.pt) if given."""
    from kaggle_utils.checkpoint import load_checkpoint
    from kaggle_utils.engine.loop import seed_everything
    from kaggle_utils.models import build_model

    seed_everything(run.member.seed)
    model = build_model(run.member.model.spec())
    if run.init_checkpoint is not None:
        ckpt = load_checkpoint(run.init_checkpoint)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise RuntimeError(
                f"init_checkpoint {run.init_checkpoint} does not fit {run.member_file}'s model "
                f"{run.member.model.spec()}: {exc}"
            ) from exc
    return model
