"""Scoring an ensemble on OOF probabilities: Kaggle's metric (mean over images of Dice at full
resolution, probabilities upsampled bilinearly to the mask's size as 06 does).

For speed every candidate is scored from per-image histograms of the (quantised, 1/255) ensemble
probability split by truth, so one pass over the images scores a whole grid of thresholds at
once (`image_dice`); `submitted_score` builds the masks 06 writes, one choice at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from kaggle_utils.ensemble.base import BINS, DEFAULT_THRESHOLDS, angle_of, car_of, single_thread
from kaggle_utils.ensemble.oof import OOFSet
from kaggle_utils.inference import binarize, blend_probs, dice_masks
from kaggle_utils.postprocess import keep_largest_component

__all__ = [
    "dice_from_hist",
    "ensemble_prob",
    "image_dice",
    "member_table",
    "plot_dice_by_angle",
    "score",
    "settings_table",
    "submitted_score",
]


def _hist(p: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(C, K) probabilities in [0, 1] + (K,) bool truth -> (C, 2, BINS) counts by quantised p."""
    c = p.shape[0]
    q = (p * (BINS - 1)).round().clamp_(0, BINS - 1).long()
    q = q + truth.long()[None] * BINS + torch.arange(c, device=p.device).view(c, 1) * 2 * BINS
    return torch.bincount(q.flatten(), minlength=c * 2 * BINS).view(c, 2, BINS)


def dice_from_hist(
    h: torch.Tensor,
    thresholds: Sequence[float],
    tp0: int = 0,
    fp0: int = 0,
    npos: int | None = None,
) -> torch.Tensor:
    """Per-image Dice (..., T) for `p > t` from (..., 2, BINS) histograms; empty vs empty = 1.

    tp0/fp0: pixels predicted positive outside the histogram; npos: all car pixels (default: the
    histogram's).
    """
    h = h.double()
    neg, pos = h[..., 0, :], h[..., 1, :]
    above_pos = pos.flip(-1).cumsum(-1).flip(-1)  # count with bin >= k
    above_neg = neg.flip(-1).cumsum(-1).flip(-1)
    k = torch.tensor([int(np.floor(t * (BINS - 1))) + 1 for t in thresholds], device=h.device)
    k = k.clamp(max=BINS - 1)
    tp = above_pos[..., k] + tp0
    fp = above_neg[..., k] + fp0
    total = pos.sum(-1, keepdim=True) if npos is None else torch.full_like(tp[..., :1], npos)
    denom = tp + fp + total
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(denom))


def image_dice(
    oof: OOFSet,
    weights: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    mode: str = "mean",
) -> np.ndarray:
    """Per-image Dice, shape (N, C, T), for C candidate weight vectors (C, M) and T thresholds.

    mode="mean": threshold the weighted mean probability; "vote": each member thresholded, then the
    weighted vote must exceed one half (a tie is no majority, as in `predict`).
    """
    if mode not in ("mean", "vote"):
        raise ValueError(f"mode={mode!r}: choose 'mean' or 'vote'")
    oof.check_thresholds(thresholds)
    w = torch.as_tensor(np.atleast_2d(np.asarray(weights, np.float64)), dtype=torch.float32)
    w = (w / w.sum(1, keepdim=True).clamp(min=1e-12)).to(oof.device)
    out = np.zeros((len(oof.ids), w.shape[0], len(thresholds)))
    with single_thread(oof.device):
        _image_dice(oof, w, thresholds, mode, out)
    return out


def _image_dice(
    oof: OOFSet, w: torch.Tensor, thresholds: Sequence[float], mode: str, out: np.ndarray
) -> None:
    for n, image_id in enumerate(oof.ids):
        prep = oof.prepared(image_id)
        up = prep.probs.float() / (BINS - 1)
        if mode == "mean":
            p = w @ up  # (C, K)
            h = _hist(p, prep.truth)
            out[n] = dice_from_hist(h, thresholds, prep.tp0, prep.fp0, prep.npos).cpu().numpy()
            continue
        for j, t in enumerate(thresholds):
            pred = (w @ (up > t).float()) > 0.5 + 1e-6
            tp = (pred & prep.truth[None]).sum(1).double() + prep.tp0
            fp = (pred & ~prep.truth[None]).sum(1).double() + prep.fp0
            denom = tp + fp + prep.npos
            d = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(denom))
            out[n, :, j] = d.cpu().numpy()


def _per_image(ids: Sequence[str], dice: Sequence[float] | np.ndarray) -> pd.DataFrame:
    """The per-image frame 05 shows and plots: id, car, angle, dice."""
    return pd.DataFrame(
        {
            "id": list(ids),
            "car": [car_of(i) for i in ids],
            "angle": [angle_of(i) for i in ids],
            "dice": dice,
        }
    )


def score(
    oof: OOFSet, weights: Sequence[float], threshold: float = 0.5, mode: str = "mean"
) -> pd.DataFrame:
    """Per-image Dice (id, car, angle, dice) of one weighting at one threshold."""
    d = image_dice(oof, np.asarray(weights, np.float64)[None], [threshold], mode)[:, 0, 0]
    return _per_image(oof.ids, d)


def submitted_score(
    oof: OOFSet,
    weights: Sequence[float],
    threshold: float = 0.5,
    mode: str = "mean",
    largest_component: bool = False,
    guided_filter: Any = None,
) -> pd.DataFrame:
    """Per-image Dice (id, car, angle, dice) of the masks 06 writes for these validation images.

    `score` searches weights and thresholds on bilinear upsampling; 06 may then upsample through
    the guided filter and keep the largest component, which need each mask whole and the photo.
    This builds each mask as 06 does (`inference.blend_probs`, `postprocess`), for one choice.
    """
    from kaggle_utils.config import GuidedFilterConfig

    gf = GuidedFilterConfig(**guided_filter) if isinstance(guided_filter, dict) else guided_filter
    weights = [float(w) for w in weights]
    dice = []
    with single_thread(oof.device):
        for image_id in oof.ids:
            truth = np.ascontiguousarray(oof.data.load_mask(image_id))
            mask = _submitted_mask(oof, image_id, truth.shape[:2], weights, threshold, mode, gf)
            if largest_component:
                mask = keep_largest_component(mask)
            dice.append(dice_masks(mask, truth))
    return _per_image(oof.ids, dice)


def _submitted_mask(
    oof: OOFSet,
    image_id: str,
    shape: tuple[int, int],
    weights: list[float],
    threshold: float,
    mode: str,
    gf: Any,
) -> np.ndarray:
    """One image's bool mask at `shape` as 06 builds it: blend, (guided) upsample, binarise."""
    from kaggle_utils.imageio import load_guide
    from kaggle_utils.refine import to_guide

    probs = [
        torch.from_numpy(p[image_id]).to(oof.device).float()[None, None] / (BINS - 1)
        for p in oof.probs
    ]
    guide = None
    if gf is not None:
        gray = load_guide(oof.data, image_id, shape, gf.scale, split="train")
        guide = to_guide(torch.from_numpy(gray)[None, None]).to(oof.device)
    p = blend_probs(probs, weights, shape, mode, threshold, guide, gf)
    return binarize(p, mode, threshold)[0, 0].cpu().numpy()


def member_table(oof: OOFSet, threshold: float = 0.5, label: str = "") -> pd.DataFrame:
    """Each member alone, the equal-weight mean and the majority vote, Dice at `threshold`."""
    m = len(oof.members)
    cands = np.vstack([np.eye(m), np.ones((1, m))])
    mean = image_dice(oof, cands, [threshold], "mean")[:, :, 0].mean(0)
    vote = image_dice(oof, np.ones((1, m)), [threshold], "vote")[:, 0, 0].mean()
    names = [*oof.members, "mean (equal weights)", "vote (equal weights)"]
    out = pd.DataFrame({"model": names, "dice": [*mean, vote]})
    if label:
        out["setting"] = label
    return out


def settings_table(sources: dict[str, OOFSet], threshold: float = 0.5) -> pd.DataFrame:
    """Dice of each member alone, the mean and the vote (rows) for each probability source (columns)."""
    tables = [member_table(oof, threshold, label) for label, oof in sources.items()]
    long = pd.concat(tables, ignore_index=True)
    return long.pivot(index="model", columns="setting", values="dice")[list(sources)]


def ensemble_prob(oof: OOFSet, image_id: str, weights: Sequence[float]) -> np.ndarray:
    """Full-resolution weighted-mean probability of one image in [0, 1] (for the error viewer)."""
    w = torch.as_tensor(np.asarray(weights, np.float32)).to(oof.device)
    w = w / w.sum()
    up = oof.upsampled(image_id).float() / (BINS - 1)
    return torch.einsum("m,mhw->hw", w, up).clamp(0, 1).cpu().numpy()


def plot_dice_by_angle(
    per_image: pd.DataFrame, ax: Any = None, title: str = "OOF Dice by angle"
) -> Any:
    """Bar chart of mean Dice per angle (1..16): where the ensemble struggles. The legend sits
    outside the axes, right of angle 16, so it never covers a bar."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    by = per_image.groupby("angle")["dice"].agg(["mean", "min"])
    ax.bar(by.index, by["mean"], color="tab:blue", label="mean")
    ax.plot(by.index, by["min"], "o", color="tab:red", label="worst image")
    lo = float(min(by["min"].min(), by["mean"].min()))
    ax.set_ylim(max(0.0, lo - 0.01), 1.0)
    ax.set_xticks(list(by.index))
    ax.set_xlabel("angle")
    ax.set_ylabel("Dice")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)
    ax.figure.tight_layout()
    return ax.figure
