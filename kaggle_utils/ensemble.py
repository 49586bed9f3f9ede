"""OOF-tuned ensembling: a leaderboard of members, member weights and threshold chosen on OOF Dice.

Scores are Kaggle's: mean over images of Dice at full resolution (probabilities upsampled bilinearly
to the mask's size, as `predict` does). For speed every candidate is scored from per-image
histograms of the (quantised, 1/255) ensemble probability split by truth, so one pass over the images
scores a whole grid of thresholds at once.

Weights are chosen by coordinate ascent on a coarse non-negative grid (normalised to sum 1), starting
from equal weights at threshold 0.5 and accepting a move only when it gains more than `min_gain`.
The choice is cross-validated by car: choose on half the validation cars and score on the other half,
and vice versa (`cross_validate`); `keep_if_it_holds` then keeps the tuned choice only when it beats
equal weights and the best single member on held-out cars (tiny validation sets overfit).

hflip TTA: stored OOF predictions (<run_dir>/<member>/<stage>/oof/*.png) are whatever the training
loop saved (mirror-averaged only for members with `val_tta`), so TTA on/off is scored by
re-predicting the validation images with the stage's checkpoint (`repredict`), which is also the
probability source the weight search uses when the ensemble submits with TTA: what is tuned is
what is submitted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from kaggle_utils.postprocess import keep_largest_component

BINS = 256
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


# --------------------------------------------------------------------------------------------------
# run folder: stages, leaderboard


@dataclass
class StageRun:
    """One trained (member, stage) folder in a run."""

    member: str
    stage: str
    path: Path
    metrics: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path:
        best = self.path / "best.pt"
        return best if best.is_file() else self.path / "last.pt"

    @property
    def oof_dir(self) -> Path:
        return self.path / "oof"

    def oof_ids(self) -> list[str]:
        """Validation ids with OOF predictions: oof.csv's (written last, so a PNG left over from
        an earlier split of a retrained stage never counts), else the PNGs present."""
        oof_csv = self.path / "oof.csv"
        if oof_csv.is_file():
            ids = pd.read_csv(oof_csv, usecols=["id"])["id"].astype(str)
            return sorted(i for i in ids if (self.oof_dir / f"{i}.png").is_file())
        return sorted(p.stem for p in self.oof_dir.glob("*.png")) if self.oof_dir.is_dir() else []

    @property
    def size(self) -> tuple[int, int] | None:
        for src in (self.metrics, self.params):
            for key in ("size", "stage_size"):
                if key in src and src[key] is not None:
                    v = src[key]
                    return (int(v[0]), int(v[1]))
        stage = self.params.get("stage")
        if isinstance(stage, dict) and "size" in stage:
            return (int(stage["size"][0]), int(stage["size"][1]))
        tail = self.stage.rsplit("_", 1)[-1]  # "s1_96x144"
        if "x" in tail:
            h, _, w = tail.partition("x")
            if h.isdigit() and w.isdigit():
                return (int(h), int(w))
        return None

    @property
    def cv_dice(self) -> float:
        for key in ("best_dice", "dice", "val_dice", "best_val_dice", "cv_dice"):
            v = self.metrics.get(key)
            if isinstance(v, (int, float)):
                return float(v)
        oof_csv = self.path / "oof.csv"
        if oof_csv.is_file():
            return float(pd.read_csv(oof_csv)["dice"].mean())
        return float("nan")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        out = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    return out if isinstance(out, dict) else {}


def find_stages(
    run_dir: str | os.PathLike | Sequence[str | os.PathLike], members: Sequence[str] | None = None
) -> list[StageRun]:
    """Every <run_dir>/<member>[/fold<k>]/<stage>/ with a checkpoint or metrics.json.

    run_dir may be several folders (on Kaggle each upstream member kernel mounts its own copy of the
    run folder); a (member, stage) found twice is taken from the first folder. A member trained on
    a non-default fold is named "<member>/fold<k>"; `members` filters by member name.
    """
    roots = (
        [Path(run_dir)] if isinstance(run_dir, (str, os.PathLike)) else [Path(r) for r in run_dir]
    )
    existing = [r for r in roots if r.is_dir()]
    if not existing:
        raise FileNotFoundError(f"run folder not found: {', '.join(map(str, roots))}")
    found: dict[tuple[str, str], StageRun] = {}
    for root in existing:
        dirs = sorted([*root.glob("*/*"), *root.glob("*/fold*/*")])
        for stage_dir in dirs:
            if not stage_dir.is_dir():
                continue
            if not any((stage_dir / f).is_file() for f in ("metrics.json", "best.pt", "last.pt")):
                continue
            member = stage_dir.parent.relative_to(root).as_posix()  # "m1" or "m1/fold2"
            if members is not None and member.split("/")[0] not in members:
                continue
            found.setdefault(
                (member, stage_dir.name),
                StageRun(
                    member,
                    stage_dir.name,
                    stage_dir,
                    _read_json(stage_dir / "metrics.json"),
                    _read_json(stage_dir / "params.json"),
                ),
            )
    return sorted(found.values(), key=lambda s: (s.member, s.stage))


def member_names(ensemble_file: str | os.PathLike) -> list[str]:
    """Names of the members an ensemble parameter file lists (their run-folder names)."""
    from kaggle_utils.config import load_ensemble, load_member

    cfg = load_ensemble(ensemble_file)
    return [load_member(p).name for p in cfg.member_paths(ensemble_file)]


def _model_summary(stage: StageRun) -> dict[str, Any]:
    member = stage.params.get("member")
    spec = member.get("model") if isinstance(member, dict) else None
    out: dict[str, Any] = {}
    if spec is None and stage.checkpoint.is_file():
        from kaggle_utils.checkpoint import load_checkpoint

        spec = load_checkpoint(stage.checkpoint).get("model_spec")
    if spec:
        out["arch"] = spec.get("arch")
        out["encoder"] = spec.get("encoder")
    if stage.checkpoint.is_file():
        state = torch.load(stage.checkpoint, map_location="cpu", weights_only=False, mmap=True)
        out["params_M"] = round(sum(t.numel() for t in state["model"].values()) / 1e6, 2)
    return out


def leaderboard(run_dir: Any, members: Sequence[str] | None = None) -> pd.DataFrame:
    """Members x stages: CV Dice, resolution, OOF count, model, sorted best first."""
    rows = []
    for s in find_stages(run_dir, members):
        size = s.size
        rows.append(
            {
                "member": s.member,
                "stage": s.stage,
                "size": f"{size[0]}x{size[1]}" if size else "?",
                "cv_dice": s.cv_dice,
                "oof_images": len(s.oof_ids()),
                "epochs": s.metrics.get("epochs", s.metrics.get("epoch")),
                **_model_summary(s),
                "checkpoint": str(s.checkpoint) if s.checkpoint.is_file() else None,
            }
        )
    if not rows:
        raise FileNotFoundError(f"no trained member stages under {run_dir} (<member>/<stage>/)")
    return pd.DataFrame(rows).sort_values("cv_dice", ascending=False, ignore_index=True)


def pick_stages(stages: Sequence[StageRun], how: str = "best") -> list[StageRun]:
    """One stage per member: the best CV Dice ("best") or the last, highest resolution ("last")."""
    if how not in ("best", "last"):
        raise ValueError(f"how={how!r}: choose 'best' or 'last'")
    by_member: dict[str, list[StageRun]] = {}
    for s in stages:
        if s.checkpoint.is_file():
            by_member.setdefault(s.member, []).append(s)
    picked = []
    for runs in by_member.values():
        if how == "last":
            picked.append(max(runs, key=lambda r: (np.prod(r.size or (0, 0)), r.stage)))
        else:
            picked.append(max(runs, key=lambda r: np.nan_to_num(r.cv_dice, nan=-1.0)))
    return sorted(picked, key=lambda r: r.member)


# --------------------------------------------------------------------------------------------------
# OOF probabilities


def read_oof(stage: StageRun, ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Stored OOF probabilities {id: uint8 (h, w)} (prob*255 at the stage's training size)."""
    import cv2

    ids = stage.oof_ids() if ids is None else list(ids)
    out = {}
    for i in ids:
        path = stage.oof_dir / f"{i}.png"
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise FileNotFoundError(f"OOF prediction missing or unreadable: {path}")
        if img.ndim == 3:
            img = img[..., 0]
        if img.dtype == np.uint16:
            img = (img // 257).astype(np.uint8)
        out[i] = img
    return out


@torch.inference_mode()
def repredict(
    checkpoint: str | os.PathLike,
    data: Any,
    ids: Sequence[str],
    tta: bool,
    device: str = "cpu",
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """Probabilities {id: uint8 (h, w)} for train images from a member checkpoint, hflip TTA optional."""
    from kaggle_utils.predict import load_members

    (member,) = load_members([checkpoint], device=device)
    dev = torch.device(device)
    out: dict[str, np.ndarray] = {}
    ids = list(ids)
    with single_thread(dev):
        _repredict(member, data, ids, tta, dev, batch_size, out)
    return out


def _repredict(
    member: Any, data: Any, ids: list[str], tta: bool, dev, batch_size: int, out: dict
) -> None:
    from kaggle_utils.predict import _normalise, member_probs

    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        imgs = np.stack([data.load_image(i, split="train", size=member.size) for i in chunk])
        x = _normalise(torch.from_numpy(imgs).permute(0, 3, 1, 2), dev)
        p = member_probs(member.model, x, tta)[:, 0]
        u8 = (p * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        out.update(zip(chunk, u8, strict=True))


@dataclass
class Prepared:
    """One image reduced to what any threshold in the band can change.

    Pixels where every member is below the band (or above it) are decided whatever the weights and
    threshold, so they are counted once (tp0, fp0); only the uncertain pixels are kept.
    """

    probs: torch.Tensor  # (M, K) uint8 upsampled probabilities of the uncertain pixels
    truth: torch.Tensor  # (K,) bool
    tp0: int  # certain-positive pixels on the car
    fp0: int  # certain-positive pixels off the car
    npos: int  # car pixels in the whole mask


@dataclass
class OOFSet:
    """Aligned OOF probabilities of several members and their full-resolution truth.

    probs[m][id] is uint8 (h_m, w_m). Each image is upsampled once (bilinear, as at submission) and
    reduced to its uncertain pixels (`Prepared`), which keeps 5,000 full-resolution images in memory
    and makes each candidate evaluation cheap. Thresholds must lie inside `band`.
    """

    members: list[str]
    ids: list[str]
    probs: list[dict[str, np.ndarray]]
    data: Any
    device: str = "cpu"
    band: tuple[float, float] = (0.1, 0.9)
    _prepared: dict[str, Prepared] = field(default_factory=dict, repr=False)

    def upsampled(self, image_id: str, shape: tuple[int, int] | None = None) -> torch.Tensor:
        """(M, H, W) uint8 probabilities at the mask's resolution."""
        shape = shape or tuple(self.data.load_mask(image_id).shape)
        ups = []
        for probs in self.probs:
            p = torch.from_numpy(probs[image_id]).to(self.device).float()[None, None]
            if tuple(p.shape[-2:]) != tuple(shape):
                p = F.interpolate(p, size=shape, mode="bilinear", align_corners=False)
            ups.append(p[0, 0].round().clamp(0, 255).to(torch.uint8))
        return torch.stack(ups)

    def prepared(self, image_id: str) -> Prepared:
        if image_id in self._prepared:
            return self._prepared[image_id]
        with single_thread(self.device):
            return self._prepare(image_id)

    def _prepare(self, image_id: str) -> Prepared:
        truth = torch.from_numpy(np.ascontiguousarray(self.data.load_mask(image_id)))
        truth = truth.to(self.device).bool()
        up = self.upsampled(image_id, tuple(truth.shape))
        lo = int(np.floor(self.band[0] * (BINS - 1)))
        hi = int(np.floor(self.band[1] * (BINS - 1))) + 1
        neg = up.amax(0) <= lo
        pos = up.amin(0) >= hi
        keep = ~(neg | pos)
        prep = Prepared(
            probs=up[:, keep].contiguous(),
            truth=truth[keep].contiguous(),
            tp0=int((pos & truth).sum()),
            fp0=int((pos & ~truth).sum()),
            npos=int(truth.sum()),
        )
        self._prepared[image_id] = prep
        return prep

    def subset(self, ids: Sequence[str]) -> OOFSet:
        sub = OOFSet(self.members, list(ids), self.probs, self.data, self.device, self.band)
        sub._prepared = self._prepared
        return sub

    def check_thresholds(self, thresholds: Sequence[float]) -> None:
        bad = [t for t in thresholds if not self.band[0] <= t <= self.band[1]]
        if bad:
            raise ValueError(f"thresholds {bad} lie outside the scored band {self.band}")


def oof_set(
    stages: Sequence[StageRun],
    data: Any,
    *,
    source: str = "oof",
    tta: bool = False,
    device: str = "cpu",
    max_images: int | None = None,
) -> OOFSet:
    """Probabilities of the given stages on the validation images they all share.

    source="oof": the stored PNGs; source="repredict": re-run each checkpoint (tta on/off).
    max_images keeps whole cars (first cars in sorted order) up to about that many images.
    """
    if not stages:
        raise ValueError("no member stages to ensemble")
    common = None
    for s in stages:
        ids = set(s.oof_ids())
        if not ids:
            raise FileNotFoundError(f"no OOF predictions in {s.oof_dir}")
        common = ids if common is None else common & ids
    ids = sorted(common or [])
    if not ids:
        raise ValueError(
            "the members share no validation image, so their OOF predictions cannot be "
            f"combined: {[f'{s.member}/{s.stage}' for s in stages]}. Train them on the same "
            "split: run 02_split first (every member then reads <run_dir>/folds.csv) and use "
            "the same fold"
        )
    if max_images is not None and len(ids) > max_images:
        cars = sorted({car_of(i) for i in ids})
        keep: list[str] = []
        for car in cars:
            if len(keep) >= max_images:
                break
            keep += [i for i in ids if car_of(i) == car]
        ids = keep
    if source == "oof":
        probs = [read_oof(s, ids) for s in stages]
    elif source == "repredict":
        probs = [repredict(s.checkpoint, data, ids, tta=tta, device=device) for s in stages]
    else:
        raise ValueError(f"source={source!r}: choose 'oof' or 'repredict'")
    return OOFSet([s.member for s in stages], ids, probs, data, device)


def probability_sources(
    stages: Sequence[StageRun],
    data: Any,
    *,
    tta: Sequence[str] = ("none", "hflip"),
    device: str = "cpu",
    max_images: int | None = None,
) -> dict[str, OOFSet]:
    """OOF sets per setting: "stored" (the training loop's PNGs, TTA as each member's `val_tta`)
    and the validation images re-predicted by each checkpoint with hflip TTA off ("none") and on
    ("hflip")."""
    out = {"stored": oof_set(stages, data, source="oof", max_images=max_images)}
    for setting in tta:
        if setting not in ("none", "hflip"):
            raise ValueError(f"tta setting {setting!r}: choose 'none' or 'hflip'")
        out[setting] = oof_set(
            stages,
            data,
            source="repredict",
            tta=setting == "hflip",
            device=device,
            max_images=max_images,
        )
    return out


def settings_table(sources: dict[str, OOFSet], threshold: float = 0.5) -> pd.DataFrame:
    """Dice of each member alone, the mean and the vote (rows) for each probability source (columns)."""
    tables = [member_table(oof, threshold, label) for label, oof in sources.items()]
    long = pd.concat(tables, ignore_index=True)
    return long.pivot(index="model", columns="setting", values="dice")[list(sources)]


def car_of(image_id: str) -> str:
    return str(image_id).rsplit("_", 1)[0]


def angle_of(image_id: str) -> int:
    return int(str(image_id).rsplit("_", 1)[1].split(".")[0])


# --------------------------------------------------------------------------------------------------
# scoring


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


def score(
    oof: OOFSet, weights: Sequence[float], threshold: float = 0.5, mode: str = "mean"
) -> pd.DataFrame:
    """Per-image Dice (id, car, angle, dice) of one weighting at one threshold."""
    d = image_dice(oof, np.asarray(weights, np.float64)[None], [threshold], mode)[:, 0, 0]
    return pd.DataFrame(
        {
            "id": oof.ids,
            "car": [car_of(i) for i in oof.ids],
            "angle": [angle_of(i) for i in oof.ids],
            "dice": d,
        }
    )


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
    This builds each mask as 06 does (`predict.blend_probs`, `postprocess`), for one choice.
    """
    from kaggle_utils.config import GuidedFilterConfig
    from kaggle_utils.predict import binarize, blend_probs, dice_masks
    from kaggle_utils.refine import load_guide, to_guide

    gf = GuidedFilterConfig(**guided_filter) if isinstance(guided_filter, dict) else guided_filter
    weights = [float(w) for w in weights]
    dice = []
    with single_thread(oof.device):
        for image_id in oof.ids:
            truth = np.ascontiguousarray(oof.data.load_mask(image_id))
            probs = [
                torch.from_numpy(p[image_id]).to(oof.device).float()[None, None] / (BINS - 1)
                for p in oof.probs
            ]
            guide = None
            if gf is not None:
                gray = load_guide(oof.data, image_id, truth.shape[:2], gf.scale, split="train")
                guide = to_guide(torch.from_numpy(gray)[None, None]).to(oof.device)
            p = blend_probs(probs, weights, truth.shape[:2], mode, threshold, guide, gf)
            mask = binarize(p, mode, threshold)[0, 0].cpu().numpy()
            if largest_component:
                mask = keep_largest_component(mask)
            dice.append(dice_masks(mask, truth))
    return pd.DataFrame(
        {
            "id": oof.ids,
            "car": [car_of(i) for i in oof.ids],
            "angle": [angle_of(i) for i in oof.ids],
            "dice": dice,
        }
    )


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


# --------------------------------------------------------------------------------------------------
# search


@dataclass
class Choice:
    weights: list[float]
    threshold: float
    dice: float
    history: list[dict] = field(default_factory=list)


def choose(
    oof: OOFSet,
    grid: Sequence[float] = DEFAULT_GRID,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    rounds: int = 3,
    mode: str = "mean",
    tune_weights: bool = True,
    fixed_threshold: float | None = None,
    min_gain: float = 1e-5,
) -> Choice:
    """Coordinate ascent on a coarse non-negative weight grid, threshold scored jointly.

    Starts from equal weights at threshold 0.5; a member's raw weight moves to another grid value,
    and the threshold away from 0.5, only when mean OOF Dice gains more than `min_gain`, so ties
    and noise keep the plain equal-weight ensemble. Weights are normalised to sum 1.
    """
    thr = [fixed_threshold] if fixed_threshold is not None else list(thresholds)
    m = len(oof.members)
    raw = np.ones(m)
    default_t = int(np.argmin(np.abs(np.asarray(thr) - 0.5)))

    def evaluate(cands: np.ndarray) -> np.ndarray:  # (C, T) mean Dice
        return image_dice(oof, cands, thr, mode).mean(0)

    def pick(row: np.ndarray) -> int:
        t = int(np.argmax(row))
        return t if row[t] > row[default_t] + min_gain else default_t

    cur = evaluate(raw[None])[0]
    best_t = pick(cur)
    best = float(cur[best_t])
    history = [{"round": 0, "weights": (raw / raw.sum()).round(4).tolist(), "dice": best}]
    if tune_weights and m > 1:
        for r in range(1, rounds + 1):
            changed = False
            for i in range(m):
                cands = []
                for g in grid:
                    if g == raw[i]:
                        continue
                    c = raw.copy()
                    c[i] = g
                    if c.sum() > 0:
                        cands.append(c)
                if not cands:
                    continue
                scores = evaluate(np.array(cands))
                picks = [pick(row) for row in scores]
                j = int(np.argmax([row[t] for row, t in zip(scores, picks, strict=True)]))
                t = picks[j]
                if scores[j, t] > best + min_gain:
                    raw, best, best_t, changed = cands[j], float(scores[j, t]), t, True
                    history.append(
                        {"round": r, "weights": (raw / raw.sum()).round(4).tolist(), "dice": best}
                    )
            if not changed:
                break
    w = raw / raw.sum()
    return Choice([float(x) for x in w], float(thr[best_t]), best, history)


def split_cars(ids: Sequence[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Two halves of the images, grouped by car (a car's 16 angles stay together)."""
    cars = sorted({car_of(i) for i in ids})
    rng = np.random.default_rng(seed)
    rng.shuffle(cars)
    half = set(cars[: len(cars) // 2])
    a = [i for i in ids if car_of(i) in half]
    b = [i for i in ids if car_of(i) not in half]
    return a, b


def cross_validate(oof: OOFSet, seed: int = 0, **choose_kw: Any) -> pd.DataFrame:
    """Two-fold CV of the choice by car: choose on one half, score on the other, and vice versa.

    Rows per direction: chosen weights/threshold, their in-sample and held-out Dice, and the held-out
    Dice of equal weights at 0.5 and of the best single member (chosen on the tuning half).
    """
    a, b = split_cars(oof.ids, seed)
    if not a or not b:
        raise ValueError(
            f"cross-validation needs validation images of >= 2 cars, got {oof.ids[:3]}"
        )
    rows = []
    m = len(oof.members)
    for name, tune_ids, test_ids in (("A->B", a, b), ("B->A", b, a)):
        tune, test = oof.subset(tune_ids), oof.subset(test_ids)
        c = choose(tune, **choose_kw)
        mode = choose_kw.get("mode", "mean")
        singles_tune = image_dice(tune, np.eye(m), [0.5], mode).mean(0)[:, 0]
        best_single = int(np.argmax(singles_tune))
        held = image_dice(
            test,
            np.vstack([c.weights, np.ones(m), np.eye(m)[best_single]]),
            [c.threshold, 0.5],
            mode,
        ).mean(0)
        rows.append(
            {
                "direction": name,
                "tune_images": len(tune_ids),
                "test_images": len(test_ids),
                "weights": [round(w, 3) for w in c.weights],
                "threshold": c.threshold,
                "tune_dice": c.dice,
                "heldout_dice": float(held[0, 0]),
                "heldout_equal@0.5": float(held[1, 1]),
                "heldout_best_single@0.5": float(held[2, 1]),
                "best_single": oof.members[best_single],
            }
        )
    return pd.DataFrame(rows)


def keep_if_it_holds(
    oof: OOFSet,
    choice: Choice,
    cv: pd.DataFrame,
    mode: str = "mean",
    fixed_threshold: float | None = None,
) -> tuple[Choice, str]:
    """Whichever of three held up best on held-out cars (`cross_validate`): the tuned choice,
    equal weights, or the best single member (both at the default threshold). A small validation
    set overfits: then the search found noise and the plain choice is safer. Ties keep the tuned
    choice. Returns the choice and a sentence saying which and why."""
    held = {
        "tuned": float(cv["heldout_dice"].mean()),
        "equal": float(cv["heldout_equal@0.5"].mean()),
        "single": float(cv["heldout_best_single@0.5"].mean()),
    }
    winner = max(held, key=lambda k: (held[k], k == "tuned"))
    scores = ", ".join(f"{k} {v:.5f}" for k, v in held.items())
    if winner == "tuned":
        return choice, f"tuned choice kept: held-out Dice {scores}"
    m = len(oof.members)
    t = 0.5 if fixed_threshold is None else fixed_threshold
    if winner == "equal":
        w = np.full(m, 1.0 / m)
    else:
        singles = image_dice(oof, np.eye(m), [t], mode).mean(0)[:, 0]
        w = np.eye(m)[int(np.argmax(singles))]
    dice = float(image_dice(oof, w[None], [t], mode).mean())
    plain = Choice([float(x) for x in w], t, dice, choice.history)
    label = "equal weights" if winner == "equal" else f"{oof.members[int(np.argmax(w))]} alone"
    return plain, (
        f"{label} at threshold {t} instead of the tuned choice: held-out Dice {scores} "
        "(the search fitted noise in a small validation set)"
    )


# --------------------------------------------------------------------------------------------------
# ensemble.yaml


def choice_scores(
    choice: Choice,
    cv: pd.DataFrame,
    decision: str,
    n_images: int,
    submitted: pd.DataFrame | None = None,
) -> dict:
    """What 05 records beside the weights: OOF Dice (as searched, and of the masks 06 writes:
    `submitted_score`), its held-out check, and why it was kept."""
    out = (
        {"oof_dice_submitted": round(float(submitted["dice"].mean()), 6)}
        if submitted is not None
        else {}
    )
    return {
        **out,
        "oof_dice": round(choice.dice, 6),
        "cv_heldout_dice": round(float(cv["heldout_dice"].mean()), 6),
        "cv_heldout_equal_0.5": round(float(cv["heldout_equal@0.5"].mean()), 6),
        "decision": decision,
        "n_images": int(n_images),
    }


def ensemble_spec(
    stages: Sequence[StageRun],
    choice: Choice,
    run_dir: str | os.PathLike,
    *,
    name: str = "ensemble",
    tta: bool = True,
    mode: str = "mean",
    largest_component: bool = False,
    guided_filter: Any = None,
    scores: dict | None = None,
) -> dict:
    """The mapping 06 reads: members (checkpoint relative to run_dir), weights, threshold, tta,
    whether each mask keeps only its largest component, and the guided upsampling (``refine``;
    a ``GuidedFilterConfig``, its dict or None)."""
    run_dir = Path(run_dir).resolve()
    members = []
    for s, w in zip(stages, choice.weights, strict=True):
        ckpt = s.checkpoint.resolve()
        try:
            rel = str(ckpt.relative_to(run_dir))
        except ValueError:
            rel = str(ckpt)
        size = s.size
        members.append(
            {
                "name": s.member,
                "stage": s.stage,
                "checkpoint": rel,
                "size": list(size) if size else None,
                "weight": round(float(w), 6),
                "cv_dice": None if np.isnan(s.cv_dice) else round(float(s.cv_dice), 6),
            }
        )
    return {
        "name": name,
        "combine": mode,
        "threshold": round(float(choice.threshold), 4),
        "tta": bool(tta),
        "largest_component": bool(largest_component),
        "guided_filter": _as_dict(guided_filter),
        "oof_dice": round(float(choice.dice), 6),
        "members": members,
        "scores": scores or {},
    }


def _as_dict(cfg: Any) -> dict | None:
    if cfg is None:
        return None
    return dict(cfg.model_dump() if hasattr(cfg, "model_dump") else cfg)


def write_ensemble(spec: dict, path: str | os.PathLike) -> Path:
    """Write ensemble.yaml atomically."""
    import yaml

    from kaggle_utils.atomic import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(spec, sort_keys=False))


def read_ensemble(path: str | os.PathLike) -> dict:
    """Read 05's ensemble.yaml; a missing file or key fails naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ensemble file not found: {path} (run 05_ensemble first)")
    spec = yaml.safe_load(path.read_text()) or {}
    for key in ("members", "threshold"):
        if key not in spec:
            raise ValueError(f"{path}: key '{key}' missing")
    for i, m in enumerate(spec["members"]):
        if "checkpoint" not in m:
            raise ValueError(f"{path}: members[{i}] has no 'checkpoint'")
    return spec


def default_spec(
    run_dir: str | os.PathLike, members: Sequence[str] | None = None, how: str = "best"
) -> dict:
    """Equal-weight ensemble at threshold 0.5 over each member's picked stage (06 without 05)."""
    stages = pick_stages(find_stages(run_dir, members), how)
    if not stages:
        raise FileNotFoundError(f"no member checkpoints under {run_dir}")
    n = len(stages)
    return ensemble_spec(stages, Choice([1.0 / n] * n, 0.5, float("nan")), run_dir)


# --------------------------------------------------------------------------------------------------
# plots


def plot_dice_by_angle(
    per_image: pd.DataFrame, ax: Any = None, title: str = "OOF Dice by angle"
) -> Any:
    """Bar chart of mean Dice per angle (1..16): where the ensemble struggles."""
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
    ax.legend(loc="lower right")
    return ax.figure


def ensemble_prob(oof: OOFSet, image_id: str, weights: Sequence[float]) -> np.ndarray:
    """Full-resolution weighted-mean probability of one image in [0, 1] (for the error viewer)."""
    w = torch.as_tensor(np.asarray(weights, np.float32)).to(oof.device)
    w = w / w.sum()
    up = oof.upsampled(image_id).float() / (BINS - 1)
    return torch.einsum("m,mhw->hw", w, up).clamp(0, 1).cpu().numpy()
