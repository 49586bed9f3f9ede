"""Clean-up of thresholded masks: each Carvana photo shows exactly one car.

A low-resolution model sometimes marks dark objects at the frame's edge (the studio floor's
front rim, a shadow) as car. Keeping the largest 8-connected component removes those islands;
on the real sample at 128x192 it lifted full-resolution Dice by ~0.003. Well-trained
high-resolution members rarely need it, so it is an option (``largest_component``), off by
default, applied the same way to validation Dice and to the submission.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["keep_largest_component", "keep_largest_components"]


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected foreground component of a (H, W) mask, as bool; an empty mask
    stays empty. Holes inside the car are kept as they are."""
    m = np.ascontiguousarray(mask)
    m = m.view(np.uint8) if m.dtype == np.bool_ else m.astype(np.uint8, copy=False)  # no copy
    if m.ndim != 2:
        raise ValueError(f"keep_largest_component needs a (H, W) mask, got shape {m.shape}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 2:  # background only, or a single component
        return m != 0
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def keep_largest_components(masks: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """``keep_largest_component`` over a batch (N, H, W) or (N, 1, H, W) of bool/uint8 masks;
    returns the same kind (torch on its device, or NumPy) as bool."""
    is_torch = isinstance(masks, torch.Tensor)
    arr = masks.detach().cpu().numpy() if is_torch else np.asarray(masks)
    flat = arr.reshape((-1, *arr.shape[-2:]))
    out = np.stack([keep_largest_component(m) for m in flat]).reshape(arr.shape)
    return torch.from_numpy(out).to(masks.device) if is_torch else out
