"""Augmentations from a parameter dict: flips, shift/scale, colour; never vertical flips."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from kaggle_utils.augment import ALLOWED, build_augmentations


def _scene(h: int = 64, w: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel is the mask (so geometry can be checked), asymmetric."""
    mask = np.zeros((h, w), np.uint8)
    mask[20:50, 10:40] = 1
    mask[30:45, 40:70] = 1
    image = np.full((h, w, 3), 90, np.uint8)
    image[..., 0] = mask * 255
    image[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    return image, mask


def _types(compose: A.Compose) -> list[type]:
    return [type(t) for t in compose.transforms]


def test_defaults_flip_shift_scale_colour_and_no_vertical_flip():
    aug = build_augmentations(None)
    assert _types(aug) == [A.HorizontalFlip, A.Affine, A.ColorJitter]
    assert _types(build_augmentations({})) == _types(aug)
    assert not any(isinstance(t, A.VerticalFlip) for t in aug.transforms)


@pytest.mark.parametrize("key", ["vflip", "rotate90", "hflp"])
def test_unknown_key_is_named_with_allowed_keys(key):
    with pytest.raises(ValueError, match=key) as err:
        build_augmentations({key: 0.5})
    for allowed in ALLOWED:
        assert allowed in str(err.value)
    with pytest.raises(ValueError, match=key):  # validated for validation transforms too
        build_augmentations({key: 0.5}, train=False)


def test_bad_option_and_probability():
    with pytest.raises(ValueError, match="shear"):
        build_augmentations({"shift_scale": {"shear": 3}})
    with pytest.raises(ValueError, match="p=1.5"):
        build_augmentations({"hflip": 1.5})


def test_validation_transform_is_identity():
    image, mask = _scene()
    out = build_augmentations({"hflip": 1.0}, train=False)(image=image, mask=mask)
    np.testing.assert_array_equal(out["image"], image)
    np.testing.assert_array_equal(out["mask"], mask)


def test_switching_off():
    aug = build_augmentations({"hflip": 1.0, "shift_scale": False, "color": None})
    assert _types(aug) == [A.HorizontalFlip]
    image, mask = _scene()
    out = aug(image=image, mask=mask)
    np.testing.assert_array_equal(out["image"], image[:, ::-1])
    np.testing.assert_array_equal(out["mask"], mask[:, ::-1])
    assert _types(build_augmentations({"hflip": 0, "shift_scale": False, "color": False})) == []


def test_shift_scale_moves_image_and_mask_together():
    aug = build_augmentations(
        {"hflip": False, "color": False, "shift_scale": {"shift": 0.1, "scale": 0.2, "p": 1.0}}
    )
    aug.set_random_seed(0)
    image, mask = _scene()
    changed = 0
    for _ in range(10):
        out = aug(image=image, mask=mask)
        m = out["mask"]
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
        agree = ((out["image"][..., 0] > 127) == (m == 1)).mean()
        assert agree > 0.97
        changed += not np.array_equal(m, mask)
    assert changed >= 8


def test_colour_jitter_changes_image_not_mask():
    aug = build_augmentations(
        {"hflip": False, "shift_scale": False, "color": {"brightness": 0.4, "p": 1.0}}
    )
    aug.set_random_seed(1)
    image, mask = _scene()
    outs = [aug(image=image, mask=mask) for _ in range(5)]
    assert any(not np.array_equal(o["image"], image) for o in outs)
    assert all(np.array_equal(o["mask"], mask) for o in outs)


def test_soft_masks_are_warped_linearly():
    """Coverage masks (0..255) keep fractional edges under shift/scale; binary ones stay binary."""
    spec = {"hflip": False, "color": False, "shift_scale": {"shift": 0.1, "scale": 0.2, "p": 1.0}}
    image, mask = _scene()
    soft = mask * np.uint8(255)
    aug = build_augmentations(spec, soft_masks=True)
    aug.set_random_seed(0)
    out = aug(image=image, mask=soft)["mask"]
    assert out.dtype == np.uint8 and ((out > 0) & (out < 255)).any()
    hard = build_augmentations(spec)
    hard.set_random_seed(0)
    assert set(np.unique(hard(image=image, mask=soft)["mask"])) <= {0, 255}
