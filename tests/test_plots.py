"""Training figures read right: whole epochs, one label style on the log axis, labels inside the
axes, a legend for every colour, zooms at full resolution, a legend clear of the bars."""

from __future__ import annotations

import cv2
import matplotlib
import numpy as np
import pandas as pd
import pytest

from kaggle_utils import plots
from kaggle_utils.dataset import ValidationMasks
from kaggle_utils.index import train_index
from kaggle_utils.layout import find_data

matplotlib.use("Agg")


def _renderer(fig):
    """Draw an object-API Figure on an Agg canvas: extents in display pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _history(epochs: int = 12, val_every: int = 4) -> pd.DataFrame:
    e = np.arange(1, epochs + 1)
    val = np.where(e % val_every == 0, 0.2 / e, np.nan)
    return pd.DataFrame(
        {"epoch": e, "train_loss": 0.12 / e**0.3, "val_loss": val, "val_dice": 1 - val / 4}
    )


def _visible_ticks(ax, axis: str = "x") -> np.ndarray:
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    return ticks[(ticks >= lo) & (ticks <= hi)]


@pytest.mark.parametrize("history", [_history(), _history(12, 12), _history(3, 1)])
def test_learning_curve_whole_epochs_and_one_log_label_style(history):
    fig = plots.learning_curve(history, title="t")
    fig.canvas.draw()
    ax_loss, ax_dice = fig.axes
    for ax in (ax_loss, ax_dice):
        ticks = _visible_ticks(ax)
        assert len(ticks) >= 1 and np.allclose(ticks, np.round(ticks)), ticks
    assert ax_loss.get_yscale() == "log"
    minor = [t.get_text() for t in ax_loss.get_yticklabels(minor=True)]
    assert all(text == "" for text in minor), minor
    major = [t.get_text() for t in ax_loss.get_yticklabels() if t.get_text()]
    assert major and not any("times" in t or "^" in t for t in major), major
    assert ax_dice.get_ylim()[1] <= 1.01  # Dice cannot exceed 1


def test_stage_dice_labels_stay_inside_the_axes():
    stages = pd.DataFrame(
        {
            "stage_name": ["s1_64x96", "s2_128x192", "s3_192x288"],
            "best_dice": [0.963, 0.9864, 0.9888],
        }
    )
    fig = plots.stage_dice(stages)
    renderer = _renderer(fig)
    ax = fig.axes[0]
    box = ax.get_window_extent()
    labels = [t for t in ax.texts]
    assert len(labels) == 3
    for text in labels:
        ext = text.get_window_extent(renderer)
        assert box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 and ext.y1 <= box.y1


def test_error_window_finds_the_most_errors():
    errors = np.zeros((200, 300), bool)
    errors[10:12, 20:200] = True  # a long thin outline error: 360 px
    errors[150:160, 250:260] = True  # a compact blob: 100 px
    top, left, side = plots.error_window(errors, 64)
    assert side == 64 and errors[top : top + side, left : left + side].sum() == 2 * 64
    assert 0 <= top <= 10 and top + side >= 12
    none = np.zeros((50, 40), bool)
    outline = np.zeros((50, 40), bool)
    outline[45:47, :] = True
    top, left, side = plots.error_window(none, 100, fallback=outline)  # no error: the outline
    assert side == 40 and left == 0 and outline[top : top + side].sum() == outline.sum()


def test_worst_images_legend_and_full_resolution_zooms(small_synthetic):
    data = find_data(small_synthetic)
    ids = list(train_index(data)["id"].iloc[:3])
    size = (32, 48)
    masks = ValidationMasks(data, ids, True, size)
    probs, dice = {}, []
    for image_id in ids:
        truth = data.load_mask(image_id)
        small = cv2.resize(truth.astype(np.float32), size[::-1], interpolation=cv2.INTER_AREA)
        probs[image_id] = (np.roll(small, 1, axis=1) * 255).astype(np.uint8)  # 1 px off
        dice.append(0.9)
    per_image = pd.DataFrame({"id": ids, "dice": dice})
    fig = plots.worst_images(data, per_image, probs, masks, n=3, zoom=64)
    fig.canvas.draw()
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 6  # an overview and a zoom per image
    full = data.load_mask(ids[0]).shape
    zooms = shown[1::2]
    for ax in zooms:
        crop = ax.images[0].get_array()
        assert crop.shape[:2] == (64, 64)  # native pixels, one per image pixel
        assert f"of {full[0]}x{full[1]}" in ax.get_title()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(label.startswith("true positive") for label in labels)
    assert {"false positive", "false negative"} <= set(labels)
    assert any("zoom window" in label for label in labels)
    for ax in shown[::2]:
        assert ax.patches, "the overview marks where the zoom is"


def test_dice_by_angle_legend_clears_the_bars():
    from kaggle_utils.ensemble import plot_dice_by_angle

    rng = np.random.default_rng(0)
    per_image = pd.DataFrame(
        {"angle": np.repeat(np.arange(1, 17), 4), "dice": 0.99 - 0.01 * rng.random(64)}
    )
    fig = plot_dice_by_angle(per_image)
    renderer = _renderer(fig)
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches]
    assert len(bars) == 16
    assert not any(legend.overlaps(b) for b in bars)
    import matplotlib.pyplot as plt

    plt.close(fig)
