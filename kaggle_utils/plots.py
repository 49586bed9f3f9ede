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
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from kaggle_utils.constants import MASK_SHAPE

__all__ = [
    "error_overlay",
    "error_window",
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
    """Train/val loss and validation Dice per epoch (history.csv of a stage).

    Epochs are whole numbers on both panels (which share the epoch axis, so a single validation
    point sits at its epoch, not in a 1-epoch-wide window), and the log loss axis carries one kind
    of label: plain numbers, no mix of decade and minor-tick labels.
    """
    if not isinstance(history, pd.DataFrame):
        history = pd.read_csv(history)
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_dice = fig.subplots(1, 2, sharex=True)
    ax_loss.plot(history["epoch"], history["train_loss"], "o-", label="train")
    val = history.dropna(subset=["val_loss"])
    ax_loss.plot(val["epoch"], val["val_loss"], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss (log scale)", title="loss")
    _log_axis(ax_loss)
    ax_loss.legend()
    ax_dice.plot(val["epoch"], val["val_dice"], "s-", color="C2")
    if len(val):
        best = val.loc[val["val_dice"].idxmax()]
        ax_dice.axhline(best["val_dice"], color="grey", lw=0.8, ls="--")
        ax_dice.text(  # in a corner: never over the curve
            0.98,
            0.04,
            f"best {best['val_dice']:.4f} (epoch {int(best['epoch'])})",
            transform=ax_dice.transAxes,
            ha="right",
            va="bottom",
        )
        lo, hi = ax_dice.get_ylim()
        ax_dice.set_ylim(lo - 0.15 * (hi - lo), min(hi, 1.0 + 0.05 * (hi - lo)))  # Dice <= 1
    ax_dice.set(xlabel="epoch", ylabel="mean Dice", title="validation Dice (Kaggle metric)")
    ax_dice.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(history):
        lo, hi = int(history["epoch"].min()), int(history["epoch"].max())
        ax_loss.set_xlim(lo - 0.5, hi + 0.5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _log_axis(ax: Any) -> None:
    """A log y axis labelled with plain numbers at 1-2-5 (or every integer multiple when the range
    is under a decade), minor ticks unlabelled: one label style, never "10^-1" beside "6x10^-2"."""
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-12) > 10 else tuple(float(i) for i in range(1, 10))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def error_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB image with false positives red, false negatives blue, true positives lightly green."""
    out = image.astype(np.float32).copy()
    truth, pred = truth.astype(bool), pred.astype(bool)
    tints = {(True, True): TP_TINT, (False, True): FP_TINT, (True, False): FN_TINT}
    for (t, p), (colour, alpha) in tints.items():
        sel = (truth == t) & (pred == p)
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(colour, np.float32)
    return out.clip(0, 255).astype(np.uint8)


TP_TINT, FP_TINT, FN_TINT = ((0, 255, 0), 0.25), ((255, 0, 0), 0.8), ((0, 80, 255), 0.8)
ZOOM_EDGE = "yellow"


def error_window(
    errors: np.ndarray, size: int, fallback: np.ndarray | None = None
) -> tuple[int, int, int]:
    """(top, left, side) of the ``size`` x ``size`` window (clipped to the image) holding the most
    ``errors`` pixels; with no error anywhere, the window holding most of ``fallback`` (e.g. the
    true outline) instead. Summed over an integral image: one pass at full resolution."""
    errors = np.asarray(errors, bool)
    if not errors.any() and fallback is not None:
        errors = np.asarray(fallback, bool)
    h, w = errors.shape
    side = int(min(size, h, w))
    integral = cv2.integral(errors.astype(np.uint8))
    sums = (
        integral[side:, side:]
        - integral[:-side, side:]
        - integral[side:, :-side]
        + integral[:-side, :-side]
    )
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left), side


def _outline(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8))).astype(bool)


def _native_panel(
    data: Any, image_id: str, prob: np.ndarray, masks: Any, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The error overlay at the metric's resolution (where 1-2 px outline errors decide Carvana),
    the map of its errors and the truth."""
    truth = masks.get([image_id])[0].numpy().astype(bool)
    h, w = truth.shape
    image = data.load_image(image_id, size=(h, w))
    pred = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) >= threshold * 255
    return error_overlay(image, truth, pred), (truth != pred), truth


def worst_images(
    data: Any,
    per_image: pd.DataFrame,
    probs: dict[str, np.ndarray],
    masks: Any,
    n: int = 6,
    threshold: float = 0.5,
    height: int = 256,
    zoom: int = 128,
) -> Figure:
    """The `n` validation images with the lowest Dice, errors coloured (green TP, red FP, blue
    FN), each beside a zoom: the ``zoom`` x ``zoom`` window with the most errors at the metric's
    resolution, drawn pixel for pixel (a ~440 px overview cannot show 1-2 px outline errors).

    `probs` are uint8 probabilities at the training size; `masks.get([id])` gives the truth at the
    metric's resolution (see dataset.ValidationMasks).
    """
    from matplotlib.patches import Patch, Rectangle

    worst = per_image.sort_values("dice").head(n)
    pairs = min(2, max(1, len(worst)))
    rows = max(1, int(np.ceil(len(worst) / pairs)))
    width = round(height * MASK_SHAPE[1] / MASK_SHAPE[0])
    fig = Figure(figsize=(7.6 * pairs, 3.1 * rows + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, 2 * pairs, width_ratios=[1.5, 1] * pairs))
    axes = axes.reshape(rows * pairs, 2)
    for ax in axes.ravel():
        ax.axis("off")
    for (ax, ax_zoom), row in zip(axes, worst.itertuples(), strict=False):
        overlay, errors, truth = _native_panel(data, row.id, probs[row.id], masks, threshold)
        h, w = errors.shape
        side = max(1, min(zoom, h // 2, w // 2))  # a small image: still a zoom, not all of it
        top, left, side = error_window(errors, side, fallback=_outline(truth))
        ax.imshow(cv2.resize(overlay, (width, height), interpolation=cv2.INTER_AREA))
        s = width / w
        ax.add_patch(
            Rectangle((left * s, top * s), side * s, side * s, fill=False, ec=ZOOM_EDGE, lw=1.5)
        )
        ax.set_title(f"{row.id}  Dice {row.dice:.4f}", fontsize=9)
        crop = errors[top : top + side, left : left + side]
        ax_zoom.imshow(overlay[top : top + side, left : left + side], interpolation="nearest")
        ax_zoom.set_title(f"zoom {side}x{side} px of {h}x{w}: {int(crop.sum())} wrong", fontsize=8)
        for spine in ax_zoom.spines.values():
            spine.set(visible=True, color=ZOOM_EDGE, lw=2)
    legend = [
        Patch(color=np.array(c) / 255, alpha=a, label=label)
        for (c, a), label in (
            (TP_TINT, "true positive (car, predicted car)"),
            (FP_TINT, "false positive"),
            (FN_TINT, "false negative"),
        )
    ]
    legend.append(Patch(fill=False, ec=ZOOM_EDGE, lw=1.5, label="zoom window (most errors)"))
    fig.legend(handles=legend, loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle("worst validation images, each with a zoom at full resolution", fontsize=10)
    return fig


def stage_dice(stages: pd.DataFrame, title: str = "") -> Figure:
    """Best validation Dice of each stage of a member (04_stage_up's table); the value labels sit
    inside the axes (headroom above the highest point, margins at both ends)."""
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    done = stages.dropna(subset=["best_dice"])
    ax.plot(range(len(done)), done["best_dice"], "o-")
    ax.set_xticks(range(len(done)), done["stage_name"], rotation=15)
    for i, d in enumerate(done["best_dice"]):
        ax.annotate(f"{d:.4f}", (i, d), textcoords="offset points", xytext=(0, 7), ha="center")
    ax.margins(x=0.12, y=0.25)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))
    ax.set(xlabel="stage", ylabel="best validation Dice", title=title or "Dice per stage")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
