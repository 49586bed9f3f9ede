"""One inference path for validation (training), the OOF score (05) and the submission (06).

Whatever scores a model must compute its probabilities the way 06 submits them, or a tuned
threshold or weight is tuned on something else. So the pieces live here once:

- the device choice (`pick_device`) and the members (`load_members`, `members_from_ensemble`);
- the uint8 -> ImageNet normalisation on the device (`normalise`);
- the forward pass with optional hflip TTA under the precision policy of `precision.py`
  (`forward_logits`, `probs_from_logits`, `forward_probs`), and with any TTA setting of
  `kaggle_utils.tta` (`forward_tta_probs`: what 05 scores and 06 submits);
- the weighted blend at full resolution (`blend_probs`, `ensemble_probs`), the masks
  (`binarize`) and their Dice (`dice_masks`).

`predict` (06) and `ensemble` (05) both import from here and never from each other.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kaggle_utils.config import GuidedFilterConfig
from kaggle_utils.constants import IMAGENET_MEAN, IMAGENET_STD
from kaggle_utils.precision import autocast
from kaggle_utils.refine import guided_upsample
from kaggle_utils.tta import TTASetting, tta_probs

__all__ = [
    "MODES",
    "Member",
    "binarize",
    "blend_probs",
    "dice_masks",
    "ensemble_probs",
    "forward_logits",
    "forward_probs",
    "forward_tta_probs",
    "load_members",
    "members_from_ensemble",
    "normalise",
    "pick_device",
    "probs_from_logits",
]

MODES = ("mean", "vote")


# --------------------------------------------------------------------------------------------------
# device and members


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The one device choice of the workflow: None/""/"auto" -> cuda when present, else cpu.

    A CUDA device asked for where torch sees none fails here, naming the fix, rather than deep
    inside the first forward pass.
    """
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={str(device)!r} asked for, but torch sees no CUDA device here: pass "
            "device=None (or 'auto') to use the CPU, or run on a machine with a GPU and a CUDA "
            "build of torch"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(
            f"device={str(device)!r} asked for, but torch sees {torch.cuda.device_count()} CUDA "
            "device(s): pick an index below that, or device=None"
        )
    return dev


@dataclass
class Member:
    """One trained model ready to predict: its network, input size (H, W) and ensemble weight."""

    name: str
    model: torch.nn.Module
    size: tuple[int, int]
    weight: float = 1.0
    checkpoint: str = ""
    info: dict = field(default_factory=dict)


def load_members(
    checkpoints: Sequence[str | os.PathLike],
    weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    names: Sequence[str] | None = None,
) -> list[Member]:
    """Load member checkpoints for inference; a missing file fails naming its path."""
    from kaggle_utils.checkpoint import load_member_model

    if not checkpoints:
        raise ValueError("no member checkpoints given: an ensemble needs at least one member")
    if weights is not None and len(weights) != len(checkpoints):
        raise ValueError(f"{len(weights)} weights for {len(checkpoints)} member checkpoints")
    members = []
    for i, path in enumerate(checkpoints):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"member checkpoint not found: {path}")
        model, info = load_member_model(path, device=device)
        model.eval()
        size = tuple(int(s) for s in info["size"])
        name = names[i] if names else str(info.get("member") or path.parent.parent.name)
        w = float(weights[i]) if weights is not None else 1.0
        members.append(Member(name, model, size, w, str(path), dict(info)))  # type: ignore[arg-type]
    if sum(m.weight for m in members) <= 0:
        raise ValueError(
            f"member weights must have a positive sum, got {[m.weight for m in members]}"
        )
    return members


def members_from_ensemble(
    ensemble: dict,
    run_dir: str | os.PathLike | Sequence[str | os.PathLike],
    device: str | torch.device = "cpu",
) -> list[Member]:
    """Members named by an `ensemble.yaml` (05's output); checkpoint paths relative to run_dir.

    run_dir may be several folders (the run folder and its upstream copies on Kaggle): a relative
    checkpoint is taken from the first that holds it. Members weighted 0 by the OOF search are
    skipped (they cannot change the average).
    """
    roots = (
        [Path(run_dir)] if isinstance(run_dir, (str, os.PathLike)) else [Path(r) for r in run_dir]
    )
    specs = ensemble.get("members") or []
    if not specs:
        raise ValueError("ensemble.yaml lists no members")
    dropped = [s.get("name", s["checkpoint"]) for s in specs if float(s.get("weight", 1.0)) <= 0]
    if dropped:
        print(f"members with weight 0 are not run: {', '.join(map(str, dropped))}", flush=True)
    specs = [s for s in specs if float(s.get("weight", 1.0)) > 0]
    if not specs:
        raise ValueError("every member of the ensemble has weight 0")
    paths = []
    for spec in specs:
        p = Path(spec["checkpoint"])
        if not p.is_absolute():
            p = next((r / p for r in roots if (r / p).is_file()), roots[0] / p)
        paths.append(p)
    return load_members(
        paths,
        weights=[float(s.get("weight", 1.0)) for s in specs],
        device=device,
        names=[str(s.get("name", Path(s["checkpoint"]).parent.parent.name)) for s in specs],
    )


# --------------------------------------------------------------------------------------------------
# forward


def normalise(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 (N,3,H,W) RGB -> float32 ImageNet-normalised on `device` (channels_last on CUDA).

    Done on the device so the loader hands over uint8 (a quarter of the bytes of float32)."""
    device = torch.device(device)
    mean = torch.as_tensor(np.asarray(IMAGENET_MEAN, np.float32) * 255.0, device=device)
    std = torch.as_tensor(np.asarray(IMAGENET_STD, np.float32) * 255.0, device=device)
    x = x.to(device, non_blocking=True).float()
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def forward_logits(
    model: torch.nn.Module, x: torch.Tensor, *, tta: bool = False, precision: str = "32-true"
) -> torch.Tensor:
    """Logits (N,1,h,w) float32, or (2N,1,h,w) of [x, flip(x)] with tta (one batched forward).

    Autocast follows `precision` (a `precision.precision_for` string), so validation and 06 run
    the model alike. A model returning (logits, aux) (deep supervision) gives its main output.
    No gradients: the training engine's validation loss is computed from these, not trained on.
    """
    with autocast(x.device, precision):
        out = model(torch.cat([x, x.flip(-1)]) if tta else x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.float()


def probs_from_logits(logits: torch.Tensor, n: int, tta: bool) -> torch.Tensor:
    """Sigmoid probabilities (n,1,h,w) of `forward_logits`' output: with tta the mean of the
    plain pass and the mirrored pass flipped back. The plain pass's loss is `logits[:n]`."""
    expected = 2 * n if tta else n
    if logits.shape[0] != expected:
        raise ValueError(
            f"{logits.shape[0]} logits for n={n} images with tta={tta}: expected {expected} "
            "(forward_logits with the same tta)"
        )
    probs = torch.sigmoid(logits[:n])
    if tta:
        probs = (probs + torch.sigmoid(logits[n:]).flip(-1)) * 0.5
    return probs


def forward_probs(
    model: torch.nn.Module, x: torch.Tensor, *, tta: bool = False, precision: str = "32-true"
) -> torch.Tensor:
    """Sigmoid probabilities (N,1,h,w) float32 at x's size; with tta averaged with the mirrored
    pass (one batched forward of [x, flip(x)])."""
    logits = forward_logits(model, x, tta=tta, precision=precision)
    return probs_from_logits(logits, x.shape[0], tta)


def forward_tta_probs(
    model: torch.nn.Module,
    x: torch.Tensor,
    tta: bool | str | Sequence[str] | TTASetting = True,
    *,
    precision: str = "32-true",
    cache: dict | None = None,
) -> torch.Tensor:
    """Probabilities (N,1,h,w) of a TTA setting (`tta.parse_setting`'s forms: a bool, a preset,
    transform names): the mean of its de-augmented passes, transforms of one size batched in
    one forward. tta=True/False is exactly `forward_probs`' mirror average / plain pass.
    cache: one dict per batch x, shared across settings (05 scores candidates from one pass)."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        return forward_logits(model, batch, precision=precision)

    return tta_probs(run, x, tta, cache)


# --------------------------------------------------------------------------------------------------
# blend, binarise, score


@torch.inference_mode()
def ensemble_probs(
    members: Sequence[Member],
    images: Sequence[torch.Tensor],
    size_index: Sequence[int],
    out_shape: tuple[int, int],
    tta: bool | str | Sequence[str] | TTASetting = True,
    mode: str = "mean",
    threshold: float = 0.5,
    precision: str = "32-true",
    guide: torch.Tensor | None = None,
    guided: GuidedFilterConfig | None = None,
) -> torch.Tensor:
    """Weighted ensemble at full resolution (N,1,H,W): mean of probabilities or a weighted vote
    (`blend_probs` of each member's `forward_tta_probs` on its own input size, images[size_index];
    tta: a bool or any `kaggle_utils.tta` setting)."""
    probs = [
        forward_tta_probs(m.model, images[k], tta, precision=precision)
        for m, k in zip(members, size_index, strict=True)
    ]
    weights = [m.weight for m in members]
    return blend_probs(probs, weights, out_shape, mode, threshold, guide=guide, guided=guided)


def _upsample(p: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(p.shape[-2:]) == tuple(size):
        return p
    return F.interpolate(p, size=tuple(size), mode="bilinear", align_corners=False)


def blend_probs(
    probs: Sequence[torch.Tensor],
    weights: Sequence[float],
    out_shape: tuple[int, int],
    mode: str = "mean",
    threshold: float = 0.5,
    guide: torch.Tensor | None = None,
    guided: GuidedFilterConfig | None = None,
) -> torch.Tensor:
    """Members' probabilities (N,1,h_m,w_m) -> the weighted blend (N,1,H,W) at full resolution.

    guide, guided: upsample through ``refine.guided_upsample`` with this gray guide (N,1,h,w)
    first. Bilinear upsampling and the guided filter are both linear in the probabilities, so
    members sharing a size are summed before one upsample, and the mean is filtered once.
    Shared by the submission (06) and the OOF score of what it submits (05).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose from {', '.join(MODES)}")
    if (guide is None) != (guided is None):
        raise ValueError("blend_probs needs both guide and guided, or neither")

    def to_full(p: torch.Tensor) -> torch.Tensor:
        if guided is not None:
            p = guided_upsample(p, guide, guided.radius, guided.eps)
        return _upsample(p, out_shape)

    total = float(sum(weights))
    by_size: dict[tuple[int, ...], torch.Tensor] = {}
    for p, weight in zip(probs, weights, strict=True):
        key = tuple(p.shape[-2:])
        if mode == "vote":
            p, key = (to_full(p) > threshold).float(), ()
        p = p * (weight / total)
        by_size[key] = p if key not in by_size else by_size[key] + p
    if mode == "vote":
        return by_size[()]
    if guided is not None:  # one guided filter on the weighted mean, at the guide's size
        size = tuple(guide.shape[-2:])
        return to_full(sum(_upsample(p, size) for p in by_size.values()))
    return sum(_upsample(p, out_shape) for p in by_size.values())


def binarize(probs: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """The masks of ``blend_probs``'s output: the mean above the threshold, or a weighted vote
    above one half (its members were thresholded already; a tie is no majority)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose from {', '.join(MODES)}")
    return probs > (0.5 if mode == "vote" else threshold)


def dice_masks(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two {0,1} masks; empty vs empty counts as 1 (Kaggle's rule)."""
    p = pred.astype(bool)
    t = truth.astype(bool)
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denom
