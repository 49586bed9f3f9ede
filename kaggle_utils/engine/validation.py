"""Validation of one stage: the loss at training size and Kaggle's Dice as 06 submits it.

The forward pass is `inference.forward_logits` under the stage's precision, the same call 06
makes, so "what is scored is what is submitted" holds by construction: hflip TTA, guided
upsampling with the photo, threshold and largest-component clean-up all follow the member's
settings. Under DDP each rank scores its own share of the validation images and rank 0 gathers
the rows (and, on the last epoch, the probabilities for the OOF files).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from kaggle_utils.config import GuidedFilterConfig
from kaggle_utils.dataset import ValidationMasks
from kaggle_utils.inference import forward_logits, probs_from_logits

__all__ = ["ValResult", "Validator", "evaluate"]

_DICE_CHUNK = 4  # full-resolution masks scored 4 at a time: bounded memory at 1280x1918


@dataclass
class ValResult:
    loss: float
    per_image: pd.DataFrame  # columns id, dice
    probs: dict[str, np.ndarray]  # uint8 probabilities at the training size (when kept)

    @property
    def dice(self) -> float:
        return float(self.per_image["dice"].mean())


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: torch.nn.Module,
    masks: ValidationMasks,
    device: torch.device,
    *,
    precision: str = "32-true",
    channels_last: bool = False,
    threshold: float = 0.5,
    largest_component: bool = False,
    tta: bool = False,
    keep_probs: bool = False,
    guided: GuidedFilterConfig | None = None,
) -> tuple[float, int, list[tuple[str, float]], dict[str, np.ndarray]]:
    """(loss sum, image count, [(id, Dice)], probs) over this process's validation images.

    tta: probabilities averaged with the mirrored image's (as 06 predicts); the loss is the plain
    pass's, so it stays comparable with the training loss. guided: Dice after the edge-aware
    upsampling 06 applies (`masks` holds the guides). Kept probs are the model's own, at the
    training size.
    """
    from kaggle_utils.metrics import full_res_dice
    from kaggle_utils.refine import guided_upsample

    model.eval()
    total, count = 0.0, 0
    rows: list[tuple[str, float]] = []
    kept: dict[str, np.ndarray] = {}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
        y = batch["mask"].to(device, non_blocking=True)
        logits = forward_logits(model, x, tta=tta, precision=precision)
        n = len(x)
        total += float(loss_fn(logits[:n], y)) * n
        count += n
        probs = probs_from_logits(logits, n, tta)
        ids = list(batch["id"])
        for j in range(0, n, _DICE_CHUNK):
            chunk = ids[j : j + _DICE_CHUNK]
            p = probs[j : j + _DICE_CHUNK]
            if guided is not None:
                p = guided_upsample(p, masks.guide(chunk), guided.radius, guided.eps)
            full = masks.get(chunk).to(device)
            dice = full_res_dice(p, full, threshold=threshold, largest_component=largest_component)
            rows += list(zip(chunk, dice.cpu().tolist(), strict=True))
        if keep_probs:
            u8 = (probs[:, 0] * 255).round().to(torch.uint8).cpu().numpy()
            kept.update(zip(ids, u8, strict=True))
    return total, count, rows, kept


class Validator:
    """Scores a model on this rank's share of the validation cars and gathers the result."""

    def __init__(
        self,
        loader: DataLoader,
        loss_fn: torch.nn.Module,
        masks: ValidationMasks,
        device: torch.device,
        val_ids: list[str],
        **options: Any,
    ):
        self.loader, self.loss_fn, self.masks, self.device = loader, loss_fn, masks, device
        self.val_ids, self.options = val_ids, options

    def __call__(self, model: torch.nn.Module, keep_probs: bool = False) -> ValResult:
        part = evaluate(
            model,
            self.loader,
            self.loss_fn,
            self.masks,
            self.device,
            keep_probs=keep_probs,
            **self.options,
        )
        total, count, rows, probs = _gather(part)
        order = {image_id: i for i, image_id in enumerate(self.val_ids)}
        rows.sort(key=lambda r: order[r[0]])
        table = pd.DataFrame(rows, columns=["id", "dice"])
        return ValResult(total / max(1, count), table, probs)


def _gather(part: tuple) -> tuple[float, int, list, dict]:
    """Every rank's (loss sum, count, rows, probs), merged (a no-op in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return part
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    total = sum(p[0] for p in parts)
    count = sum(p[1] for p in parts)
    rows = [r for p in parts for r in p[2]]
    probs = {k: v for p in parts for k, v in p[3].items()}
    return total, count, rows, probs
