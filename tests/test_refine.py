"""Guided upsampling: edges of the photo pull the 0.5 level onto them; linear; real guides help."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kaggle_utils.dataset import resize_mask
from kaggle_utils.imageio import guide_shape
from kaggle_utils.index import train_index
from kaggle_utils.layout import find_data
from kaggle_utils.metrics import full_res_dice
from kaggle_utils.refine import guided_filter, guided_upsample, to_guide


def test_guide_shape_is_what_libjpeg_decodes(real_sample):
    jpg = next((real_sample / "train").glob("*.jpg"))
    for scale, flag in ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4)):
        decoded = cv2.imread(str(jpg), flag)
        assert guide_shape((1280, 1918), scale) == decoded.shape[:2]
    with pytest.raises(ValueError, match="scale 3"):
        guide_shape((1280, 1918), 3)


def test_the_half_level_moves_onto_the_guide_edge():
    """A blurry probability 2 px left of the photo's edge ends on the edge (radius 4)."""
    w = 80
    cols = torch.arange(w, dtype=torch.float32)
    guide = (cols >= 40).float().expand(1, 1, 24, w) * 0.6 + 0.2  # dark | bright at column 40
    probs = torch.sigmoid((37.5 - cols) / 2).expand(1, 1, 24, w)  # car on the left, edge at 38
    out = guided_filter(guide.contiguous(), probs.contiguous(), radius=4, eps=1e-4)[0, 0, 12]
    assert (probs[0, 0, 12] > 0.5).sum() == 38
    assert (out > 0.5).sum() == 40
    flat = guided_filter(torch.full_like(guide, 0.5), probs.contiguous(), radius=4, eps=1e-4)
    assert (flat[0, 0, 12] > 0.5).sum() == 38  # no edge in the guide: only smoothing


def test_linear_in_the_probabilities():
    """The ensemble filters the weighted mean once: that equals the mean of filtered members."""
    torch.manual_seed(0)
    guide = torch.rand(2, 1, 40, 60)
    p, q = torch.rand(2, 1, 10, 15), torch.rand(2, 1, 10, 15)
    both = guided_upsample(0.75 * p + 0.25 * q, guide, radius=2, eps=1e-3)
    sep = 0.75 * guided_upsample(p, guide, 2, 1e-3) + 0.25 * guided_upsample(q, guide, 2, 1e-3)
    inside = (sep > 0) & (sep < 1)  # away from the clip to [0, 1]
    torch.testing.assert_close(both[inside], sep[inside], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="guided_upsample needs"):
        guided_upsample(p, guide[:1])
    with pytest.raises(ValueError, match="differ in shape"):
        guided_filter(guide, torch.rand(2, 1, 40, 61))


def test_real_photos_sharpen_low_resolution_masks(real_sample):
    """A 128x192 mask (hard edges, as a model at that size draws them) upsampled to 1280x1918:
    with the real photo at 1/4 size as guide, Dice beats plain bilinear upsampling."""
    data = find_data(real_sample)
    ids = list(train_index(data)["id"])[::97][:6]
    plain, guided = [], []
    for image_id in ids:
        mask = data.load_mask(image_id)
        small = torch.from_numpy(resize_mask(mask, (128, 192)).astype(np.float32))[None, None]
        small = F.avg_pool2d(small, 3, 1, 1)  # a little blur, as a network's output has
        rgb = data.load_image(image_id, size=guide_shape(mask.shape, 4))
        guide = to_guide(torch.from_numpy(rgb)[None])
        truth = torch.from_numpy(mask)[None]
        plain.append(float(full_res_dice(small, truth)[0]))
        guided.append(float(full_res_dice(guided_upsample(small, guide), truth)[0]))
    assert np.mean(guided) > np.mean(plain) + 5e-4, (plain, guided)


@pytest.mark.parametrize(
    "shape,radius", [((2, 1, 40, 60), 2), ((1, 3, 5, 7), 4), ((1, 1, 1, 9), 1)]
)
def test_cpu_box_filter_equals_border_renormalised_pooling(shape, radius):
    """The CPU path (OpenCV window sums / window counts) is avg_pool2d without padded zeros."""
    from kaggle_utils.refine import _box_filter_cv2, _box_filter_torch, box_filter

    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_box_filter_cv2(x, radius), _box_filter_torch(x, radius))
    assert box_filter(x, radius).shape == x.shape
