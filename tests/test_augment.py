"""Augmentations from a parameter dict: flips, shift/scale, colour; never vertical flips."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from kaggle_utils.augment import ALLOWED, DEFAULTS, TRANSFORMS, AugmentConfig, build_augmentations


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


def test_vertical_flip_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="vertical flips are not offered"):
        build_augmentations({"vflip": True})
    with pytest.raises(ValueError) as err:
        build_augmentations({"hflp": True})
    assert "did you mean 'hflip'" in str(err.value) and "vertical" not in str(err.value)


def test_bad_option_and_probability():
    with pytest.raises(ValueError, match=r"shift_scale\.shear.*allowed keys: p, rotate, scale"):
        build_augmentations({"shift_scale": {"shear": 3}})
    with pytest.raises(ValueError, match="p=1.5"):
        build_augmentations({"hflip": 1.5})
    with pytest.raises(ValueError, match=r"hflip\.p.*p=-0.1"):
        build_augmentations({"hflip": {"p": -0.1}})
    with pytest.raises(ValueError, match=r"color\.hue.*less than or equal to 0.5"):
        build_augmentations({"color": {"hue": 0.6}})
    with pytest.raises(ValueError, match=r"shift_scale.*true/false, a probability"):
        build_augmentations({"shift_scale": "on"})
    with pytest.raises(ValueError, match="must be a mapping"):
        build_augmentations(["hflip"])


def test_schema_per_transform_and_shorthands():
    """A transform is a mapping of its options, true (defaults), false/null (off) or its p."""
    assert set(TRANSFORMS) == set(ALLOWED) == set(DEFAULTS)
    assert DEFAULTS["shift_scale"] == {"p": 0.5, "shift": 0.0625, "scale": 0.1, "rotate": 0.0}
    config = AugmentConfig.from_spec(
        {"hflip": 0.25, "shift_scale": True, "color": {"hue": 0.1}}, "augment"
    )
    resolved = config.resolved()
    assert resolved["hflip"] == {"p": 0.25} and resolved["shift_scale"] == DEFAULTS["shift_scale"]
    assert resolved["color"] == {**DEFAULTS["color"], "hue": 0.1}
    off = AugmentConfig.from_spec({"hflip": False, "shift_scale": None, "color": 0}, "augment")
    assert off.resolved() == {"color": None, "hflip": None, "shift_scale": None}
    assert config.spec() == {"hflip": 0.25, "shift_scale": True, "color": {"hue": 0.1}}
    assert _types(build_augmentations(config)) == _types(build_augmentations(config.spec()))


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
