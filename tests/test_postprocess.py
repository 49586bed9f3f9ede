"""Largest-component clean-up: islands go, the car and its holes stay, Dice counts it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaggle_utils.metrics import full_res_dice
from kaggle_utils.postprocess import keep_largest_component, keep_largest_components


def _car_with_islands() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((120, 180), np.uint8)
    truth[30:90, 40:150] = 1
    truth[50:60, 80:90] = 0  # a hole (a gap between spoiler and boot)
    pred = truth.copy()
    pred[110:118, 0:20] = 1  # the dark floor rim at the frame's corner
    pred[5, 170] = 1  # a single stray pixel
    pred[90, 150] = 1  # touches the car diagonally: 8-connected, so it stays
    return truth, pred


def test_keeps_only_the_largest_component():
    truth, pred = _car_with_islands()
    out = keep_largest_component(pred)
    assert out.dtype == bool
    expected = truth.astype(bool)
    expected[90, 150] = True
    np.testing.assert_array_equal(out, expected)


def test_empty_and_single_component_masks_are_unchanged():
    empty = np.zeros((10, 12), np.uint8)
    assert not keep_largest_component(empty).any()
    one = np.zeros((10, 12), bool)
    one[2:5, 3:9] = True
    np.testing.assert_array_equal(keep_largest_component(one), one)
    with pytest.raises(ValueError, match="shape"):
        keep_largest_component(np.zeros((2, 3, 4), np.uint8))


def test_batches_keep_their_kind_and_shape():
    truth, pred = _car_with_islands()
    batch = np.stack([pred, truth])[:, None]  # (N, 1, H, W)
    out = keep_largest_components(batch)
    assert isinstance(out, np.ndarray) and out.shape == batch.shape
    t = keep_largest_components(torch.from_numpy(batch))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.bool
    np.testing.assert_array_equal(t.numpy(), out)
    assert out[0].sum() == truth.sum() + 1


def test_full_res_dice_scores_after_the_clean_up():
    truth, pred = _car_with_islands()
    probs = torch.from_numpy(pred[None, None].astype(np.float32))
    masks = torch.from_numpy(truth[None])
    raw = float(full_res_dice(probs, masks)[0])
    cleaned = float(full_res_dice(probs, masks, largest_component=True)[0])
    assert raw < cleaned < 1.0  # the islands cost Dice; the touching pixel still does
    tp = truth.sum()
    assert cleaned == pytest.approx(2 * tp / (2 * tp + 1))
