"""What every part of the ensemble search shares: the probability quantisation, the default
search grids, the thread rule for small tensors, and the car/angle of an image id."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["BINS", "DEFAULT_GRID", "DEFAULT_THRESHOLDS", "angle_of", "car_of", "single_thread"]

BINS = 256
"""Probabilities are stored and scored as uint8 (p * 255): 256 histogram bins."""
DEFAULT_GRID = (0.0, 0.5, 1.0, 2.0)
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.30, 0.701, 0.02), 2))


@contextmanager
def single_thread(device: str | torch.device = "cpu") -> Iterator[None]:
    """One intra-op thread on the CPU: the per-image tensors here are small, and on a busy machine
    torch's thread pool costs ~100x on them (measured: 22 ms vs 0.25 ms per op at 160x240)."""
    if torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def car_of(image_id: str) -> str:
    """The car of an image id ("<car>_<angle>[.jpg]"): cross-validation keeps a car together."""
    return str(image_id).rsplit("_", 1)[0]


def angle_of(image_id: str) -> int:
    """The angle (1..16) of an image id."""
    return int(str(image_id).rsplit("_", 1)[1].split(".")[0])
