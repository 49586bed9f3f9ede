"""Atomic writes and checkpoints: a kill at any moment leaves either the old file or the new one.

Every result file goes through a temporary file in the same folder, flushed and fsynced, then
`os.replace`d over the target (atomic on POSIX). Checkpoints carry what prediction needs
(`model_spec`, `size`, member, stage, Dice) so `load_member_model` can rebuild a model anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from kaggle_utils.atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

__all__ = [
    "CheckpointError",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_checkpoint",
    "load_member_model",
    "save_checkpoint",
]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or lacks what is needed; names the file."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` that never leaves a half-written file at `path`; a full disk fails as one
    OSError naming `path` and the space left (torch's own error hides ENOSPC in its chain)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous (not channels_last) tensors: loadable on any device and layout."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    model_spec: dict,
    size: tuple[int, int],
    epoch: int,
    extra: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    ema: torch.nn.Module | None = None,
    rng: bool = False,
) -> Path:
    """Write a checkpoint atomically. `extra` holds member, stage, dice, params_hash, history, ...

    Prediction needs only `model` (weights), `model_spec` and `size`; the optimizer, scheduler,
    scaler, EMA and RNG states are there for resuming a stage.
    """
    ckpt: dict[str, Any] = {
        "format": "kaggle_utils.checkpoint/1",
        "model": _plain_state_dict(model),
        "model_spec": dict(model_spec),
        "size": tuple(int(s) for s in size),
        "epoch": int(epoch),
        **(extra or {}),
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        ckpt["scaler"] = scaler.state_dict()
    if ema is not None:
        ckpt["ema"] = _plain_state_dict(ema)
    if rng:
        ckpt["rng"] = rng_state()
    return atomic_torch_save(ckpt, path)


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; a missing or unreadable file names itself."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several kinds for truncated/corrupt files
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a kaggle_utils checkpoint (no 'model' entry)")
    return ckpt


def load_member_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained member for prediction on other images: (model in eval mode, info).

    info holds "size" (H, W) the member was trained at, "member", "stage", "dice", "model_spec",
    "epoch" and the rest of the checkpoint's metadata (not the weights or optimizer state).
    """
    from kaggle_utils.models import build_model

    ckpt = load_checkpoint(path, map_location="cpu")
    for key in ("model_spec", "size"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks '{key}'; it was not written by kaggle_utils.train")
    spec = {**ckpt["model_spec"], "encoder_weights": None}  # weights come from the checkpoint
    model = build_model(spec)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model_spec {spec}: {exc}") from exc
    model.to(device).eval()
    skip = {"model", "optimizer", "scheduler", "scaler", "ema", "rng"}
    info = {k: v for k, v in ckpt.items() if k not in skip}
    info["size"] = tuple(ckpt["size"])
    info.setdefault("member", None)
    info.setdefault("stage", None)
    info.setdefault("dice", None)
    info["path"] = str(path)
    return model, info
