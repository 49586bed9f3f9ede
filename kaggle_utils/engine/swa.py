"""Stochastic weight averaging (SWA) as a callback: the mean of the epoch-end weights.

    swa.pt   the mean of the raw weights after every epoch from `swa.start_epoch`, BatchNorm
             statistics recomputed over training batches, in best.pt's format; it also becomes
             best.pt (and so the stage's OOF and Dice) when it validates better than the best epoch

The running mean (`torch.optim.swa_utils.AveragedModel`) is `TrainState.swa`, saved in last.pt:
a resumed run averages exactly the epochs an uninterrupted one does. The update runs before
LastCheckpoint at an epoch's end, so a kill between them redoes that epoch, update included.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch

from kaggle_utils.checkpoint import save_checkpoint
from kaggle_utils.engine.loop import seed_everything

__all__ = ["SWA", "averaged_model"]


def averaged_model(model: torch.nn.Module) -> torch.optim.swa_utils.AveragedModel:
    """The SWA running mean of `model`'s parameters (buffers recomputed at the end)."""
    swa = torch.optim.swa_utils.AveragedModel(model)
    for p in swa.parameters():
        p.requires_grad_(False)
    return swa


class SWA:
    """Stochastic weight averaging: the raw weights after each epoch from `start_epoch` (from 1)
    enter `engine.state.swa` (an AveragedModel built before resuming); at the fit's end the
    BatchNorm statistics are recomputed over `bn_batches` training batches (all: None), the mean
    is validated and written as swa.pt, and as best.pt when it beats the best epoch's Dice."""

    def __init__(
        self,
        stage_dir: Path,
        start_epoch: int,
        bn_batches: int | None,
        model_spec: dict,
        size: tuple[int, int],
        meta: dict,
    ):
        self.stage_dir, self.start_epoch, self.bn_batches = Path(stage_dir), start_epoch, bn_batches
        self.model_spec, self.size, self.meta = model_spec, size, meta

    def on_train_epoch_end(self, engine: Any, epoch: int) -> None:
        if epoch + 1 >= self.start_epoch:
            engine.state.swa.update_parameters(engine.state.model)

    def on_fit_end(self, engine: Any) -> None:
        state, swa = engine.state, engine.state.swa
        if int(swa.n_averaged) == 0:
            print(
                f"swa: start_epoch {self.start_epoch} is after the stage's last epoch", flush=True
            )
            return
        self._update_bn(engine)
        result = engine.validator(swa.module, keep_probs=True)
        wins = result.dice > state.best_dice
        if wins:  # OOFWriter then keeps these probabilities, MetricsJson this Dice
            state.best_dice, state.best_epoch, engine.last_val = result.dice, state.epoch, result
        if engine.fabric.is_global_zero:
            extra = {**self.meta, "dice": result.dice, "val_loss": result.loss, "swa": True}
            extra["swa_epochs"] = int(swa.n_averaged)
            names = ["swa.pt", "best.pt"] if wins else ["swa.pt"]
            for name in names:
                save_checkpoint(
                    self.stage_dir / name,
                    swa.module,
                    model_spec=self.model_spec,
                    size=self.size,
                    epoch=state.epoch - 1,
                    extra=extra,
                )
            print(
                f"SWA of {int(swa.n_averaged)} epochs: Dice {result.dice:.5f} -> "
                f"{' and '.join(names)}",
                flush=True,
            )
        engine.fabric.barrier()

    def _update_bn(self, engine: Any) -> None:
        """BatchNorm running statistics of the averaged weights, over training batches seeded as
        an epoch after the last (the same batches in a resumed run as in an uninterrupted one)."""
        plan, loader, device = engine.plan, engine.train_loader, engine.fabric.device
        seed_everything(plan.seed * 1000 + plan.epochs)
        loader.batch_sampler.set_epoch(plan.epochs)
        fmt = torch.channels_last if plan.channels_last else torch.contiguous_format
        batches = itertools.islice(loader, self.bn_batches)
        images = (b["image"].to(device).contiguous(memory_format=fmt) for b in batches)
        swa = engine.state.swa
        with engine.fabric.autocast():
            torch.optim.swa_utils.update_bn(images, swa)
        swa.eval()
        if engine.fabric.world_size > 1:  # per-rank statistics (CPU, no SyncBatchNorm): rank 0's
            for buffer in swa.module.buffers():
                torch.distributed.broadcast(buffer, src=0)
