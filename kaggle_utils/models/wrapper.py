"""Any-size wrapper: reflect-pad to a multiple of the encoder stride, crop the logits back.

Training crops are multiples of 32 already (no padding happens); prediction on full Carvana frames
(1280x1918) pads the width to 1920 and crops the result to 1918.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def pad_amounts(size: int, multiple: int) -> tuple[int, int]:
    """(before, after) padding that brings `size` to the next multiple, split evenly."""
    total = (-size) % multiple
    return total // 2, total - total // 2


class SegmentationModel(nn.Module):
    """forward(x (N,C,H,W)) -> logits (N,classes,H,W) for any H, W; in training mode a
    deep-supervised net returns (logits, [aux logits (N,classes,H,W), ...]).

    `spec` is the complete build specification (defaults filled in) for checkpoints to store.
    """

    def __init__(self, net: nn.Module, spec: dict[str, Any], pad_multiple: int = 32):
        super().__init__()
        self.net = net
        self.spec = dict(spec)
        self.pad_multiple = int(pad_multiple)

    @property
    def encoder(self) -> nn.Module:
        """The pretrained part (for a lower learning rate or freezing)."""
        return self.net.encoder

    @property
    def deep_supervision(self) -> bool:
        return bool(getattr(self.net, "deep_supervision", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = x.shape[-2:]
        top, bottom = pad_amounts(h, self.pad_multiple)
        left, right = pad_amounts(w, self.pad_multiple)
        padded = bool(top or bottom or left or right)
        if padded:
            # reflect needs the pad to be smaller than the side; tiny inputs fall back to replicate
            mode = "reflect" if max(top, bottom) < h and max(left, right) < w else "replicate"
            x = F.pad(x, (left, right, top, bottom), mode=mode)
        out = self.net(x)
        if not padded:
            return out

        def crop(t: torch.Tensor) -> torch.Tensor:
            return t[..., top : top + h, left : left + w]

        if isinstance(out, tuple):
            logits, aux = out
            return crop(logits), [crop(a) for a in aux]
        return crop(out)

    def extra_repr(self) -> str:
        return f"arch={self.spec.get('arch')!r}, encoder={self.spec.get('encoder')!r}, pad_multiple={self.pad_multiple}"
