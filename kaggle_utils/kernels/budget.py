"""Measured GPU figures for planning Kaggle runs: what a card trains and predicts per second.

`bench/gpu_suite.py` measures them on a GPU (docs/gpu.md) and `--record` merges them into
`bench/gpu_figures.json`, keyed by `torch.cuda.get_device_name()` ("NVIDIA H200", "Tesla T4"),
each with its date, torch and CUDA versions:

    train:   refinenet_v4/resnet34 at 1024x1024, fp32 and AMP + channels_last images/s, batches,
             peak GiB, the ratio
    submit:  06 end to end (hflip TTA, guided upsampling, RLE) at 1280x1918: images/s and the hours
             for 100,064 test images
    quality: the suite's from-scratch Dice on the carried validation cars

Torch-free, so a planner can read it before any kernel starts. A card never measured gives None:
plan with a measured one and say so rather than guess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["FIGURES", "TEST_IMAGES", "gpu_figures", "load_figures", "submit_hours"]

FIGURES = Path(__file__).resolve().parents[2] / "bench" / "gpu_figures.json"
TEST_IMAGES = 100_064


def load_figures(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Every GPU's figures ({} where the file is absent, e.g. an installed package without bench/);
    a file that is not a JSON object of objects fails naming it."""
    path = Path(path) if path is not None else FIGURES
    if not path.is_file():
        return {}
    try:
        figures = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); re-record it with gpu_suite.py") from exc
    if not isinstance(figures, dict) or not all(isinstance(v, dict) for v in figures.values()):
        raise ValueError(
            f"{path}: expected {{gpu name: {{figures}}}}, got {type(figures).__name__}"
        )
    return figures


def gpu_figures(gpu_name: str, path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The figures measured on `gpu_name` (as torch.cuda.get_device_name() spells it); the
    match ignores case and surrounding spaces, and a unique partial name ("H200", "T4") is
    accepted. None when that card was never measured."""
    figures = load_figures(path)
    if gpu_name in figures:
        return figures[gpu_name]
    wanted = gpu_name.strip().casefold()
    exact = [k for k in figures if k.strip().casefold() == wanted]
    if exact:
        return figures[exact[0]]
    partial = [k for k in figures if wanted and (wanted in k.casefold() or k.casefold() in wanted)]
    return figures[partial[0]] if len(partial) == 1 else None


def submit_hours(
    gpu_name: str, n_images: int = TEST_IMAGES, path: str | os.PathLike | None = None
) -> float | None:
    """Hours 06 needs for `n_images` on `gpu_name` at its measured rate (None: not measured)."""
    figures = gpu_figures(gpu_name, path)
    rate = (figures or {}).get("submit", {}).get("images_per_s")
    return n_images / float(rate) / 3600 if rate else None
