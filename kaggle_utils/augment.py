"""Training augmentations from a small parameter dict (albumentations 2.x).

Cars stand on a floor and are photographed from a fixed height, so the label-preserving changes
are a left-right mirror, a little shift/scale (framing varies) and lighting. A vertical flip would
teach the model upside-down cars, so it is not offered. Validation uses the identity transform.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2

DEFAULTS: dict[str, dict[str, float]] = {
    "hflip": {"p": 0.5},
    "shift_scale": {"shift": 0.0625, "scale": 0.1, "rotate": 0.0, "p": 0.5},
    "color": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "p": 0.5},
}
ALLOWED = tuple(sorted(DEFAULTS))


def _params(key: str, value: Any) -> dict[str, float] | None:
    """Resolve one spec entry: None/False -> off, True -> defaults, number -> p, dict -> merged."""
    if value is None or value is False:
        return None
    params = dict(DEFAULTS[key])
    if value is True:
        return params
    if isinstance(value, (int, float)):
        params["p"] = float(value)
    elif isinstance(value, dict):
        unknown = sorted(set(value) - set(params))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for augmentation {key!r}; allowed: {sorted(params)}"
            )
        params.update({k: float(v) for k, v in value.items()})
    else:
        raise ValueError(f"augmentation {key!r} must be a bool, a probability or a dict")
    if not 0.0 <= params["p"] <= 1.0:
        raise ValueError(f"augmentation {key!r}: p={params['p']} is not in [0, 1]")
    return None if params["p"] == 0 else params


def build_augmentations(
    spec: dict | None = None, train: bool = True, soft_masks: bool = False
) -> A.Compose:
    """An ``A.Compose`` from ``spec`` (keys hflip, shift_scale, color; absent = default on).

    Call it as ``aug(image=rgb_uint8, mask=mask_uint8)``. With ``train=False`` the spec is still
    validated and the identity is returned. ``soft_masks``: masks hold coverage (0..255), so they
    are warped with linear interpolation instead of nearest.
    """
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(ALLOWED))
    if unknown:
        hint = (
            " (vertical flips are not offered: cars never stand upside down)"
            if any("vflip" in k or "vertical" in k for k in unknown)
            else ""
        )
        raise ValueError(f"unknown augmentation key(s) {unknown}; allowed: {list(ALLOWED)}{hint}")
    resolved = {key: _params(key, spec.get(key, True)) for key in ALLOWED}
    if not train:
        return A.Compose([])

    transforms: list[A.BasicTransform] = []
    if (p := resolved["hflip"]) is not None:
        transforms.append(A.HorizontalFlip(p=p["p"]))
    if (p := resolved["shift_scale"]) is not None:
        transforms.append(
            A.Affine(
                translate_percent=(-p["shift"], p["shift"]),
                scale=(1.0 - p["scale"], 1.0 + p["scale"]),
                keep_ratio=True,  # one zoom for both axes, as ShiftScaleRotate did
                rotate=(-p["rotate"], p["rotate"]),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_LINEAR if soft_masks else cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_REFLECT_101,
                p=p["p"],
            )
        )
    if (p := resolved["color"]) is not None:
        transforms.append(
            A.ColorJitter(
                brightness=p["brightness"],
                contrast=p["contrast"],
                saturation=p["saturation"],
                hue=p["hue"],
                p=p["p"],
            )
        )
    return A.Compose(transforms)
