"""Optimisation pieces of a training stage: optimizer, learning-rate schedule, weight EMA.

`build_optimizer` keeps norms and biases out of weight decay and uses torch's fused kernels where
they apply; `build_scheduler` is a per-optimizer-step LambdaLR over `lr_factor` (linear warm-up,
then cosine, step, constant, cosine with warm restarts or triangular cycles, optionally cycles
after a late epoch); `cycle_end_epochs` says after which epochs a cycle ends (where snapshots are
taken); `ModelEMA` is the averaged copy evaluated instead of the raw model.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from kaggle_utils.config import MemberConfig

__all__ = ["ModelEMA", "build_optimizer", "build_scheduler", "cycle_end_epochs", "lr_factor"]


class ModelEMA:
    """Exponential moving average of weights (buffers copied): evaluated instead of the raw model."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup_steps: int = 0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup_steps, self.steps = decay, warmup_steps, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        d = 0.0 if self.steps <= self.warmup_steps else self.decay
        ema_p = [p for p in self.module.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def build_optimizer(
    model: torch.nn.Module, member: MemberConfig, lr: float
) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD; no weight decay on norms and biases (the usual practice)."""
    cfg = member.optimizer
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # one fused kernel per step instead of ~5 tensor ops per parameter: on the CPU the per-parameter
    # AdamW step took ~10% of a RefineNet/ResNet-18 training step at 128x192 (bench_train.py)
    fused = _fused_optimizers_apply(decay + no_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused
        )
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=fused)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def _fused_optimizers_apply(params: list[torch.Tensor]) -> bool:
    """torch's fused optimizer kernels cover floating-point parameters on the CPU and CUDA."""
    devices = {p.device.type for p in params}
    return (
        bool(params)
        and devices <= {"cpu", "cuda"}
        and len(devices) == 1
        and all(p.is_floating_point() for p in params)
    )


def lr_factor(
    step: int, total: int, warmup: int, member: MemberConfig, steps_per_epoch: int
) -> float:
    """Multiplier of the peak LR at optimizer step `step`: linear warm-up, then cosine/step/
    constant, warm restarts or triangular cycles; with `cyclic_from_epoch` N the schedule runs
    over the first N epochs (ending at its floor) and triangular cycles follow."""
    if step < warmup:
        return (step + 1) / warmup
    sched = member.schedule
    if sched.cyclic_from_epoch is not None:
        start = sched.cyclic_from_epoch * steps_per_epoch
        if step >= start:
            return _cycle_factor(step - start, sched, steps_per_epoch, "cyclic")
        total = min(total, start)
    if sched.name in ("cosine_restarts", "cyclic"):
        return _cycle_factor(step - warmup, sched, steps_per_epoch, sched.name)
    if sched.name == "constant":
        return 1.0
    if sched.name == "step":
        return sched.gamma ** ((step - warmup) // max(1, sched.step_epochs * steps_per_epoch))
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return sched.min_lr_ratio + (1 - sched.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _cycle_factor(t: int, sched: Any, steps_per_epoch: int, kind: str) -> float:
    """LR factor `t` steps after the cycles began. cosine_restarts: from the cycle's top down a
    half cosine to min_lr_ratio, each cycle `cycle_mult` times the last; cyclic: triangular,
    min_lr_ratio -> top at mid-cycle -> min_lr_ratio. Both end a cycle at the floor, where a
    snapshot is taken."""
    length = sched.cycle_epochs * steps_per_epoch
    mult = sched.cycle_mult if kind == "cosine_restarts" else 1.0
    if mult == 1.0:
        pos = t % length
    else:
        pos = float(t)
        while pos >= length:
            pos, length = pos - length, length * mult
    p = pos / length
    lo, hi = sched.min_lr_ratio, sched.cycle_peak_ratio
    if kind == "cosine_restarts":
        return lo + (hi - lo) * 0.5 * (1 + math.cos(math.pi * p))
    return lo + (hi - lo) * (1 - abs(1 - 2 * p))


def _warmup_epochs(member: MemberConfig, stage: int) -> float:
    cfg = member.stages[stage]
    return cfg.warmup_epochs if cfg.warmup_epochs is not None else member.schedule.warmup_epochs


def cycle_end_epochs(member: MemberConfig, stage: int) -> list[int]:
    """The stage's epochs (from 1) after which an LR cycle ends, rounded to the nearest epoch end
    when a fractional warm-up or cycle puts the end mid-epoch; [] without cycles."""
    sched, epochs = member.schedule, member.stages[stage].epochs
    if sched.cyclic_from_epoch is not None:
        start, mult = float(sched.cyclic_from_epoch), 1.0
    elif sched.name in ("cosine_restarts", "cyclic"):
        start = _warmup_epochs(member, stage)
        mult = sched.cycle_mult if sched.name == "cosine_restarts" else 1.0
    else:
        return []
    ends, length, t = [], float(sched.cycle_epochs), start + sched.cycle_epochs
    while t <= epochs + 1e-9:
        ends.append(round(t))
        length *= mult
        t += length
    return sorted({e for e in ends if 1 <= e <= epochs})


def build_scheduler(
    optimizer: torch.optim.Optimizer, member: MemberConfig, stage: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepped once per optimizer step over the stage's epochs: the warm-up is the stage's
    own `warmup_epochs` when set (a later stage may need none), else the schedule's."""
    total = steps_per_epoch * member.stages[stage].epochs
    warmup = round(_warmup_epochs(member, stage) * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, member, steps_per_epoch)
    )
