"""Losses for binary masks: boundary-weighted BCE, soft Dice/IoU, Lovasz, focal, and their combo.

Carvana's score is decided at the car's outline, so BCE weights pixels near the mask boundary more
(weights from average pooling of the target; top solutions used a kernel growing with the image).
`build_loss({bce: 1.0, dice: 1.0, ...})` builds the combination a member names in its parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

# (height, kernel) anchors from the Carvana top solutions; linear in between, proportional outside
_KERNEL_ANCHORS = ((128, 11), (256, 21), (512, 21), (1024, 41), (1280, 51))
BOUNDARY_LOW, BOUNDARY_HIGH = 0.01, 0.99

LOSS_TERMS = ("bce", "dice", "jaccard", "lovasz", "focal")
LOSS_OPTIONS = ("boundary_weight", "kernel", "aux_weight", "weighted_dice", "focal_gamma")
DEFAULT_SPEC: dict[str, Any] = {
    "bce": 1.0,
    "dice": 1.0,
    "jaccard": 0.0,
    "lovasz": 0.0,
    "focal": 0.0,
    "boundary_weight": 2.0,
    "kernel": None,
    "aux_weight": 0.4,
    "weighted_dice": False,
    "focal_gamma": 2.0,
}


def _odd(value: float) -> int:
    return max(3, 2 * int(round((value - 1) / 2)) + 1)


def kernel_for_height(h: int) -> int:
    """Odd pooling kernel for boundary weights at image height `h` (11 at 128 ... 51 at 1280)."""
    if h <= 0:
        raise ValueError(f"image height must be positive, got {h}")
    heights, kernels = zip(*_KERNEL_ANCHORS, strict=True)
    if h < heights[0]:
        return _odd(kernels[0] * h / heights[0])
    if h > heights[-1]:
        return _odd(kernels[-1] * h / heights[-1])
    return _odd(float(np.interp(h, heights, kernels)))


def boundary_weights(
    mask: torch.Tensor | np.ndarray, kernel: int | None = None, boundary_weight: float = 2.0
) -> torch.Tensor | np.ndarray:
    """Per-pixel loss weights: 1 + boundary_weight near the mask outline, renormalised per image.

    A pixel is boundary when the mean of the mask over the kernel x kernel window around it lies
    strictly in (0.01, 0.99); windows are averaged over the pixels inside the image only, so the
    image border itself is no boundary. Each image's weights sum to its pixel count.
    mask: torch (N,1,H,W) / (N,H,W) or NumPy (H,W); returns the same kind and shape (float32).
    """
    is_numpy = isinstance(mask, np.ndarray)
    t = torch.from_numpy(np.asarray(mask, dtype=np.float32)) if is_numpy else mask
    shape = t.shape
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    elif t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"mask must be (H,W), (N,H,W) or (N,1,H,W), got shape {tuple(shape)}")
    t = t.float()
    k = kernel_for_height(t.shape[-2]) if kernel is None else int(kernel)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"boundary kernel must be a positive odd integer, got {kernel}")
    with torch.no_grad():
        # the k x k mean as two 1-D means (exact: a clipped window is a rectangle); ~k/2x cheaper
        pooled = F.avg_pool2d(t, (1, k), stride=1, padding=(0, k // 2), count_include_pad=False)
        pooled = F.avg_pool2d(
            pooled, (k, 1), stride=1, padding=(k // 2, 0), count_include_pad=False
        )
        boundary = (pooled > BOUNDARY_LOW) & (pooled < BOUNDARY_HIGH)
        weights = 1.0 + boundary_weight * boundary.float()
        weights = weights * (weights[0].numel() / weights.sum(dim=(1, 2, 3), keepdim=True))
    weights = weights.reshape(shape)
    return weights.numpy() if is_numpy else weights


class WeightedBCE(nn.Module):
    """BCE with logits, boundary-weighted when boundary_weight > 0 (plain BCE at 0)."""

    def __init__(self, boundary_weight: float = 2.0, kernel: int | None = None):
        super().__init__()
        self.boundary_weight = float(boundary_weight)
        self.kernel = kernel

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        if weights is None and self.boundary_weight > 0:
            weights = boundary_weights(target, self.kernel, self.boundary_weight)
        return F.binary_cross_entropy_with_logits(logits, target, weight=weights)


class WeightedSoftDice(nn.Module):
    """Soft Dice over the batch with per-pixel weights (smp's DiceLoss when unweighted)."""

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        probs = F.logsigmoid(logits).exp()
        inter = (weights * probs * target).sum()
        card = (weights * (probs + target)).sum()
        loss = 1.0 - 2.0 * inter / card.clamp_min(self.eps)
        # as smp's DiceLoss: no foreground in the batch -> no Dice term (and no host sync)
        return torch.where(target.sum() > 0, loss, loss * 0.0)


class ComboLoss(nn.Module):
    """Weighted sum of loss terms; outputs may be logits or (logits, [aux logits, ...]).

    The aux outputs (deep supervision) get the same combination, averaged over the aux heads and
    scaled by `aux_weight`, added to the main loss. Computed in float32 (safe under autocast).
    """

    def __init__(self, spec: Mapping[str, Any] | None = None):
        super().__init__()
        spec = dict(spec or {})
        if any(name in spec for name in LOSS_TERMS):  # named terms only; the rest are off
            spec = {**{name: 0.0 for name in LOSS_TERMS}, **spec}
        spec = {**DEFAULT_SPEC, **spec}
        self.spec = spec
        self.weights = {name: float(spec[name] or 0.0) for name in LOSS_TERMS}
        self.boundary_weight = float(spec["boundary_weight"] or 0.0)
        self.kernel = spec["kernel"]
        self.aux_weight = float(spec["aux_weight"] or 0.0)
        self.weighted_dice = bool(spec["weighted_dice"])
        self.terms = nn.ModuleDict()
        if self.weights["bce"]:
            self.terms["bce"] = WeightedBCE(self.boundary_weight, self.kernel)
        if self.weights["dice"]:
            self.terms["dice"] = (
                WeightedSoftDice()
                if self.weighted_dice
                else smp.losses.DiceLoss("binary", from_logits=True)
            )
        if self.weights["jaccard"]:
            self.terms["jaccard"] = smp.losses.JaccardLoss("binary", from_logits=True)
        if self.weights["lovasz"]:
            self.terms["lovasz"] = smp.losses.LovaszLoss("binary", per_image=False)
        if self.weights["focal"]:
            self.terms["focal"] = smp.losses.FocalLoss("binary", gamma=float(spec["focal_gamma"]))
        if not self.terms:
            raise ValueError(f"loss spec gives every term weight 0: {dict(spec)}")

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The combination for one output (N,1,H,W) against target (N,1,H,W)."""
        logits = logits.float()
        weights = None
        if self.boundary_weight > 0 and ("bce" in self.terms or self.weighted_dice):
            weights = boundary_weights(target, self.kernel, self.boundary_weight)
        total = logits.new_zeros(())
        for name, term in self.terms.items():
            if name == "bce":
                value = term(logits, target, weights)
            elif name == "dice" and self.weighted_dice:
                value = term(
                    logits, target, weights if weights is not None else torch.ones_like(target)
                )
            else:
                value = term(logits, target)
            total = total + self.weights[name] * value
        return total

    def forward(
        self,
        outputs: torch.Tensor | tuple[torch.Tensor, Sequence[torch.Tensor]],
        target: torch.Tensor,
    ) -> torch.Tensor:
        target = target.float()
        if target.ndim == 3:
            target = target[:, None]
        if isinstance(outputs, (tuple, list)):
            logits, aux = outputs
        else:
            logits, aux = outputs, ()
        if logits.shape != target.shape:
            raise ValueError(
                f"loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ"
            )
        loss = self.single(logits, target)
        if aux and self.aux_weight:
            aux_loss = torch.stack([self.single(a, target) for a in aux]).mean()
            loss = loss + self.aux_weight * aux_loss
        return loss


def build_loss(spec: Mapping[str, Any] | None = None) -> ComboLoss:
    """Loss from a member's `loss:` mapping, e.g. {bce: 1.0, dice: 1.0, boundary_weight: 2.0}.

    Terms: bce (boundary-weighted), dice, jaccard, lovasz, focal (weights; 0 = off). Options:
    boundary_weight (extra weight at the outline, 0 = plain BCE), kernel (null = by height),
    aux_weight (deep-supervision outputs), weighted_dice (Dice also boundary-weighted), focal_gamma.
    A spec naming no term at all means {bce: 1, dice: 1}; otherwise unnamed terms are off.
    """
    spec = dict(spec or {})
    allowed = LOSS_TERMS + LOSS_OPTIONS
    for key in spec:
        if key not in allowed:
            raise ValueError(f"unknown loss key {key!r}; allowed keys: {list(allowed)}")
    for key in LOSS_TERMS + ("boundary_weight", "aux_weight"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"loss key {key!r} must be a number >= 0, got {value!r}")
    kernel = spec.get("kernel")
    if kernel is not None and (not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0):
        raise ValueError(
            f"loss key 'kernel' must be null or a positive odd integer, got {kernel!r}"
        )
    return ComboLoss(spec)
