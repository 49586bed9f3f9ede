"""Training augmentations from a small parameter dict (albumentations 2.x).

Cars stand on a floor and are photographed from a fixed height, so the label-preserving changes
are a left-right mirror, a little shift/scale (framing varies) and lighting. A vertical flip would
teach the model upside-down cars, so it is not offered. Validation uses the identity transform.

Each transform has a schema (`TRANSFORMS`) with its options, defaults and ranges; `AugmentConfig`
checks a member's `augment:` mapping with them on load. albumentations itself is imported only
when transforms are built, so checking a parameter file stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kaggle_utils.config import AugmentSpec

if TYPE_CHECKING:
    import albumentations as A


class _Transform(BaseModel):
    """One transform's options; `p` is the chance it is applied to an image (0 = off)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p: float = Field(default=0.5, description="probability of applying it, in [0, 1]")

    @field_validator("p")
    @classmethod
    def _probability(cls, p: float) -> float:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p} is not a probability in [0, 1]")
        return p


class HFlip(_Transform):
    """Left-right mirror (albumentations HorizontalFlip)."""


class ShiftScale(_Transform):
    """Shift, zoom and rotate image and mask together (albumentations Affine)."""

    shift: float = Field(default=0.0625, ge=0, le=1, description="max shift, x the side")
    scale: float = Field(default=0.1, ge=0, lt=1, description="zoom in 1 +- scale")
    rotate: float = Field(default=0.0, ge=0, le=180, description="max rotation, degrees")


class Color(_Transform):
    """Lighting and paint colour (albumentations ColorJitter); the mask is untouched."""

    brightness: float = Field(default=0.2, ge=0)
    contrast: float = Field(default=0.2, ge=0)
    saturation: float = Field(default=0.2, ge=0)
    hue: float = Field(default=0.02, ge=0, le=0.5, description="hue shift, x the colour circle")


TRANSFORMS: dict[str, type[_Transform]] = {
    "hflip": HFlip,
    "shift_scale": ShiftScale,
    "color": Color,
}
DEFAULTS: dict[str, dict[str, float]] = {
    name: schema().model_dump() for name, schema in TRANSFORMS.items()
}
ALLOWED = tuple(sorted(TRANSFORMS))


class AugmentConfig(AugmentSpec):
    """A member's `augment:` mapping: per transform a mapping of its options, true (defaults),
    false/null (off) or a number (its p). A transform left out is on with its defaults."""

    hflip: HFlip | None = Field(default_factory=HFlip)
    shift_scale: ShiftScale | None = Field(default_factory=ShiftScale)
    color: Color | None = Field(default_factory=Color)

    @field_validator(*TRANSFORMS, mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if value is None or value is False:
            return None
        if value is True:
            return {}
        if isinstance(value, int | float):
            return {"p": float(value)}
        if isinstance(value, Mapping | BaseModel):
            return value
        raise ValueError("must be true/false, a probability in [0, 1] or a mapping of options")

    @classmethod
    def unknown_key_hint(cls, key: str) -> str:
        """Said after the allowed keys when `key` is unknown: why there is no vertical flip."""
        if "vflip" in key or "vertical" in key:
            return " (vertical flips are not offered: cars never stand upside down)"
        return ""

    def resolved(self) -> dict[str, dict[str, float] | None]:
        """Each transform's options with defaults filled in; None where it is off (or p = 0)."""
        out: dict[str, dict[str, float] | None] = {}
        for name in ALLOWED:
            transform = getattr(self, name)
            off = transform is None or transform.p == 0
            out[name] = None if off else transform.model_dump()
        return out


def build_augmentations(
    spec: Mapping[str, Any] | AugmentSpec | None = None,
    train: bool = True,
    soft_masks: bool = False,
    crop: tuple[int, int] | None = None,
) -> A.Compose:
    """An ``A.Compose`` from ``spec`` (keys hflip, shift_scale, color; absent = default on).

    Call it as ``aug(image=rgb_uint8, mask=mask_uint8)``. With ``train=False`` the spec is still
    validated and the identity is returned. ``soft_masks``: masks hold coverage (0..255), so they
    are warped with linear interpolation instead of nearest. ``crop``: a random (H, W) window of
    the augmented frame, last, so shifts and zooms act on the whole frame as at low resolution.
    """
    resolved = AugmentConfig.from_spec(spec, "augment").resolved()
    import albumentations as A
    import cv2

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
    if crop is not None:
        transforms.append(A.RandomCrop(height=int(crop[0]), width=int(crop[1]), p=1.0))
    return A.Compose(transforms)
