"""Snapshot checkpoints at the LR cycles' ends (SWA, the other use of the weights' trajectory,
is `engine.swa`).

    snapshots/epoch_NN.pt       SnapshotCheckpoints  the evaluation weights (EMA when on) after
    snapshots/epoch_NN_oof/     epoch NN, in best.pt's format, with their validation
                                probabilities (<id>.png) and oof.csv: 05 scores each snapshot as
                                an extra ensemble candidate ("member@s1/epoch_08") from these
                                files, as cheaply as a stage's stored OOF

The snapshot's probabilities are written at training time (one more validation pass per
snapshot, on the training machine, whose validation loader is built) rather than re-predicted in
05: 05 then reads PNGs for its "stored" source like any stage's, and only re-predicts snapshots
for the TTA settings it re-predicts every stage for anyway.

It runs before LastCheckpoint at an epoch's end: a kill while it writes leaves last.pt at the
previous epoch, so the epoch is redone and its snapshot with it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kaggle_utils.atomic import atomic_write_text
from kaggle_utils.checkpoint import save_checkpoint
from kaggle_utils.engine.artefacts import write_oof_pngs
from kaggle_utils.engine.validation import ValResult

__all__ = ["SNAPSHOTS", "SnapshotCheckpoints", "snapshot_paths", "write_oof"]

SNAPSHOTS = "snapshots"  # ensemble.stages.snapshot_stages reads the same names


def snapshot_paths(stage_dir: Path, epoch: int) -> tuple[Path, Path]:
    """(checkpoint, OOF folder) of the snapshot taken after epoch `epoch` (from 1)."""
    folder = Path(stage_dir) / SNAPSHOTS
    return folder / f"epoch_{epoch:02d}.pt", folder / f"epoch_{epoch:02d}_oof"


def write_oof(oof_dir: Path, result: ValResult, val_index: pd.DataFrame) -> pd.DataFrame:
    """<id>.png (uint8 probabilities at the training size) and oof.csv (id, dice, car, angle),
    as OOFWriter writes a stage's; oof.csv last, so it only lists PNGs already whole."""
    write_oof_pngs(oof_dir, result.probs)
    rows = result.per_image.merge(val_index[["id", "car", "angle"]], on="id", how="left")
    atomic_write_text(oof_dir / "oof.csv", rows.to_csv(index=False))
    return rows


class SnapshotCheckpoints:
    """snapshots/epoch_NN.pt (+ its OOF) after each of `epochs` (from 1): the member's
    `snapshots: true` (each LR cycle's end, `optim.cycle_end_epochs`) or its list."""

    def __init__(
        self,
        stage_dir: Path,
        epochs: Sequence[int],
        model_spec: dict,
        size: tuple[int, int],
        meta: dict,
        val_index: pd.DataFrame,
    ):
        self.stage_dir, self.epochs = Path(stage_dir), sorted(set(epochs))
        self.model_spec, self.size, self.meta, self.val_index = model_spec, size, meta, val_index

    def on_fit_start(self, engine: Any) -> None:
        """A stage started afresh (new parameters) drops the snapshots of its earlier run."""
        folder = self.stage_dir / SNAPSHOTS
        if engine.state.epoch == 0 and engine.fabric.is_global_zero and folder.is_dir():
            shutil.rmtree(folder)

    def on_train_epoch_end(self, engine: Any, epoch: int) -> None:
        if epoch + 1 not in self.epochs:
            return
        result = engine.last_val
        if result is None or not result.probs or epoch + 1 != engine.plan.epochs:
            result = engine.validator(engine.state.eval_model, keep_probs=True)  # every rank
        if engine.fabric.is_global_zero:
            pt, oof_dir = snapshot_paths(self.stage_dir, epoch + 1)
            save_checkpoint(
                pt,
                engine.state.eval_model,
                model_spec=self.model_spec,
                size=self.size,
                epoch=epoch,
                extra={**self.meta, "dice": result.dice, "val_loss": result.loss},
            )
            write_oof(oof_dir, result, self.val_index)
            print(f"snapshot after epoch {epoch + 1}: Dice {result.dice:.5f} -> {pt}", flush=True)
        engine.fabric.barrier()
