"""Callbacks that write a stage's run folder (rank 0 only; every write atomic).

    best.pt       BestCheckpoint   the evaluation weights whenever validation Dice improves
    history.csv   LastCheckpoint   one row per epoch, then last.pt (the TrainState, fabric.save)
    oof/, oof.csv OOFWriter        the best weights' validation probabilities and per-image Dice
    curves.png, worst.png  Figures
    metrics.json  MetricsJson      last: its presence (with the params hash) marks the stage done

A kill at any moment leaves whole files only (and temp files, which the next start removes);
re-running resumes from last.pt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import pandas as pd

from kaggle_utils.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    raise_if_disk_full,
)
from kaggle_utils.checkpoint import save_checkpoint
from kaggle_utils.engine.validation import ValResult

PAUSED = "paused.json"  # a stage stopped early (time budget): to be continued from last.pt

__all__ = [
    "PAUSED",
    "BestCheckpoint",
    "Figures",
    "LastCheckpoint",
    "MetricsJson",
    "OOFWriter",
    "remove_temp_files",
]


class BestCheckpoint:
    """best.pt: the evaluation weights (EMA when on) at the best validation Dice so far."""

    def __init__(self, path: Path, model_spec: dict, size: tuple[int, int], meta: dict):
        self.path, self.model_spec, self.size, self.meta = path, model_spec, size, meta

    def on_validation_end(self, engine: Any, epoch: int, result: ValResult) -> None:
        state = engine.state
        if not result.dice > state.best_dice:
            return
        state.best_dice, state.best_epoch = result.dice, epoch + 1
        if engine.fabric.is_global_zero:
            save_checkpoint(
                self.path,
                state.eval_model,
                model_spec=self.model_spec,
                size=self.size,
                epoch=epoch,
                extra={**self.meta, "dice": result.dice, "val_loss": result.loss},
            )
        engine.fabric.barrier()


class LastCheckpoint:
    """history.csv and last.pt after every epoch: what a killed or time-limited stage resumes."""

    def __init__(self, stage_dir: Path, meta: dict):
        self.stage_dir, self.meta = stage_dir, meta

    @property
    def path(self) -> Path:
        return self.stage_dir / "last.pt"

    def on_fit_start(self, engine: Any) -> None:
        if engine.fabric.is_global_zero:  # train_stage holds the stage's lock: no other writer
            remove_temp_files(self.stage_dir)

    def on_train_epoch_end(self, engine: Any) -> None:
        fabric, history = engine.fabric, engine.state.history
        if fabric.is_global_zero:
            atomic_write_text(
                self.stage_dir / "history.csv", pd.DataFrame(history).to_csv(index=False)
            )
        tmp = self.stage_dir / f".last.pt.{os.getpid()}.tmp"
        tmp = Path(fabric.broadcast(str(tmp)))  # rank 0 writes; every rank must call save
        try:
            fabric.save(tmp, {"state": engine.state, **self.meta})
        except BaseException as exc:  # a full disk: one line naming last.pt, the old one intact
            tmp.unlink(missing_ok=True)
            raise_if_disk_full(self.path, exc)
            raise
        if fabric.is_global_zero:
            os.replace(tmp, self.path)
        fabric.barrier()


def remove_temp_files(stage_dir: Path) -> list[Path]:
    """Delete the temp files that a kill during a save left in the stage folder (and its oof/):
    `.<name>.<random>.tmp` of `atomic` (best.pt, metrics.json, history.csv, oof/<id>.png, ...)
    and `.last.pt.<pid>.tmp`. Call it only while holding the stage's lock: another writer's
    temp file would be one it is still writing. Returns what was removed."""
    removed = []
    for stale in sorted(stage_dir.rglob(".*.tmp")):
        if stale.is_file() and stale.name.count(".") >= 3:  # ".<name>.<random>.tmp"
            stale.unlink(missing_ok=True)
            removed.append(stale)
    if removed:
        print(f"{stage_dir}: removed {len(removed)} temp file(s) of an interrupted run", flush=True)
    return removed


class OOFWriter:
    """The best weights' validation probabilities (oof/<id>.png, uint8) and oof.csv.

    When the best epoch was the last, its kept probabilities are used; otherwise best.pt is
    scored once more (by every rank: the validation is sharded).
    """

    def __init__(self, stage_dir: Path, best_pt: Path, val_index: pd.DataFrame):
        self.stage_dir, self.best_pt, self.val_index = stage_dir, best_pt, val_index

    def on_fit_end(self, engine: Any) -> None:
        result = engine.last_val
        if result is None or engine.state.best_epoch != engine.state.epoch or not result.probs:
            result = engine.validator(_load_best(self.best_pt, engine), keep_probs=True)
        columns = ["id", "car", "angle"]
        result.per_image = result.per_image.merge(self.val_index[columns], on="id", how="left")
        engine.best_result = result
        if not engine.fabric.is_global_zero:
            return
        write_oof_pngs(self.stage_dir / "oof", result.probs)
        atomic_write_text(self.stage_dir / "oof.csv", result.per_image.to_csv(index=False))


def write_oof_pngs(oof_dir: Path, probs: dict[str, Any]) -> None:
    """<id>.png per validation image (uint8 probabilities at the training size), each atomic:
    the files 05 reads for a stage (OOFWriter) and for a snapshot (`engine.snapshots`)."""
    oof_dir.mkdir(parents=True, exist_ok=True)
    for image_id, prob in probs.items():
        _, png = cv2.imencode(".png", prob)
        atomic_write_bytes(oof_dir / f"{image_id}.png", png.tobytes())


def _load_best(best_pt: Path, engine: Any) -> Any:
    import torch

    from kaggle_utils.checkpoint import load_member_model

    model, _ = load_member_model(best_pt, device=engine.fabric.device)
    if engine.plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class Figures:
    """curves.png (loss, Dice, LR by epoch) and worst.png (the worst validation images)."""

    def __init__(self, stage_dir: Path, data: Any, masks: Any, threshold: float, title: str):
        self.stage_dir, self.data, self.masks = stage_dir, data, masks
        self.threshold, self.title = threshold, title

    def on_fit_end(self, engine: Any) -> None:
        if not engine.fabric.is_global_zero:
            return
        from kaggle_utils import plots

        history = pd.DataFrame(engine.state.history)
        plots.save_figure(
            plots.learning_curve(history, title=self.title), self.stage_dir / "curves.png"
        )
        result = engine.best_result
        figure = plots.worst_images(
            self.data, result.per_image, result.probs, self.masks, n=6, threshold=self.threshold
        )
        plots.save_figure(figure, self.stage_dir / "worst.png")


class MetricsJson:
    """metrics.json, written last: the stage's summary, and the mark that it is finished."""

    def __init__(self, stage_dir: Path, fields: dict[str, Any]):
        self.stage_dir, self.fields = stage_dir, fields

    def on_fit_end(self, engine: Any) -> None:
        state, result = engine.state, engine.best_result
        resumed = state.resumed_from
        metrics = {
            **self.fields,
            "best_dice": result.dice,
            "best_epoch": state.best_epoch,
            "val_loss": result.loss,
            "time_s": round(state.elapsed_s, 1),
            "images_per_s": (
                round(engine.train_images / engine.train_seconds, 2)
                if engine.train_seconds
                else None
            ),
            "resumed_from_epoch": resumed,
            "epochs_run_here": len(state.history) - (resumed or 0),
        }
        engine.metrics = metrics
        if engine.fabric.is_global_zero:
            atomic_write_json(self.stage_dir / "metrics.json", metrics)
            (self.stage_dir / PAUSED).unlink(missing_ok=True)  # continued to the end
        engine.fabric.barrier()


class PausedMarker:
    """paused.json when a stage stops early (a time budget): why, and how far it got. The stage
    is "to be continued": running it again (the next Kaggle session, its output attached)
    resumes from last.pt."""

    def __init__(self, stage_dir: Path, fields: dict[str, Any]):
        self.stage_dir, self.fields = stage_dir, fields

    def on_fit_paused(self, engine: Any) -> None:
        import datetime

        state = engine.state
        engine.metrics = {
            **self.fields,
            "paused": True,
            "reason": engine.stop_reason,
            "epochs_done": state.epoch,
            "epochs": engine.plan.epochs,
            "best_dice": state.best_dice,
            "time_s": round(state.elapsed_s, 1),
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if engine.fabric.is_global_zero:
            atomic_write_json(self.stage_dir / PAUSED, engine.metrics)
        engine.fabric.barrier()
