"""Kaggle's Dice: per image, full resolution, empty-vs-empty = 1; checked against NumPy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from kaggle_utils.metrics import dice_per_image, full_res_dice


def numpy_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Kaggle's definition for one image of booleans."""
    p, t = pred.astype(bool), truth.astype(bool)
    if p.sum() + t.sum() == 0:
        return 1.0
    return 2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum())


def random_masks(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Blobs of random density, with an empty mask at index 0 and 1."""
    rng = np.random.default_rng(seed)
    masks = (rng.random((n, h, w)) < rng.random((n, 1, 1))).astype(np.uint8)
    masks[:2] = 0
    return masks


def test_dice_per_image_matches_numpy_incl_empty():
    truth = random_masks(8, 24, 36, seed=1)
    probs = np.random.default_rng(2).random((8, 1, 24, 36)).astype(np.float32)
    probs[0] = 0.1  # empty prediction vs empty truth -> 1
    probs[2] = 0.2  # empty prediction vs non-empty truth -> 0
    got = dice_per_image(torch.from_numpy(probs), torch.from_numpy(truth))
    expected = [numpy_dice(probs[i, 0] > 0.5, truth[i]) for i in range(8)]
    assert got.shape == (8,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert got[0] == 1.0 and got[1] == 0.0 and got[2] == 0.0  # [1]: truth empty, pred not
    assert ((got[3:] > 0) & (got[3:] < 1)).all()
    # numpy inputs and another threshold
    got = dice_per_image(probs, truth[:, None], threshold=0.7)
    expected = [numpy_dice(probs[i, 0] > 0.7, truth[i]) for i in range(8)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_full_res_dice_upsamples_then_thresholds():
    rng = np.random.default_rng(3)
    n, h, w, H, W = 5, 20, 30, 160, 240
    small = rng.random((n, 1, h, w)).astype(np.float32)
    small[0] = 0.0  # empty, and its truth is empty too
    truth = (
        np.stack(
            [cv2.resize(small[i, 0], (W, H), interpolation=cv2.INTER_LINEAR) for i in range(n)]
        )
        > 0.45
    ).astype(np.uint8)
    truth[0] = 0
    got = full_res_dice(torch.from_numpy(small), torch.from_numpy(truth), chunk=2)
    # NumPy reference: OpenCV's bilinear (half-pixel centres, as torch align_corners=False)
    expected = [
        numpy_dice(cv2.resize(small[i, 0], (W, H), interpolation=cv2.INTER_LINEAR) > 0.5, truth[i])
        for i in range(n)
    ]
    assert got.shape == (n,)
    assert got[0] == 1.0
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-3)  # a few rounding-edge pixels
    assert all(0.5 < e < 1.0 for e in expected[1:])  # the check is not trivial


def test_full_res_dice_at_carvana_size():
    masks = torch.zeros(2, 1280, 1918, dtype=torch.uint8)
    masks[0, 300:900, 400:1500] = 1
    probs = torch.nn.functional.interpolate(
        masks[:, None].float(), size=(320, 480), mode="bilinear", align_corners=False
    )
    dice = full_res_dice(probs, masks)
    assert dice.shape == (2,)
    assert dice[1] == 1.0  # empty vs empty
    assert dice[0] > 0.99  # a box survives 4x down- and up-sampling almost exactly
    with pytest.raises(ValueError, match="probs"):
        full_res_dice(probs, masks[:1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_gpu():
    truth = torch.from_numpy(random_masks(4, 64, 96)).cuda()
    probs = torch.rand(4, 1, 32, 48, device="cuda")
    assert full_res_dice(probs, truth).device.type == "cuda"
    cpu = full_res_dice(probs.cpu(), truth.cpu())
    torch.testing.assert_close(full_res_dice(probs, truth).cpu(), cpu)
