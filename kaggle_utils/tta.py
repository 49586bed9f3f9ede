"""Test-time augmentation: transforms named as ttach names them, and settings (lists of them).

A transform has a forward (the image batch the model sees) and an inverse (the model's
probability map back to the original size and orientation); a setting is a list of transforms
whose de-augmented probabilities are averaged. 05 scores candidate settings on OOF and records
the one it picks; 05 and 06 compute it through `tta_probs` (training-time validation keeps the
mirror average of `val_tta`, `inference.forward_logits`).

Transform names (ttach's aliases `hflip_transform`, `Scale`):

- ``identity``: the image as it is;
- ``hflip``: mirrored left-right (ttach ``HorizontalFlip``); no vertical flip: cars stand upright;
- ``scale_<f>``: resized by f (e.g. ``scale_0.875``), each side rounded to a multiple of 32 (the
  encoders downsample 32x), the output resized back (ttach ``Scale``);
- ``hflip_scale_<f>``: both (ttach's product of ``HorizontalFlip`` and ``Scale``).

A setting is written as a preset name (`PRESETS`: ``none``, ``hflip``, ``scales``,
``hflip+scales``), transform names joined by ``+`` (``identity+hflip+scale_1.125``), a list of
transform names, or a bool (the older form: true is ``hflip``, false ``none``).

Torch-free at import (config validates names with it); torch is imported where tensors are.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "PRESETS",
    "TTASetting",
    "Transform",
    "parse_setting",
    "parse_transform",
    "tta_probs",
]

MULTIPLE = 32
"""Sides of a scaled input are rounded to this: the encoders downsample by 32."""
PRESETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "hflip": ("identity", "hflip"),
    "scales": ("identity", "scale_0.875", "scale_1.125"),
    "hflip+scales": ("identity", "hflip", "scale_0.875", "scale_1.125"),
}
_FIXED = ("identity", "hflip")
_SCALE = re.compile(r"^(hflip_)?scale_(\d+(?:\.\d+)?)$")
_REGISTERED = "identity, hflip, scale_<f> (e.g. scale_0.875), hflip_scale_<f>"


@dataclass(frozen=True)
class Transform:
    """One TTA transform: an optional left-right mirror and a resize by `scale`."""

    name: str
    flip: bool = False
    scale: float = 1.0

    def size(self, hw: Sequence[int]) -> tuple[int, int]:
        """The input size the model sees for an input of size hw: each side times the scale,
        to the nearest multiple of 32 (halves up: 384 * 0.875 = 336 -> 352), at least 32."""
        if self.scale == 1.0:
            return int(hw[0]), int(hw[1])
        h, w = (max(1, math.floor(s * self.scale / MULTIPLE + 0.5)) * MULTIPLE for s in hw)
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The augmented batch (N,C,h',w') of x (N,C,h,w)."""
        x = _resize(x, self.size(x.shape[-2:]))
        return x.flip(-1) if self.flip else x

    def inverse(self, p: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
        """A map (N,1,h',w') of the augmented batch back to the original size hw, unmirrored."""
        p = p.flip(-1) if self.flip else p
        return _resize(p, hw)


def _resize(x: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    import torch.nn.functional as F

    return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)


def parse_transform(name: str) -> Transform:
    """The transform of a name; an unknown name fails listing the registered ones."""
    name = str(name).strip()
    if name in _FIXED:
        return Transform(name, flip=name == "hflip")
    m = _SCALE.match(name)
    if m and 0.25 <= float(m.group(2)) <= 4.0:
        return Transform(name, flip=bool(m.group(1)), scale=float(m.group(2)))
    close = difflib.get_close_matches(name, [*_FIXED, *PRESETS], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(
        f"unknown TTA transform {name!r}{hint}; registered: {_REGISTERED} (scale factors in "
        f"0.25..4); settings: {', '.join(PRESETS)} or transform names joined by '+'"
    )


@dataclass(frozen=True)
class TTASetting:
    """A list of transforms whose de-augmented probabilities are averaged."""

    transforms: tuple[Transform, ...]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.transforms]

    @property
    def label(self) -> str:
        """The preset's name when it is one, else the names joined by '+'."""
        for preset, names in PRESETS.items():
            if tuple(self.names) == names:
                return preset
        return "+".join(self.names)

    @property
    def record(self) -> bool | list[str]:
        """What ensemble.yaml and the resume fingerprint store: true / false for hflip / none
        (as before settings were lists, so older specs, fingerprints and readers agree), else
        the transform names."""
        if self.label in ("none", "hflip"):
            return self.label == "hflip"
        return self.names

    @property
    def forwards(self) -> int:
        """Images the model runs per input image (the cost of the setting)."""
        return len(self.transforms)


def parse_setting(value: Any) -> TTASetting:
    """A setting from its written forms (preset, '+'-joined names, list of names, bool, None)."""
    if isinstance(value, TTASetting):
        return value
    if value is None or isinstance(value, bool):
        return TTASetting(tuple(parse_transform(n) for n in PRESETS["hflip" if value else "none"]))
    if isinstance(value, str):
        names = PRESETS.get(value.strip()) or tuple(value.split("+"))
    elif isinstance(value, Sequence):
        names = tuple(str(v) for v in value)
    else:
        raise ValueError(f"TTA setting {value!r}: write a preset name, a list or a bool")
    if not names:
        raise ValueError("an empty TTA setting: write 'none' for the plain pass")
    transforms = tuple(parse_transform(n) for n in names)
    dup = sorted({t.name for t in transforms if names.count(t.name) > 1})
    if dup:
        raise ValueError(f"TTA setting {value!r} lists {dup} twice: name each transform once")
    return TTASetting(transforms)


def _groups(setting: TTASetting) -> list[tuple[Transform, ...]]:
    """Transforms sharing an input size (the same scale), in setting order: one forward each."""
    by_scale: dict[float, list[Transform]] = {}
    for t in setting.transforms:
        by_scale.setdefault(t.scale, []).append(t)
    return [tuple(g) for g in by_scale.values()]


def tta_probs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    setting: Any,
    cache: dict | None = None,
) -> torch.Tensor:
    """Mean de-augmented sigmoid probabilities (N,1,h,w) of `setting` on x (N,C,h,w).

    forward(batch) -> float logits (inference.forward_logits without TTA). Transforms sharing a
    size run as one batched forward ([x, flip(x)] for hflip, as before settings were lists, so
    ``hflip`` is bit for bit today's mirror average). cache: a dict for one batch x, shared by
    several settings (05 scores every candidate from one set of forwards).
    """
    import torch

    setting = parse_setting(setting)
    n, hw = x.shape[0], tuple(x.shape[-2:])
    per: dict[str, torch.Tensor] = {}
    for group in _groups(setting):
        key = tuple(t.name for t in group)
        if cache is not None and key in cache:
            per.update(cache[key])
            continue
        batch = torch.cat([t.forward(x) for t in group]) if len(group) > 1 else group[0].forward(x)
        probs = torch.sigmoid(forward(batch))
        got = {t.name: t.inverse(probs[i * n : (i + 1) * n], hw) for i, t in enumerate(group)}
        if cache is not None:
            cache[key] = got
        per.update(got)
    out = per[setting.transforms[0].name]
    for t in setting.transforms[1:]:
        out = out + per[t.name]
    return out / len(setting.transforms) if len(setting.transforms) > 1 else out
