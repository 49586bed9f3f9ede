"""Everything a stage's training must carry across a restart, as one object.

`TrainState` is what `fabric.save` writes to `last.pt` and `fabric.load` restores in place: the
weights, the optimizer and scheduler, the EMA weights, the loss scaler (fp16 on T4-class GPUs),
the SWA running mean, and the loop's own counters and history. Adding a field here is the only change a resumable
behaviour needs; nothing unpacks checkpoint keys by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kaggle_utils.optim import ModelEMA

__all__ = ["STATE_FORMAT", "TrainState", "load_train_state"]

STATE_FORMAT = "kaggle_utils.train_state/1"


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors: a checkpoint loadable on any device and memory format."""
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


@dataclass
class TrainState:
    """The resumable state of one stage (`epoch` = epochs completed so far)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: ModelEMA | None = None
    precision: Any = None  # Fabric's precision plugin: the fp16 loss scaler's state
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_dice: float = -1.0
    best_epoch: int = -1
    elapsed_s: float = 0.0
    resumed_from: int | None = None
    # torch.optim.swa_utils.AveragedModel when the member asks for SWA (engine.swa.SWA):
    # its mean weights and count travel in last.pt, so a resumed run averages the same epochs
    swa: Any = None

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation scores and best.pt keeps: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "model": _cpu_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": _cpu_state(self.ema.module) if self.ema is not None else None,
            "ema_steps": self.ema.steps if self.ema is not None else 0,
            "precision": self.precision.state_dict() if self.precision is not None else {},
            "epoch": self.epoch,
            "history": list(self.history),
            "best_dice": self.best_dice,
            "best_epoch": self.best_epoch,
            "elapsed_s": self.elapsed_s,
            "swa": _cpu_state(self.swa) if self.swa is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} state (format {state.get('format')!r})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
            self.ema.steps = int(state.get("ema_steps", 0))
        if self.precision is not None and state.get("precision"):
            self.precision.load_state_dict(state["precision"])
        self.epoch = self.resumed_from = int(state["epoch"])
        self.history = list(state["history"])
        self.best_dice, self.best_epoch = float(state["best_dice"]), int(state["best_epoch"])
        self.elapsed_s = float(state["elapsed_s"])
        if self.swa is not None and state.get("swa") is not None:
            self.swa.load_state_dict(state["swa"])


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """The TrainState saved in a stage's last.pt (as a dict: epoch = epochs completed, history,
    best_dice, model, ema, ...); a missing, unreadable or foreign file names itself."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # FileNotFoundError, truncated zip, unpickling errors
        raise ValueError(f"{path} cannot be read as a stage's last.pt: {exc}") from exc
    state = ckpt.get("state") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} holds no {STATE_FORMAT} training state")
    return state
