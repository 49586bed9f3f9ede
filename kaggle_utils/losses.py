"""Losses for binary masks: boundary-weighted BCE, soft Dice/IoU, Lovasz, focal, and their combo.

Carvana's score is decided at the car's outline, so BCE weights pixels near the mask boundary more
(weights from average pooling of the target; top solutions used a kernel growing with the image).
`build_loss({bce: 1.0, dice: 1.0, ...})` builds the combination a member names in its parameters;
`LOSS_TERMS` and `LOSS_OPTIONS` are the registry of what such a mapping may hold, and `LossConfig`,
the schema built from them, checks a member's `loss:` on load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field, create_model, model_validator
from torch import nn

from kaggle_utils.config import LossSpec

# (height, kernel) anchors from the Carvana top solutions; linear in between, proportional outside
_KERNEL_ANCHORS = ((128, 11), (256, 21), (512, 21), (1024, 41), (1280, 51))
BOUNDARY_LOW, BOUNDARY_HIGH = 0.01, 0.99


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

    def __init__(self, spec: Mapping[str, Any] | LossSpec | None = None):
        super().__init__()
        config = LossConfig.from_spec(spec, "loss spec")
        options = config.options()
        self.weights = config.weights()
        self.spec = {**self.weights, **options}
        self.boundary_weight = options["boundary_weight"]
        self.kernel = options["kernel"]
        self.aux_weight = options["aux_weight"]
        self.weighted_dice = options["weighted_dice"]
        self.terms = nn.ModuleDict(
            {name: LOSS_TERMS[name].build(options) for name, w in self.weights.items() if w}
        )

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


def build_loss(spec: Mapping[str, Any] | LossSpec | None = None) -> ComboLoss:
    """Loss from a member's `loss:` mapping, e.g. {bce: 1.0, dice: 1.0, boundary_weight: 2.0}.

    Terms (LOSS_TERMS): bce (boundary-weighted), dice, jaccard, lovasz, focal (weights; 0 = off).
    Options (LOSS_OPTIONS): boundary_weight (extra weight at the outline, 0 = plain BCE), kernel
    (null = by height), aux_weight (deep-supervision outputs), weighted_dice (Dice also
    boundary-weighted), focal_gamma. A spec naming no term at all means {bce: 1, dice: 1};
    otherwise unnamed terms are off. A bad key or value: ValueError naming it and the fix.
    """
    return ComboLoss(spec)


# ----------------------------------------------------------------------- registry and schema


@dataclass(frozen=True)
class LossTerm:
    """A registry entry: one weighted term of the combination and how it is built."""

    name: str
    build: Callable[[Mapping[str, Any]], nn.Module]  # (resolved options) -> module
    default_weight: float  # its weight when a spec names no term at all
    about: str


@dataclass(frozen=True)
class LossOption:
    """A registry entry: a setting shared by the terms, its type (with range) and default."""

    name: str
    annotation: Any
    default: Any
    about: str


def _odd_kernel(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"must be null or a positive odd integer (e.g. {value + 1})")
    return value


_Weight = Annotated[float, Field(ge=0, strict=True)] | None  # None = 0; strict: no strings

LOSS_TERMS: dict[str, LossTerm] = {
    term.name: term
    for term in (
        LossTerm("bce", lambda o: WeightedBCE(o["boundary_weight"], o["kernel"]), 1.0, "BCE"),
        LossTerm(
            "dice",
            lambda o: (
                WeightedSoftDice()
                if o["weighted_dice"]
                else smp.losses.DiceLoss("binary", from_logits=True)
            ),
            1.0,
            "soft Dice (boundary-weighted with weighted_dice)",
        ),
        LossTerm(
            "jaccard",
            lambda o: smp.losses.JaccardLoss("binary", from_logits=True),
            0.0,
            "soft IoU",
        ),
        LossTerm(
            "lovasz",
            lambda o: smp.losses.LovaszLoss("binary", per_image=False),
            0.0,
            "Lovasz hinge over the batch",
        ),
        LossTerm(
            "focal",
            lambda o: smp.losses.FocalLoss("binary", gamma=o["focal_gamma"]),
            0.0,
            "focal loss (focal_gamma)",
        ),
    )
}
LOSS_OPTIONS: dict[str, LossOption] = {
    option.name: option
    for option in (
        LossOption("boundary_weight", _Weight, 2.0, "extra weight at the outline; 0 = plain"),
        LossOption(
            "kernel",
            Annotated[int, Field(ge=1, strict=True), AfterValidator(_odd_kernel)] | None,
            None,
            "boundary window side (odd); null = by image height",
        ),
        LossOption("aux_weight", _Weight, 0.4, "weight of the deep-supervision outputs"),
        LossOption("weighted_dice", bool, False, "boundary-weight the Dice term too"),
        LossOption("focal_gamma", Annotated[float, Field(ge=0)], 2.0, "focal exponent"),
    )
}
DEFAULT_SPEC: dict[str, Any] = {
    **{name: term.default_weight for name, term in LOSS_TERMS.items()},
    **{name: option.default for name, option in LOSS_OPTIONS.items()},
}


class _LossBase(LossSpec):
    """The behaviour of a `loss:` mapping; its keys are added from the registry (LossConfig)."""

    def weights(self) -> dict[str, float]:
        """Each term's weight as applied: naming no term means the registry's defaults (bce +
        dice); naming any turns the unnamed ones off."""
        if not self.model_fields_set & LOSS_TERMS.keys():
            return {name: term.default_weight for name, term in LOSS_TERMS.items()}
        return {name: float(getattr(self, name) or 0.0) for name in LOSS_TERMS}

    def options(self) -> dict[str, Any]:
        """The options with defaults filled in, null weights as 0."""
        return {
            "boundary_weight": float(self.boundary_weight or 0.0),
            "kernel": self.kernel,
            "aux_weight": float(self.aux_weight or 0.0),
            "weighted_dice": bool(self.weighted_dice),
            "focal_gamma": float(self.focal_gamma),
        }

    @model_validator(mode="after")
    def _some_term_on(self) -> _LossBase:
        if not any(self.weights().values()):
            raise ValueError(
                f"every loss term has weight 0: give one of {', '.join(LOSS_TERMS)} a weight > 0"
            )
        return self


LossConfig = create_model(
    "LossConfig",
    __base__=_LossBase,
    __module__=__name__,
    __doc__="A member's `loss:` mapping, checked against LOSS_TERMS and LOSS_OPTIONS.",
    **{
        name: (_Weight, Field(default=None, description=f"weight of: {term.about}"))
        for name, term in LOSS_TERMS.items()
    },
    **{
        name: (option.annotation, Field(default=option.default, description=option.about))
        for name, option in LOSS_OPTIONS.items()
    },
)
