"""What a pseudo-label folder is: its file names, the path rule and the confidence statistic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

UNCERTAIN_BAND = (0.1, 0.9)  # open band: a probability strictly inside it is "uncertain"
CSV_NAME = "pseudo_labels.csv"
META_NAME = "pseudo_labels.json"
COLUMNS = ("id", "uncertain_fraction", "kept")


def pseudo_dir(folder: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """A pseudo-label folder as the stage key or CLI names it: relative paths under run_dir."""
    path = Path(folder)
    return path if path.is_absolute() else Path(run_dir) / path


def uncertain_fraction(prob: np.ndarray | torch.Tensor) -> float:
    """Fraction of pixels with probability strictly inside UNCERTAIN_BAND (float in [0, 1])
    or uint8 0..255 maps (divided by 255 first). See the module docstring for why."""
    p = prob.detach().cpu().numpy() if isinstance(prob, torch.Tensor) else np.asarray(prob)
    if p.size == 0:
        raise ValueError("uncertain_fraction of an empty probability map")
    if p.dtype == np.uint8:
        p = p.astype(np.float32) / 255.0
    lo, hi = UNCERTAIN_BAND
    return float(np.count_nonzero((p > lo) & (p < hi)) / p.size)
