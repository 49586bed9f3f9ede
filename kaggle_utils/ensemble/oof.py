"""Out-of-fold probabilities: read the PNGs the training loop stored, or re-predict the
validation images with each stage's checkpoint under TTA settings (`kaggle_utils.tta`), aligned
across members.

TTA: stored OOF predictions (<run_dir>/<member>/<stage>/oof/*.png) are whatever the training
loop saved (mirror-averaged only for members with `val_tta`), so each candidate TTA setting is
scored by re-predicting the validation images with the stage's checkpoint (`repredict`), which is
also the probability source the weight search uses for the setting 05 picks: what is tuned is
what is submitted. Candidates share their forwards (`repredict_settings`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kaggle_utils.ensemble.base import BINS, car_of, single_thread
from kaggle_utils.inference import forward_tta_probs, load_members, normalise, pick_device
from kaggle_utils.precision import precision_for
from kaggle_utils.runs import FinishedStage
from kaggle_utils.tta import TTASetting, parse_setting

__all__ = [
    "OOFSet",
    "Prepared",
    "oof_set",
    "probability_sources",
    "read_oof",
    "repredict",
    "repredict_settings",
]


def read_oof(stage: FinishedStage, ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
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


def repredict(
    checkpoint: str | os.PathLike,
    data: Any,
    ids: Sequence[str],
    tta: bool | str | Sequence[str] | TTASetting,
    device: str | torch.device | None = "cpu",
    batch_size: int = 8,
    amp: bool = True,
) -> dict[str, np.ndarray]:
    """Probabilities {id: uint8 (h, w)} for train images from a member checkpoint under one TTA
    setting (a bool: hflip on/off, or any `kaggle_utils.tta` setting)."""
    setting = parse_setting(tta)
    got = repredict_settings(checkpoint, data, ids, [setting], device, batch_size, amp)
    return got[setting.label]


@torch.inference_mode()
def repredict_settings(
    checkpoint: str | os.PathLike,
    data: Any,
    ids: Sequence[str],
    settings: Sequence[Any],
    device: str | torch.device | None = "cpu",
    batch_size: int = 8,
    amp: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """{setting label: {id: uint8 (h, w)}} for train images from a member checkpoint:
    `inference.forward_tta_probs` under 06's precision (mixed on CUDA unless amp=False, fp32 on
    the CPU), so what 05 tunes on is what 06 submits. Settings sharing a group of transforms
    (hflip and hflip+scales share [x, flip(x)]) share its forward."""
    dev = pick_device(device)
    (member,) = load_members([checkpoint], device=dev)
    hq = bool(member.info.get("hq"))  # trained on train_hq: scored on those photos too
    precision = precision_for(dev, amp=amp)
    parsed = [parse_setting(s) for s in settings]
    out: dict[str, dict[str, np.ndarray]] = {s.label: {} for s in parsed}
    ids = list(ids)
    with single_thread(dev):
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            imgs = np.stack([data.load_image(i, "train", member.size, hq=hq) for i in chunk])
            x = normalise(torch.from_numpy(imgs).permute(0, 3, 1, 2), dev)
            cache: dict = {}
            for s in parsed:
                p = forward_tta_probs(member.model, x, s, precision=precision, cache=cache)[:, 0]
                u8 = (p * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
                out[s.label].update(zip(chunk, u8, strict=True))
    return out


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
    stages: Sequence[FinishedStage],
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
    stages: Sequence[FinishedStage],
    data: Any,
    *,
    tta: Sequence[Any] = ("none", "hflip"),
    device: str = "cpu",
    max_images: int | None = None,
) -> dict[str, OOFSet]:
    """OOF sets per setting: "stored" (the training loop's PNGs, TTA as each member's `val_tta`)
    and the validation images re-predicted by each checkpoint under each candidate TTA setting
    (keyed by its label: "none", "hflip", "hflip+scales", "identity+scale_1.125", ...)."""
    stored = oof_set(stages, data, source="oof", max_images=max_images)
    out = {"stored": stored}
    settings = [parse_setting(s) for s in tta]
    if not settings:
        return out
    per_stage = [
        repredict_settings(s.checkpoint, data, stored.ids, settings, device=device) for s in stages
    ]
    members = [s.member for s in stages]
    for setting in settings:
        probs = [got[setting.label] for got in per_stage]
        out[setting.label] = OOFSet(members, list(stored.ids), probs, data, device)
    return out
