"""One precision policy for training, validation and prediction.

Lightning Fabric takes the policy as a string ("bf16-mixed", "16-mixed", "32-true"); the
inference path autocasts with the same string, so what validation scores is computed as 06
submits it.

- CUDA with bf16 (Ampere and newer): "bf16-mixed" (no loss scaling needed).
- CUDA without bf16 (Kaggle's T4, P100): "16-mixed" with a gradient scaler.
- CPU with bf16 units (AMX or AVX512-BF16) when the member asks for `cpu_bf16`: "bf16-mixed"
  (2.1-2.2x images/s at 128x192 on a RefineNet v4/ResNet-18, same Dice; bench_train.py).
- Otherwise "32-true": bf16 emulated on a CPU without those units is slower than fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["PRECISIONS", "autocast", "autocast_dtype", "cpu_has_fast_bf16", "precision_for"]

PRECISIONS = ("bf16-mixed", "16-mixed", "32-true")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AMX tiles, e.g. Xeon Sapphire
    Rapids, or AVX512-BF16, e.g. AMD EPYC Zen 4): there bf16 autocast trains ~2x faster than
    fp32 (measured on a RefineNet v4/ResNet-18 at 128x192 with channels_last); elsewhere it is
    emulated and slower."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def precision_for(device: torch.device | str, amp: bool = True, cpu_bf16: bool = False) -> str:
    """The Fabric precision string for `device`.

    Args:
        device: where the model runs.
        amp: mixed precision on CUDA (bf16 where the GPU has it, else fp16 with a scaler).
        cpu_bf16: bf16 autocast on a CPU, used only where the CPU has bf16 units.
    """
    device = torch.device(device)
    if device.type == "cuda" and amp:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if device.type == "cpu" and cpu_bf16 and cpu_has_fast_bf16():
        return "bf16-mixed"
    return "32-true"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision string (None: no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """Autocast as Fabric's precision plugin does for `precision` (a no-op for "32-true")."""
    dtype = autocast_dtype(precision)
    device_type = torch.device(device).type
    if dtype is None:
        yield
        return
    with torch.autocast(device_type, dtype=dtype):
        yield
