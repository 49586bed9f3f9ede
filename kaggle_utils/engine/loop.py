"""The training loop: Lightning Fabric for devices, precision and DDP; the loop itself is ours.

`Engine.fit` runs epochs of `train_loop` and, at the validation cadence, `val_loop`, and calls
named hooks on the callbacks (`fabric.call`) at each point where a behaviour may attach:

    on_fit_start(engine)
      on_train_epoch_start(engine, epoch)
        on_before_backward(engine, epoch, batch_idx, outputs)    outputs["loss"] may be replaced
        on_optimizer_step_end(engine)     (Fabric itself calls on_after_optimizer_step(strategy, optimizer))
        on_train_batch_end(engine, epoch, batch_idx, loss)
      on_validation_end(engine, epoch, result, row)
      on_train_epoch_end(engine, epoch, row)                     row: this epoch's history row
    on_fit_end(engine)        or, when a callback set engine.stop_reason (a time budget):
    on_fit_paused(engine)     the stage is to be continued from last.pt

A new behaviour (a guard, a checkpoint, a figure, a logger) is a new callback, not an edit here.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader

from kaggle_utils.engine.state import TrainState
from kaggle_utils.engine.validation import Validator, ValResult

__all__ = ["Engine", "FitPlan", "loss_input", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): same seed, same initial weights and data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def loss_input(outputs: Any) -> Any:
    """Autocast outputs as float32 for the loss (logits, or (logits, [aux logits...]))."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    logits, aux = outputs
    return logits.float(), [a.float() for a in aux]


@dataclass(frozen=True)
class FitPlan:
    """What the loop runs: epochs, accumulation, validation cadence, clipping, and labels."""

    epochs: int
    accumulate: int = 1
    val_every: int = 1
    grad_clip: float | None = None
    seed: int = 0
    channels_last: bool = False
    label: str = ""

    def validates(self, epoch: int) -> bool:
        """Validate every `val_every` epochs and always after the last one."""
        return (epoch + 1) % self.val_every == 0 or epoch + 1 == self.epochs


class Engine:
    """One stage's training: `fit` = epochs of `train_loop` with `val_loop` at the cadence."""

    def __init__(
        self,
        fabric: Fabric,
        state: TrainState,
        module: Any,
        optimizer: Any,
        train_loader: DataLoader,
        validator: Validator,
        loss_fn: torch.nn.Module,
        plan: FitPlan,
        context: Any = None,
    ):
        self.fabric, self.state, self.plan = fabric, state, plan
        self.module, self.optimizer = module, optimizer  # Fabric-wrapped model and optimizer
        self.train_loader, self.validator, self.loss_fn = train_loader, validator, loss_fn
        self.context = context  # the stage (run folder, member): what callbacks write about
        self.last_val: ValResult | None = None
        self.train_images, self.train_seconds = 0, 0.0
        self.stop_reason: str | None = None  # set by a callback: stop after this epoch

    def call(self, hook: str, **kwargs: Any) -> None:
        self.fabric.call(hook, engine=self, **kwargs)

    def fit(self) -> TrainState:
        self.call("on_fit_start")
        for epoch in range(self.state.epoch, self.plan.epochs):
            started = time.perf_counter()
            self.call("on_train_epoch_start", epoch=epoch)
            row = self.train_loop(epoch)
            if self.plan.validates(epoch):
                row.update(self.val_loop(epoch, row))
            row["seconds"] = time.perf_counter() - started
            self.state.elapsed_s += row["seconds"]
            self.state.history.append(row)
            self.state.epoch = epoch + 1
            self.call("on_train_epoch_end", epoch=epoch, row=row)
            if self.stop_reason:
                self.call("on_fit_paused")
                return self.state
        self.call("on_fit_end")
        return self.state

    def train_loop(self, epoch: int) -> dict[str, Any]:
        """One epoch over this rank's share of every global batch; returns the history row."""
        fabric, plan, optimizer = self.fabric, self.plan, self.optimizer
        seed_everything(plan.seed * 1000 + epoch)
        self.train_loader.batch_sampler.set_epoch(epoch)
        self.train_loader.dataset.epoch = epoch
        self.module.train()
        optimizer.zero_grad(set_to_none=True)
        fmt = torch.channels_last if plan.channels_last else torch.contiguous_format
        n_batches, running, seen = len(self.train_loader), 0.0, 0
        started = time.perf_counter()
        for i, batch in enumerate(self.train_loader):
            x = batch["image"].to(fabric.device, non_blocking=True).contiguous(memory_format=fmt)
            y = batch["mask"].to(fabric.device, non_blocking=True)
            steps = (i + 1) % plan.accumulate == 0 or i + 1 == n_batches
            with fabric.no_backward_sync(self.module, enabled=not steps):
                outputs = {"loss": self.loss_fn(loss_input(self.module(x)), y)}
                self.call("on_before_backward", epoch=epoch, batch_idx=i, outputs=outputs)
                fabric.backward(outputs["loss"] / plan.accumulate)
            if steps:
                self.optimizer_step()
            loss = float(outputs["loss"].detach())
            running, seen = running + loss * len(x), seen + len(x)
            self.call("on_train_batch_end", epoch=epoch, batch_idx=i, loss=running / seen)
        if fabric.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        images = seen * fabric.world_size
        self.train_images, self.train_seconds = (
            self.train_images + images,
            self.train_seconds + seconds,
        )
        return {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": _mean_over_ranks(fabric, running / max(1, seen)),
            "val_loss": float("nan"),
            "val_dice": float("nan"),
            "images_per_s": images / max(seconds, 1e-9),
        }

    def optimizer_step(self) -> None:
        """Clip (unscaled under fp16), step, zero, advance the LR schedule, then the hooks."""
        if self.plan.grad_clip:
            self.fabric.clip_gradients(self.module, self.optimizer, max_norm=self.plan.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.scheduler.step()
        self.call("on_optimizer_step_end")

    def val_loop(self, epoch: int, row: dict[str, Any]) -> dict[str, Any]:
        """Score the evaluation weights (EMA when on); the last epoch keeps its probabilities."""
        last = epoch + 1 == self.plan.epochs
        result = self.validator(self.state.eval_model, keep_probs=last)
        self.last_val = result
        scores = {"val_loss": result.loss, "val_dice": result.dice}
        self.call("on_validation_end", epoch=epoch, result=result, row={**row, **scores})
        return scores


def _mean_over_ranks(fabric: Fabric, value: float) -> float:
    if fabric.world_size == 1:
        return value
    return float(fabric.all_reduce(torch.tensor(value, dtype=torch.float64), reduce_op="mean"))
