"""Widgets built from data: drive the controls, check what was drawn (PNG and the arrays behind it)."""

from __future__ import annotations

import cv2
import ipywidgets
import numpy as np
import pytest
import torch

from kaggle_utils import widgets
from kaggle_utils.dataset import CarvanaDataset
from kaggle_utils.index import train_index
from kaggle_utils.layout import find_data
from kaggle_utils.losses import boundary_weights
from kaggle_utils.metrics import dice_per_image

SIZE = (96, 144)


@pytest.fixture(scope="module")
def synth(small_synthetic):
    data = find_data(small_synthetic)
    return data, train_index(data)


def png_array(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.ndim == 3
    return img


def test_mask_overlay_browser_controls_change_the_picture(synth):
    data, index = synth
    v = widgets.mask_overlay_browser(data, index, size=SIZE, width_px=300)
    assert isinstance(v, ipywidgets.VBox)
    assert isinstance(v.image, ipywidgets.Image)
    assert set(v.controls) == {"car", "angle", "opacity", "mode"}
    assert (v.controls["angle"].min, v.controls["angle"].max) == (1, 16)
    car = v.controls["car"].value
    first = v.image.value
    png_array(first)
    assert v.info["id"] == f"{car}_01"
    np.testing.assert_array_equal(v.arrays["image"], data.load_image(f"{car}_01", size=SIZE))

    v.controls["angle"].value = 5
    assert v.info["id"] == f"{car}_05"
    assert v.image.value != first
    assert v.arrays["mask"].any()
    assert f"{car}_05" in v.caption.value

    fill = v.arrays["composite"].copy()
    changed_fill = (fill != v.arrays["image"]).any(axis=2)
    # fill tints (nearly) the whole mask; the outline only its edge
    assert changed_fill.sum() >= 0.9 * v.arrays["mask"].sum()
    v.controls["mode"].value = "outline"
    changed_outline = (v.arrays["composite"] != v.arrays["image"]).any(axis=2)
    assert 0 < changed_outline.sum() < 0.5 * changed_fill.sum()

    v.controls["opacity"].value = 0.0
    np.testing.assert_array_equal(v.arrays["composite"], v.arrays["image"])

    other = [c for c in v.controls["car"].options if c != car][0]
    before = v.image.value
    v.controls["car"].value = other
    assert v.info["id"] == f"{other}_05" and v.image.value != before


def test_mask_overlay_browser_missing_angle_says_so(synth):
    data, index = synth
    car = index["car"].iloc[0]
    v = widgets.mask_overlay_browser(data, index[index["angle"] != 3], size=SIZE)
    v.controls["car"].value = car
    v.controls["angle"].value = 3
    assert "no such image" in v.caption.value
    with pytest.raises(ValueError, match="index is empty"):
        widgets.mask_overlay_browser(data, index.iloc[:0])


def test_boundary_weight_viewer_kernel_widens_band_exactly_as_the_loss(synth):
    data, index = synth
    v = widgets.boundary_weight_viewer(data, index.iloc[:3], size=SIZE, width_px=300)
    assert set(v.controls) == {"id", "kernel", "weight"}
    image_id = v.controls["id"].value
    bands = {}
    pngs = {}
    for k in (3, 7, 15):
        v.controls["kernel"].value = k
        bands[k] = int(v.arrays["band"].sum())
        pngs[k] = v.image.value
        assert v.info["band_pixels"] == bands[k]
        # the very weights the loss computes from the dataset's mask at that size
        ds = CarvanaDataset(data, index.iloc[:1], size=SIZE, transform=None)
        mask = ds[0]["mask"]
        expect = boundary_weights(mask[None], kernel=k, boundary_weight=2.0)[0, 0].numpy()
        np.testing.assert_allclose(v.arrays["weights"], expect, rtol=1e-6)
    assert image_id == index["id"].iloc[0]
    assert 0 < bands[3] < bands[7] < bands[15]
    assert len({pngs[3], pngs[7], pngs[15]}) == 3

    # the weight value scales the band's weight relative to the rest
    v.controls["weight"].value = 5.0
    w = v.arrays["weights"]
    assert w.max() / w.min() == pytest.approx(6.0, rel=1e-5)
    assert v.arrays["band"].sum() == bands[15]
    v.controls["weight"].value = 0.0
    assert np.allclose(v.arrays["weights"], 1.0) and v.arrays["band"].sum() == 0

    before = v.image.value
    v.controls["weight"].value = 2.0
    v.controls["id"].value = index["id"].iloc[2]
    assert v.image.value != before and index["id"].iloc[2] in v.caption.value


def _disk_case(h=60, w=80, size_prob=None):
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    mask = (r < 18).astype(np.uint8)
    prob = np.clip(1.0 - r / 36.0, 0, 1).astype(np.float32)  # 0.5 at r=18: the true edge
    if size_prob:
        prob = cv2.resize(prob, size_prob[::-1], interpolation=cv2.INTER_AREA)
    image = np.full((h, w, 3), 128, np.uint8)
    return image, mask, prob


def test_prediction_error_viewer_threshold_updates_dice_and_colours():
    image, mask, prob = _disk_case()
    empty = np.zeros_like(mask)
    v = widgets.prediction_error_viewer(
        [image, image], [mask, empty], [prob, np.zeros_like(prob)], ids=["disk", "empty"]
    )
    assert set(v.controls) == {"id", "threshold", "opacity"}
    dice = {}
    for t in (0.2, 0.5, 0.8):
        v.controls["threshold"].value = t
        dice[t] = v.info["dice"]
        ref = dice_per_image(torch.from_numpy(prob)[None], torch.from_numpy(mask)[None], t)
        assert dice[t] == pytest.approx(float(ref[0]), abs=1e-6)
        assert f"Dice {dice[t]:.5f}" in v.caption.value
        comp = v.arrays["composite"]
        # each class drawn in its own colour: FP pixels lean red, FN blue, TP green
        if v.info["fp"]:
            px = comp[v.arrays["fp"]].astype(int)
            assert (px[:, 0] > px[:, 1]).all() and (px[:, 0] > px[:, 2]).all()
        if v.info["fn"]:
            px = comp[v.arrays["fn"]].astype(int)
            assert (px[:, 2] > px[:, 0]).all()
        px = comp[v.arrays["tp"]].astype(int)
        assert (px[:, 1] > px[:, 0]).all() and (px[:, 1] > px[:, 2]).all()
    assert dice[0.5] > dice[0.2] and dice[0.5] > dice[0.8]

    before = v.image.value
    v.controls["id"].value = 1  # empty prediction of an empty mask: Dice 1 (Kaggle's rule)
    assert v.info["dice"] == 1.0 and v.image.value != before


def test_prediction_error_viewer_resizes_low_res_probs_and_checks_input():
    image, mask, prob = _disk_case(size_prob=(30, 40))
    v = widgets.prediction_error_viewer([image], [mask], [prob])
    assert v.arrays["prob"].shape == mask.shape
    assert v.info["dice"] > 0.9
    with pytest.raises(ValueError, match="lengths differ"):
        widgets.prediction_error_viewer([image], [mask], [prob, prob])
    with pytest.raises(ValueError, match="probs of 0 must be a 2-D map in \\[0, 1\\]"):
        widgets.prediction_error_viewer([image], [mask], [prob * 3])


def test_boundary_weight_viewer_says_what_the_two_levels_are(synth):
    """A two-level map: a two-entry legend naming each level's raw weight and the weight after the
    loss's mean-1 scaling (the number the slider shows is the raw one), no continuous colour bar."""
    data, index = synth
    v = widgets.boundary_weight_viewer(data, index.iloc[:1], size=SIZE, boundary_weight=5.0)
    w, band = v.arrays["weights"], v.arrays["band"]
    assert v.info["colorbars"] == 0
    assert v.info["raw_band"] == 6.0 and v.info["raw_rest"] == 1.0
    assert v.info["band_weight"] == pytest.approx(float(w.max()), rel=1e-6)
    assert v.info["rest_weight"] == pytest.approx(float(w.min()), rel=1e-6)
    assert v.info["band_weight"] / v.info["rest_weight"] == pytest.approx(6.0, rel=1e-5)
    band_label, rest_label = v.info["legend"]
    assert band_label.startswith("boundary band: weight 6 ")
    assert f"-> {w[band].mean():.2f} after scaling" in band_label
    assert rest_label.startswith("interior and background: weight 1\n")
    assert f"-> {w[~band].mean():.2f}" in rest_label
