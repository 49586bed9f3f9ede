"""Callbacks of the training loop that touch no file: guards, EMA, progress, loggers.

Each is a plain object with hook methods named as `loop.Engine` calls them (`fabric.call`
passes only the keyword arguments a method declares). The ones that write the run folder live
in `engine.artefacts`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "EMAUpdate",
    "EpochPrinter",
    "FabricLoggers",
    "LossHook",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "ProgressBar",
]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the stage stopped and its last good checkpoint is kept."""


class LossHook:
    """Replaces the loss with `fn(loss, epoch, batch_idx)` before backward (tests inject NaN)."""

    def __init__(self, fn: Callable[[torch.Tensor, int, int], torch.Tensor]):
        self.fn = fn

    def on_before_backward(self, epoch: int, batch_idx: int, outputs: dict) -> None:
        outputs["loss"] = self.fn(outputs["loss"], epoch, batch_idx)


class NonFiniteLossGuard:
    """Stops at the first NaN/inf loss, before it reaches the weights, naming what to change.

    It must come after every callback that may replace the loss.
    """

    def __init__(self, where: str, last_checkpoint: Any):
        self.where, self.last_checkpoint = where, last_checkpoint

    def on_before_backward(self, engine: Any, epoch: int, batch_idx: int, outputs: dict) -> None:
        loss = outputs["loss"]
        if bool(torch.isfinite(loss)):
            return
        kept = (
            f"last good checkpoint kept: {self.last_checkpoint}"
            if self.last_checkpoint.exists()
            else "no checkpoint yet"
        )
        lr = engine.optimizer.param_groups[0]["lr"]
        raise NonFiniteLossError(
            f"{self.where}: training loss is {float(loss.detach())} at epoch {epoch + 1} step "
            f"{batch_idx + 1} (lr {lr:.3g}); stopped, {kept}. Lower the learning rate or check "
            "the data."
        )


class EMAUpdate:
    """Moves the EMA weights toward the model's after every optimizer step."""

    def on_optimizer_step_end(self, engine: Any) -> None:
        if engine.state.ema is not None:
            engine.state.ema.update(engine.state.model)


class ProgressBar:
    """A tqdm bar per epoch with the running loss (rank 0 only; refreshes every 2 s)."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bar = enabled, None

    def on_train_epoch_start(self, engine: Any, epoch: int) -> None:
        if not (self.enabled and engine.fabric.is_global_zero):
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=len(engine.train_loader),
            desc=f"{engine.plan.label} epoch {epoch + 1}/{engine.plan.epochs}",
            leave=False,
            mininterval=2.0,
        )

    def on_train_batch_end(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_train_epoch_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochPrinter:
    """One line per epoch on rank 0: what a papermill log or a notebook cell shows."""

    def on_train_epoch_end(self, engine: Any, epoch: int, row: dict) -> None:
        if engine.fabric.is_global_zero:
            print(
                f"epoch {epoch + 1}/{engine.plan.epochs}  loss {row['train_loss']:.4f}  "
                f"val loss {row['val_loss']:.4f}  val Dice {row['val_dice']:.5f}  "
                f"{row['images_per_s']:.1f} img/s  {row['seconds']:.0f} s",
                flush=True,
            )


class FabricLoggers:
    """Each epoch's row to Fabric's loggers (CSV always; TensorBoard where it is installed)."""

    def on_train_epoch_end(self, engine: Any, epoch: int, row: dict) -> None:
        numbers = {k: float(v) for k, v in row.items() if isinstance(v, int | float)}
        engine.fabric.log_dict(numbers, step=epoch + 1)

    def on_fit_end(self, engine: Any) -> None:
        for logger in engine.fabric.loggers:
            logger.finalize("success")


def make_loggers(root: Any) -> list[Any]:
    """Fabric's CSVLogger under `<stage>/logs`, plus TensorBoard when `tensorboard` imports."""
    from lightning_fabric.loggers import CSVLogger, TensorBoardLogger

    loggers: list[Any] = [CSVLogger(root_dir=root, name="logs", version="csv")]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    loggers.append(TensorBoardLogger(root_dir=root, name="logs", version="tensorboard"))
    return loggers
