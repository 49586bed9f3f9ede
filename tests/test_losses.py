"""Boundary weights on hand-made masks, kernel schedule, the combo loss and its spec errors."""

from __future__ import annotations

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from kaggle_utils.losses import (
    DEFAULT_SPEC,
    LOSS_OPTIONS,
    LOSS_TERMS,
    LossConfig,
    boundary_weights,
    build_loss,
    kernel_for_height,
)


def reference_boundary(mask: np.ndarray, k: int) -> np.ndarray:
    """Straightforward: mean of the mask over the k x k window clipped to the image."""
    h, w = mask.shape
    r = k // 2
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            window = mask[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            out[y, x] = 0.01 < window.mean() < 0.99
    return out


def square(h: int = 64, w: int = 80, top: int = 20, left: int = 24, side: int = 24) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[top : top + side, left : left + side] = 1
    return mask


@pytest.mark.parametrize("k", [5, 11, 21])
def test_boundary_weights_on_a_square(k):
    mask = square()
    weights = boundary_weights(mask, kernel=k)
    assert isinstance(weights, np.ndarray) and weights.shape == mask.shape
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights.sum(), mask.size, rtol=1e-5)
    band = weights > 1
    np.testing.assert_array_equal(band, reference_boundary(mask, k))
    # along the middle row the band is k-1 wide at each edge: k//2 outside, k//2 inside
    row = band[32]
    cols = np.flatnonzero(row)
    r = k // 2
    expected = list(range(24 - r, 24 + r)) + list(range(47 - r + 1, 47 + r + 1))
    assert sorted(set(cols)) == sorted(set(expected))
    # two values only: 3c on the band, c elsewhere (boundary_weight 2), renormalised
    values = np.unique(weights.round(5))
    assert len(values) == 2
    np.testing.assert_allclose(values[1] / values[0], 3.0, rtol=1e-4)


def test_boundary_weights_torch_batch_and_border():
    masks = torch.zeros(3, 1, 48, 64)
    masks[0, 0, 10:30, 20:40] = 1
    masks[2, 0, :, :32] = 1  # touches three image borders: only its inner edge is boundary
    weights = boundary_weights(masks, kernel=7, boundary_weight=4.0)
    assert isinstance(weights, torch.Tensor) and weights.shape == masks.shape
    torch.testing.assert_close(weights.sum(dim=(1, 2, 3)), torch.full((3,), 48.0 * 64))
    torch.testing.assert_close(weights[1], torch.ones(1, 48, 64))  # empty mask: uniform
    band = (weights[2, 0] > 1).numpy()
    assert np.array_equal(np.flatnonzero(band.any(axis=0)), np.arange(29, 35))
    assert band[:, 29:35].all()  # the inner edge's band spans the full height; no band at borders
    values = torch.unique(weights[0].round(decimals=5))
    torch.testing.assert_close(values[1] / values[0], torch.tensor(5.0), rtol=1e-4, atol=0)
    np.testing.assert_array_equal(
        (weights[0, 0] > 1).numpy(), reference_boundary(masks[0, 0].numpy(), 7)
    )


def test_boundary_weights_default_kernel_follows_height():
    mask = square(128, 160, 40, 50, 48)
    np.testing.assert_array_equal(boundary_weights(mask), boundary_weights(mask, kernel=11))
    with pytest.raises(ValueError, match="odd"):
        boundary_weights(mask, kernel=10)
    with pytest.raises(ValueError, match="shape"):
        boundary_weights(torch.zeros(2, 3, 8, 8))


def test_kernel_for_height():
    assert [kernel_for_height(h) for h in (128, 256, 384, 512, 1024, 1280)] == [
        11,
        21,
        21,
        21,
        41,
        51,
    ]
    heights = range(16, 2049, 16)
    kernels = [kernel_for_height(h) for h in heights]
    assert all(k % 2 == 1 and k >= 3 for k in kernels)
    assert kernels == sorted(kernels)  # grows with the image
    assert kernel_for_height(768) == 31 and kernel_for_height(1152) in (45, 47)
    with pytest.raises(ValueError):
        kernel_for_height(0)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(2, 1, 32, 48)
    target[0, :, 8:24, 10:30] = 1
    target[1, :, 4:12, 30:44] = 1
    logits = torch.randn(2, 1, 32, 48, generator=g)
    return logits, target


def test_bce_term_is_boundary_weighted_bce():
    logits, target = _batch()
    loss = build_loss({"bce": 1.0, "boundary_weight": 2.0, "kernel": 5})(logits, target)
    w = boundary_weights(target, 5, 2.0)
    expected = (w * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).mean()
    torch.testing.assert_close(loss, expected)
    plain = build_loss({"bce": 1.0, "boundary_weight": 0})(logits, target)
    torch.testing.assert_close(plain, F.binary_cross_entropy_with_logits(logits, target))


def test_combo_is_the_weighted_sum_of_smp_terms():
    logits, target = _batch()
    spec = {
        "bce": 0.5,
        "dice": 1.0,
        "jaccard": 0.25,
        "lovasz": 0.5,
        "focal": 2.0,
        "boundary_weight": 0,
    }
    loss = build_loss(spec)(logits, target)
    expected = (
        0.5 * F.binary_cross_entropy_with_logits(logits, target)
        + 1.0 * smp.losses.DiceLoss("binary")(logits, target)
        + 0.25 * smp.losses.JaccardLoss("binary")(logits, target)
        + 0.5 * smp.losses.LovaszLoss("binary")(logits, target)
        + 2.0 * smp.losses.FocalLoss("binary")(logits, target)
    )
    torch.testing.assert_close(loss, expected)
    # naming no term means bce + dice
    default = build_loss({"boundary_weight": 0})(logits, target)
    torch.testing.assert_close(
        default,
        F.binary_cross_entropy_with_logits(logits, target)
        + smp.losses.DiceLoss("binary")(logits, target),
    )


def test_weighted_dice_equals_smp_dice_with_uniform_weights():
    logits, target = _batch()
    unweighted = build_loss({"dice": 1.0, "weighted_dice": True, "boundary_weight": 0})
    torch.testing.assert_close(
        unweighted(logits, target), smp.losses.DiceLoss("binary")(logits, target)
    )
    weighted = build_loss({"dice": 1.0, "weighted_dice": True, "kernel": 5})(logits, target)
    assert not torch.isclose(weighted, unweighted(logits, target))


def test_aux_outputs_are_weighted():
    logits, target = _batch()
    aux = [torch.randn_like(logits), torch.randn_like(logits)]
    spec = {"bce": 1.0, "dice": 1.0, "kernel": 5}
    main = build_loss(spec)(logits, target)
    single = build_loss(spec).single
    with_aux = build_loss({**spec, "aux_weight": 0.4})((logits, aux), target)
    expected = main + 0.4 * (single(aux[0], target) + single(aux[1], target)) / 2
    torch.testing.assert_close(with_aux, expected)
    torch.testing.assert_close(build_loss({**spec, "aux_weight": 0})((logits, aux), target), main)


def test_loss_gradients_and_autocast_inputs():
    logits, target = _batch()
    logits = logits.to(torch.bfloat16).requires_grad_()
    loss = build_loss({"bce": 1.0, "dice": 1.0, "lovasz": 1.0})(
        logits, target[:, 0]
    )  # (N,H,W) target
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(logits.grad.float()).all() and logits.grad.abs().sum() > 0


def test_bad_loss_spec_names_the_key():
    with pytest.raises(ValueError, match=r"unknown key 'dise' \(did you mean 'dice'\?\)") as err:
        build_loss({"bce": 1.0, "dise": 1.0})
    assert all(key in str(err.value) for key in (*LOSS_TERMS, *LOSS_OPTIONS))  # allowed keys
    with pytest.raises(ValueError, match="'lovasz': Input should be greater than or equal to 0"):
        build_loss({"lovasz": -1})
    with pytest.raises(ValueError, match="'bce': Input should be a valid number"):
        build_loss({"bce": "1.0"})  # a number, not a string that looks like one
    for kernel in (4, 0, 5.0):
        with pytest.raises(ValueError, match="'kernel'"):
            build_loss({"kernel": kernel})
    with pytest.raises(ValueError, match="weight 0"):
        build_loss({"bce": 0, "dice": 0})
    with pytest.raises(ValueError, match="must be a mapping"):
        build_loss(["bce"])
    with pytest.raises(ValueError, match="differ"):
        build_loss({})(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 16, 16))


def test_spec_semantics_named_terms_only():
    """No term named -> bce + dice; any named -> only those; null weights count as 0."""
    assert build_loss({}).weights == {
        "bce": 1.0,
        "dice": 1.0,
        "jaccard": 0.0,
        "lovasz": 0.0,
        "focal": 0.0,
    }
    assert build_loss(None).weights == build_loss({"kernel": 5}).weights == build_loss({}).weights
    assert list(build_loss({"lovasz": 0.5}).terms) == ["lovasz"]
    assert list(build_loss({"dice": 1, "bce": None, "focal": 1}).terms) == ["dice", "focal"]
    assert build_loss({"kernel": None, "boundary_weight": None}).boundary_weight == 0.0
    assert DEFAULT_SPEC["bce"] == 1.0 and DEFAULT_SPEC["jaccard"] == 0.0


def test_registry_builds_each_term_and_the_schema_follows_it():
    options = LossConfig.from_spec({}, "loss").options()
    for name, term in LOSS_TERMS.items():
        assert isinstance(term.build(options), torch.nn.Module), name
        assert name in LossConfig.model_fields
    assert set(LOSS_OPTIONS) <= set(LossConfig.model_fields)
    config = LossConfig.from_spec({"dice": 2, "kernel": 7}, "loss")
    assert config.spec() == {"dice": 2, "kernel": 7}  # as written: what build_loss receives
    assert build_loss(config).weights == build_loss(config.spec()).weights  # instances work too
    assert config.weights()["dice"] == 2.0 and config.options()["kernel"] == 7
