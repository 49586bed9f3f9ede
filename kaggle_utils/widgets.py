"""Interactive ipywidgets 8 viewers that make the data, the loss weights and predictions visible.

Each builder takes data and returns a ``Viewer`` (an ``ipywidgets.VBox``): its controls are in
``.controls``, the rendered picture is PNG bytes in ``.image.value`` (an ``ipywidgets.Image``) and the
arrays behind the picture are in ``.arrays``, so tests drive the controls and check what was drawn.
Pictures are drawn with matplotlib's object API (no pyplot state, nothing shown twice in notebooks).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable, Sequence

import cv2
import ipywidgets as widgets
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kaggle_utils.eda import N_ANGLES, _resize_mask, overlay_mask

TP_COLOR = (0, 200, 0)
FP_COLOR = (255, 40, 40)
FN_COLOR = (40, 120, 255)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _picture(rgb: np.ndarray, title: str, width_px: int = 640) -> bytes:
    """PNG of an RGB array at ``width_px`` wide, with a title in its top-left corner."""
    h, w = rgb.shape[:2]
    fig = Figure(figsize=(width_px / 100, width_px / 100 * h / w))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    ax.text(
        0.01,
        0.98,
        title,
        transform=ax.transAxes,
        va="top",
        fontsize=9,
        bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"},
    )
    return figure_png(fig)


class _Cache:
    """A small least-recently-used cache so moving a slider does not re-decode a JPEG."""

    def __init__(self, load: Callable, size: int = 32):
        self._load, self._size, self._items = load, size, OrderedDict()

    def __call__(self, key):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._load(key)
        self._items[key] = value
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return value


class Viewer(widgets.VBox):
    """Controls above a rendered PNG and a caption; re-renders whenever a control changes.

    ``controls``: name -> widget; ``image``: ``ipywidgets.Image`` holding the PNG; ``caption``:
    ``ipywidgets.HTML``; ``arrays``: the numpy arrays of the last render; ``info``: its numbers
    (id, Dice, band pixels, ...); ``renders``: render count.
    """

    def __init__(
        self,
        controls: dict[str, widgets.Widget],
        draw: Callable[[Viewer], bytes],
        width_px: int = 640,
    ):
        self.controls = controls
        # shown at its own pixel size (a flex box would otherwise stretch it to the cell width)
        self.image = widgets.Image(
            format="png",
            layout=widgets.Layout(width=f"{width_px}px", max_width="100%", height="auto"),
        )
        self.caption = widgets.HTML()
        self.arrays: dict[str, np.ndarray] = {}
        self.info: dict[str, object] = {}
        self.renders = 0
        self._draw = draw
        super().__init__(
            [
                widgets.HBox(list(controls.values()), layout={"flex_flow": "row wrap"}),
                self.image,
                self.caption,
            ]
        )
        for control in controls.values():
            control.observe(self._changed, names="value")
        self.render()

    def _changed(self, _change) -> None:
        self.render()

    def setting(self, name: str):
        """Current value of the control ``name``."""
        return self.controls[name].value

    def render(self) -> None:
        """Redraw from the current control values."""
        try:
            png = self._draw(self)
        except Exception as err:  # show the error in the widget instead of a silent dead view
            self.caption.value = f"<b style='color:#c00'>{type(err).__name__}: {err}</b>"
            raise
        self.image.value = png
        self.renders += 1


# ----------------------------------------------------------------------------- mask overlay browser
def mask_overlay_browser(
    data, index: pd.DataFrame, size: tuple[int, int] = (320, 480), width_px: int = 640
) -> Viewer:
    """Browse train images with their masks: car dropdown, angle slider 1..16, opacity, fill/outline."""
    if len(index) == 0:
        raise ValueError("mask_overlay_browser: the index is empty")
    ids = set(index["id"])
    meta = index.set_index("id")
    cars = sorted(index["car"].unique())
    load = _Cache(
        lambda image_id: (
            data.load_image(image_id, size=size),
            _resize_mask(data.load_mask(image_id), size),
        )
    )
    controls = {
        "car": widgets.Dropdown(options=cars, value=cars[0], description="car"),
        "angle": widgets.IntSlider(value=1, min=1, max=N_ANGLES, description="angle"),
        "opacity": widgets.FloatSlider(
            value=0.4, min=0.0, max=1.0, step=0.05, description="opacity"
        ),
        "mode": widgets.ToggleButtons(
            options=["fill", "outline"], value="fill", description="mask"
        ),
    }

    def draw(v: Viewer) -> bytes:
        car, angle = v.setting("car"), v.setting("angle")
        image_id = f"{car}_{angle:02d}"
        if image_id not in ids:
            blank = np.full((*size, 3), 235, np.uint8)
            v.arrays = {"composite": blank}
            v.caption.value = f"<b>{image_id}</b>: no such image in this sample"
            return _picture(blank, f"{image_id}: missing", width_px)
        image, mask = load(image_id)
        composite = overlay_mask(image, mask, alpha=v.setting("opacity"), mode=v.setting("mode"))
        v.arrays = {"image": image, "mask": mask, "composite": composite}
        row = meta.loc[image_id]
        about = " ".join(
            str(row[c]) for c in ("year", "make", "model") if c in row and pd.notna(row[c])
        )
        v.info = {"id": image_id, "coverage": float(mask.mean())}
        v.caption.value = f"<b>{image_id}</b> {about} &middot; car fraction {mask.mean():.3f}"
        return _picture(composite, image_id, width_px)

    return Viewer(controls, draw, width_px)


# --------------------------------------------------------------------------- boundary weight viewer
BAND_COLOR = (1.0, 0.55, 0.0)  # the boundary band
REST_COLOR = (0.25, 0.45, 0.85)  # every other pixel (car interior and background alike)


def _weight_levels(w: np.ndarray, band: np.ndarray, boundary_weight: float) -> dict[str, float]:
    """The map's two levels, raw (1 and 1 + boundary_weight) and as the loss uses them: scaled so
    each image's weights average 1 (`losses.boundary_weights`)."""
    rest = float(w[~band].mean()) if (~band).any() else float(w.mean())
    return {
        "raw_band": 1.0 + boundary_weight,
        "raw_rest": 1.0,
        "band_weight": float(w[band].mean()) if band.any() else rest,
        "rest_weight": rest,
    }


def _weight_figure(
    rgb: np.ndarray, band: np.ndarray, levels: dict[str, float], name: str, k: int, width_px: int
) -> Figure:
    """The two-level weight map over the grey image, with a legend naming each level's raw and
    normalised weight (a continuous colour bar would suggest levels that do not exist)."""
    from matplotlib.patches import Patch

    h, wd = rgb.shape[:2]
    fig = Figure(figsize=(width_px / 100, width_px / 100 * h / wd + 1.3), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(rgb.mean(axis=2), cmap="gray", vmin=0, vmax=255)
    tint = np.zeros((h, wd, 4), np.float32)
    tint[~band] = (*REST_COLOR, 0.25)
    tint[band] = (*BAND_COLOR, 0.85)
    ax.imshow(tint, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(
        f"{name} at {h}x{wd}, kernel {k} px\nloss weight per pixel, scaled to mean 1 per image",
        fontsize=9,
    )
    handles = [
        Patch(
            color=BAND_COLOR,
            label=f"boundary band: weight {levels['raw_band']:g} "
            f"(1 + boundary weight)\n    -> {levels['band_weight']:.2f} after scaling",
        ),
        Patch(
            color=REST_COLOR,
            alpha=0.4,
            label=f"interior and background: weight 1\n    -> {levels['rest_weight']:.2f} after scaling",
        ),
    ]
    ax.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8, frameon=False
    )
    return fig


def boundary_weight_viewer(
    data,
    index: pd.DataFrame,
    size: tuple[int, int] = (640, 960),
    boundary_weight: float = 2.0,
    width_px: int = 640,
) -> Viewer:
    """The loss's per-pixel weights over the image: two levels (band, rest), raw and scaled.

    The mask comes from ``CarvanaDataset`` at the training ``size`` and the weights from
    ``losses.boundary_weights`` on that tensor, i.e. exactly what the loss computes for this image.
    Controls: image picker, pooling-kernel slider (odd sizes), boundary weight value.
    """
    import torch

    from kaggle_utils.dataset import IMAGENET_MEAN, IMAGENET_STD, CarvanaDataset
    from kaggle_utils.losses import boundary_weights, kernel_for_height

    if len(index) == 0:
        raise ValueError("boundary_weight_viewer: the index is empty")
    index = index.reset_index(drop=True)
    dataset = CarvanaDataset(data, index, size=size, split="train", transform=None, with_mask=True)
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1)
    row_of = {image_id: i for i, image_id in enumerate(index["id"])}

    def load_item(image_id: str):
        item = dataset[row_of[image_id]]
        img = item["image"].numpy() * std + mean
        rgb = np.clip(img.transpose(1, 2, 0) * 255, 0, 255).astype(np.uint8)
        return rgb, item["mask"]

    load = _Cache(load_item)
    default_k = int(kernel_for_height(size[0]))
    default_k += 1 - default_k % 2
    controls = {
        "id": widgets.Dropdown(options=list(index["id"]), description="image"),
        "kernel": widgets.IntSlider(
            value=default_k,
            min=3,
            max=max(4 * default_k + 1, 31),
            step=2,
            description="kernel",
            continuous_update=False,  # a render costs a pooling pass: redraw on release
        ),
        "weight": widgets.FloatSlider(
            value=boundary_weight,
            min=0.0,
            max=10.0,
            step=0.5,
            description="weight",
            continuous_update=False,
        ),
    }

    def draw(v: Viewer) -> bytes:
        rgb, mask = load(v.setting("id"))
        k, bw = int(v.setting("kernel")), float(v.setting("weight"))
        with torch.no_grad():
            weights = boundary_weights(mask[None].float(), kernel=k, boundary_weight=bw)
        w = weights[0, 0].numpy().astype(np.float32)
        band = w > w.min() + 1e-6 if w.max() - w.min() > 1e-6 else np.zeros(w.shape, bool)
        levels = _weight_levels(w, band, bw)
        v.arrays = {"image": rgb, "mask": mask[0].numpy(), "weights": w, "band": band}
        v.info = {"kernel": k, "weight": bw, "band_pixels": int(band.sum()), **levels}
        v.caption.value = (
            f"<b>{v.setting('id')}</b> at training size {rgb.shape[0]}x{rgb.shape[1]}: kernel {k} "
            f"px, boundary weight {bw}: band {band.sum():,} px ({band.mean():.2%}); weights "
            f"{w.min():.3f}..{w.max():.3f} (mean {w.mean():.3f})"
        )
        fig = _weight_figure(rgb, band, levels, f"{v.setting('id')}", k, width_px)
        v.info["legend"] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        v.info["colorbars"] = len(fig.axes) - 1  # none: two levels need a legend, not a scale
        return figure_png(fig)

    return Viewer(controls, draw, width_px)


# ------------------------------------------------------------------------- prediction error viewer
def _as_list(arrays, name: str) -> list[np.ndarray]:
    items = [np.asarray(a) for a in arrays]
    if not items:
        raise ValueError(f"prediction_error_viewer: no {name}")
    return items


def error_map(prob: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """TP / FP / FN boolean maps of a probability map against a {0,1} mask at ``threshold``."""
    pred = prob > threshold
    truth = mask > 0
    return {"tp": pred & truth, "fp": pred & ~truth, "fn": ~pred & truth}


def dice_from_errors(tp: int, fp: int, fn: int) -> float:
    """Dice = 2TP / (2TP + FP + FN); an empty prediction of an empty mask scores 1 (Kaggle's rule)."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def prediction_error_viewer(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    ids: Sequence[str] | None = None,
    threshold: float = 0.5,
    width_px: int = 640,
) -> Viewer:
    """Predictions against the truth: TP green, FP red, FN blue; threshold slider; live Dice.

    ``images`` RGB uint8, ``masks`` {0,1} (the size Dice is scored at), ``probs`` in [0, 1] at any
    size (resized bilinearly to the mask, as the full-resolution metric does).
    """
    images, masks, probs = (
        _as_list(images, "images"),
        _as_list(masks, "masks"),
        _as_list(probs, "probs"),
    )
    ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
    if not len(images) == len(masks) == len(probs) == len(ids):
        raise ValueError(
            f"prediction_error_viewer: lengths differ: {len(images)} images, {len(masks)} masks, "
            f"{len(probs)} probs, {len(ids)} ids"
        )
    for name, p in zip(ids, probs, strict=True):
        if p.ndim != 2 or np.nanmin(p) < 0 or np.nanmax(p) > 1:
            raise ValueError(
                f"prediction_error_viewer: probs of {name} must be a 2-D map in [0, 1]"
            )

    def prepared(i: int):
        mask = (masks[i] > 0).astype(np.uint8)
        h, w = mask.shape
        prob = probs[i].astype(np.float32)
        if prob.shape != (h, w):
            prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
        image = images[i]
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        return image, mask, prob

    load = _Cache(prepared, size=8)
    controls = {
        "id": widgets.Dropdown(
            options=[(name, i) for i, name in enumerate(ids)], value=0, description="image"
        ),
        "threshold": widgets.FloatSlider(
            value=threshold, min=0.01, max=0.99, step=0.01, description="threshold"
        ),
        "opacity": widgets.FloatSlider(
            value=0.6, min=0.0, max=1.0, step=0.05, description="opacity"
        ),
    }

    def draw(v: Viewer) -> bytes:
        i = v.setting("id")
        image, mask, prob = load(i)
        t = float(v.setting("threshold"))
        maps = error_map(prob, mask, t)
        out = image.astype(np.float32).copy()
        a = float(v.setting("opacity"))
        for key, color in (("tp", TP_COLOR), ("fp", FP_COLOR), ("fn", FN_COLOR)):
            m = maps[key]
            out[m] = (1 - a) * out[m] + a * np.asarray(color, np.float32)
        composite = np.clip(out, 0, 255).astype(np.uint8)
        counts = {k: int(m.sum()) for k, m in maps.items()}
        dice = dice_from_errors(counts["tp"], counts["fp"], counts["fn"])
        v.arrays = {"composite": composite, "prob": prob, "mask": mask, **maps}
        v.info = {"id": ids[i], "threshold": t, "dice": dice, **counts}
        v.caption.value = (
            f"<b>{ids[i]}</b> threshold {t:.2f}: <b>Dice {dice:.5f}</b> &middot; "
            f"<span style='color:rgb{TP_COLOR}'>TP {counts['tp']:,}</span> "
            f"<span style='color:rgb{FP_COLOR}'>FP {counts['fp']:,}</span> "
            f"<span style='color:rgb{FN_COLOR}'>FN {counts['fn']:,}</span>"
        )
        return _picture(composite, f"{ids[i]}  t={t:.2f}  Dice {dice:.5f}", width_px)

    return Viewer(controls, draw, width_px)


# -------------------------------------------------------------------------- corrected mask viewer
ADDED_COLOR = (0, 200, 0)
REMOVED_COLOR = (255, 40, 40)


def _zoom_box(changed: np.ndarray, pad: int = 48) -> tuple[slice, slice]:
    """Rows and columns around the changed pixels (the whole frame when nothing changed)."""
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    if rows.size == 0:
        return slice(None), slice(None)
    h, w = changed.shape
    return (
        slice(max(0, rows[0] - pad), min(h, rows[-1] + pad + 1)),
        slice(max(0, cols[0] - pad), min(w, cols[-1] + pad + 1)),
    )


def _shrink(a: np.ndarray, size: tuple[int, int], any_pixel: bool) -> np.ndarray:
    """Resize to ``size``: an RGB photo by area; a change map so that one changed pixel stays
    visible (any change in the cell), a mask by its majority."""
    if a.shape[:2] == tuple(size):
        return a
    if a.ndim == 3:
        return cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    area = cv2.resize(a.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return area > 0 if any_pixel else area >= 0.5


def corrected_mask_viewer(
    data, corrections, size: tuple[int, int] = (320, 480), width_px: int = 640
) -> Viewer:
    """The competition's mask against its correction, per corrected id: the difference on the
    photo (pixels added green, removed red, the kept car faint), or the old or the new mask;
    ``zoom`` crops the full-resolution frame to the changed pixels (a fixed antenna is a few
    pixels wide: invisible in the whole frame at 320x480)."""
    from kaggle_utils.corrections import apply_corrections

    if len(corrections) == 0:
        raise ValueError("corrected_mask_viewer: the corrections hold no masks")
    original = apply_corrections(data, None)

    def load_full(image_id: str):
        old = original.load_mask(image_id).astype(bool)
        new = corrections.mask(image_id).astype(bool)
        return data.load_image(image_id), old, new

    load = _Cache(load_full, size=4)
    controls = {
        "id": widgets.Dropdown(options=corrections.ids, description="image"),
        "show": widgets.ToggleButtons(options=["difference", "old", "new"], description="show"),
        "frame": widgets.ToggleButtons(options=["whole", "zoom"], description="frame"),
        "opacity": widgets.FloatSlider(
            value=0.6, min=0.0, max=1.0, step=0.05, description="opacity"
        ),
    }

    def draw(v: Viewer) -> bytes:
        image_id = v.setting("id")
        image, old, new = load(image_id)
        added, removed = new & ~old, old & ~new
        box = _zoom_box(added | removed) if v.setting("frame") == "zoom" else (slice(None),) * 2
        image, old, new, added, removed = (a[box] for a in (image, old, new, added, removed))
        out = (size[0], size[1]) if v.setting("frame") == "whole" else image.shape[:2]
        image = _shrink(image, out, False)
        a, show = float(v.setting("opacity")), v.setting("show")
        if show == "difference":
            composite = overlay_mask(image, _shrink(old & new, out, False), alpha=a * 0.3)
            composite = overlay_mask(composite, _shrink(added, out, True), a, color=ADDED_COLOR)
            composite = overlay_mask(composite, _shrink(removed, out, True), a, color=REMOVED_COLOR)
        else:
            composite = overlay_mask(image, _shrink(old if show == "old" else new, out, False), a)
        n_add, n_rem = int(added.sum()), int(removed.sum())
        v.arrays = {
            "composite": composite,
            "old": old,
            "new": new,
            "added": added,
            "removed": removed,
        }
        v.info = {"id": image_id, "added": n_add, "removed": n_rem}
        v.caption.value = (
            f"<b>{image_id}</b> corrected: <span style='color:rgb{ADDED_COLOR}'>+{n_add:,} px"
            f"</span> <span style='color:rgb{REMOVED_COLOR}'>-{n_rem:,} px</span>"
        )
        return _picture(composite, f"{image_id}  {show}", width_px)

    return Viewer(controls, draw, width_px)
