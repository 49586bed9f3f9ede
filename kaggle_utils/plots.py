"""Training figures: learning curves, worst validation images, Dice per stage.

Functions return matplotlib Figures built with the object API (no pyplot state), so they work
headless (Agg) inside papermill as well as inline in JupyterLab; `save_figure` writes PNGs atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kaggle_utils.constants import MASK_SHAPE

__all__ = [
    "error_overlay",
    "learning_curve",
    "save_figure",
    "show_png",
    "stage_dice",
    "worst_images",
]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """PNG written atomically (a kill never leaves half a figure)."""
    from kaggle_utils.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def show_png(path: str | os.PathLike) -> Any:
    """An IPython Image of a saved PNG (notebooks display it as the cell's result)."""
    from IPython.display import Image

    return Image(filename=str(path))


def learning_curve(history: pd.DataFrame | str | os.PathLike, title: str = "") -> Figure:
    """Train/val loss and validation Dice per epoch (history.csv of a stage)."""
    if not isinstance(history, pd.DataFrame):
        history = pd.read_csv(history)
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_dice = fig.subplots(1, 2)
    ax_loss.plot(history["epoch"], history["train_loss"], "o-", label="train")
    val = history.dropna(subset=["val_loss"])
    ax_loss.plot(val["epoch"], val["val_loss"], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_dice.plot(val["epoch"], val["val_dice"], "s-", color="C2")
    if len(val):
        best = val.loc[val["val_dice"].idxmax()]
        ax_dice.axhline(best["val_dice"], color="grey", lw=0.8, ls="--")
        ax_dice.annotate(
            f"best {best['val_dice']:.4f} (epoch {int(best['epoch'])})",
            (best["epoch"], best["val_dice"]),
            textcoords="offset points",
            xytext=(-10, -14),
            ha="right",
        )
    ax_dice.set(xlabel="epoch", ylabel="mean Dice", title="validation Dice (Kaggle metric)")
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def error_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB image with false positives red, false negatives blue, true positives lightly green."""
    out = image.astype(np.float32).copy()
    truth, pred = truth.astype(bool), pred.astype(bool)
    colours = {
        (True, True): (np.array([0, 255, 0]), 0.25),
        (False, True): (np.array([255, 0, 0]), 0.8),
        (True, False): (np.array([0, 80, 255]), 0.8),
    }
    for (t, p), (colour, alpha) in colours.items():
        sel = (truth == t) & (pred == p)
        out[sel] = (1 - alpha) * out[sel] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)


def worst_images(
    data: Any,
    per_image: pd.DataFrame,
    probs: dict[str, np.ndarray],
    masks: Any,
    n: int = 6,
    threshold: float = 0.5,
    height: int = 256,
) -> Figure:
    """The `n` validation images with the lowest Dice, errors coloured (red FP, blue FN).

    `probs` are uint8 probabilities at the training size; `masks.get([id])` gives the truth at the
    metric's resolution (see dataset.ValidationMasks).
    """
    worst = per_image.sort_values("dice").head(n)
    cols = min(3, max(1, len(worst)))
    rows = max(1, int(np.ceil(len(worst) / cols)))
    width = round(height * MASK_SHAPE[1] / MASK_SHAPE[0])
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, row in zip(axes, worst.itertuples(), strict=False):
        image = data.load_image(row.id, size=(height, width))
        truth = masks.get([row.id])[0].numpy()
        truth = cv2.resize(truth, (width, height), interpolation=cv2.INTER_NEAREST)
        prob = cv2.resize(probs[row.id], (width, height), interpolation=cv2.INTER_LINEAR)
        pred = prob >= threshold * 255
        ax.imshow(error_overlay(image, truth, pred))
        ax.set_title(f"{row.id}  Dice {row.dice:.4f}", fontsize=9)
    fig.suptitle("worst validation images (red: false positive, blue: false negative)", fontsize=10)
    fig.tight_layout()
    return fig


def stage_dice(stages: pd.DataFrame, title: str = "") -> Figure:
    """Best validation Dice of each stage of a member (04_stage_up's table)."""
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    done = stages.dropna(subset=["best_dice"])
    ax.plot(range(len(done)), done["best_dice"], "o-")
    ax.set_xticks(range(len(done)), done["stage_name"], rotation=15)
    for i, d in enumerate(done["best_dice"]):
        ax.annotate(f"{d:.4f}", (i, d), textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set(xlabel="stage", ylabel="best validation Dice", title=title or "Dice per stage")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
