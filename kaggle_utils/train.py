"""Train one stage of one ensemble member: a plain PyTorch loop that writes a run folder.

`prepare_stage` reads and validates the member's parameters, splits train/validation by car and says
whether the stage is new, resumable (its folder holds last.pt) or finished (metrics.json with an
unchanged parameter hash). `train_stage` runs the loop:

    for epoch:  train (AMP + channels_last on CUDA; fp32 on CPU, or bf16 where the CPU has AMX
                (cpu_bf16); gradient accumulation; optional EMA)
                validate on held-out cars (loss at training size, Kaggle Dice at full resolution)
                best.pt when Dice improves; history.csv; last.pt  (all written atomically)
    end:        best weights -> OOF probabilities + oof.csv, curves.png, worst.png, metrics.json

A NaN/inf loss raises `NonFiniteLossError` at once and keeps the last good last.pt; a kill at any moment
leaves whole files only, and re-running continues from last.pt.
"""

from __future__ import annotations

import os

# CPU training on a few shared cores: OpenMP threads that spin while waiting collapse throughput
# when other processes compete for the cores (measured here: 0.7 -> 3.4 images/s). Only effective
# when set before torch is first imported; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import copy
import math
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from kaggle_utils.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from kaggle_utils.config import GuidedFilterConfig, MemberConfig, load_member

__all__ = [
    "NonFiniteLossError",
    "StageRun",
    "make_split",
    "pick_device",
    "prepare_stage",
    "run_stage",
    "seed_everything",
    "split_by_car",
    "train_stage",
]

FULL_RES = (1280, 1918)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the stage stopped and its last good checkpoint is kept."""


# ---------------------------------------------------------------- reproducibility and device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AMX tiles, e.g. Xeon Sapphire
    Rapids, or AVX512-BF16): there bf16 autocast trains ~2x faster than fp32 (measured on a
    RefineNet v4/ResNet-18 at 128x192, with channels_last); elsewhere it is emulated and slower."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): same seed, same initial weights and data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """None/"auto" -> CUDA when present, else CPU; "cuda" without CUDA is a clear error."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} asked for, but torch sees no CUDA device here")
    return dev


# ---------------------------------------------------------------- split by car


def split_by_car(
    index: pd.DataFrame, n_folds: int, fold: int, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) rows: fold `fold` of `n_folds` folds grouped by car (02_split's rule when it
    has not run: no car ever sits on both sides)."""
    from kaggle_utils.folds import folds_by_car

    stratify = "make" if "make" in index.columns and index["make"].notna().all() else None
    folds = folds_by_car(index, n_folds=n_folds, stratify=stratify, seed=seed)
    fold_of = dict(zip(folds["id"], folds["fold"], strict=True))
    is_val = index["id"].map(fold_of) == fold
    return index[~is_val].reset_index(drop=True), index[is_val].reset_index(drop=True)


def make_split(
    index: pd.DataFrame,
    member: MemberConfig,
    fold: int,
    run_dir: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(train, val, source): `<run_dir>/folds.csv` from 02_split when present, else `split_by_car`.

    On Kaggle 02 runs in its own kernel: its folds.csv is found under the upstream kernel's output.

    The member's `max_train_images` / `max_val_images` caps keep whole cars where possible
    (a seeded choice of cars, then images) so validation stays car-disjoint.
    """
    from kaggle_utils.environment import find_input

    folds_csv = find_input(Path(run_dir) / "folds.csv") if run_dir else None
    if folds_csv is not None and folds_csv.exists():
        from kaggle_utils.folds import load_folds

        folds = load_folds(folds_csv)
        missing = set(index["id"]) - set(folds["id"])
        if missing:
            raise ValueError(
                f"{folds_csv}: {len(missing)} training images have no fold (e.g. "
                f"{sorted(missing)[:3]}); re-run 02_split for this data"
            )
        if fold not in set(folds["fold"]):
            raise ValueError(
                f"{folds_csv}: no fold {fold}; it has folds {sorted(set(folds['fold']))}"
            )
        fold_of = dict(zip(folds["id"], folds["fold"], strict=True))
        is_val = index["id"].map(fold_of) == fold
        train, val = index[~is_val].reset_index(drop=True), index[is_val].reset_index(drop=True)
        source = str(folds_csv)
    else:
        train, val = split_by_car(index, member.n_folds, fold, seed=member.seed)
        source = f"split_by_car(n_folds={member.n_folds}, fold={fold}, seed={member.seed})"
    train = _cap(train, member.max_train_images, member.seed)
    val = _cap(val, member.max_val_images, member.seed + 1)
    return train, val, source


def _cap(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if n is None or len(df) <= n:
        return df
    rng = np.random.default_rng(seed)
    cars = list(rng.permutation(sorted(df["car"].unique())))
    keep: list[pd.DataFrame] = []
    total = 0
    for car in cars:
        rows = df[df["car"] == car]
        keep.append(rows.iloc[: n - total])
        total += len(keep[-1])
        if total >= n:
            break
    return pd.concat(keep).sort_values("id").reset_index(drop=True)


# ---------------------------------------------------------------- datasets


class _CachedDataset(Dataset):
    """Decoded, resized images and masks held in memory (uint8): decoding 1918x1280 JPEGs dominates
    small-resolution training, so small datasets decode once per stage (`cache: true`)."""

    def __init__(
        self,
        data: Any,
        index: pd.DataFrame,
        size: tuple[int, int],
        transform=None,
        soft_masks: bool = False,
    ):
        from kaggle_utils.dataset import resize_mask

        self.ids = [str(i) for i in index["id"]]
        self.transform = transform
        self.soft_masks = soft_masks
        h, w = size

        def load(image_id: str) -> tuple[np.ndarray, np.ndarray]:
            mask = resize_mask(data.load_mask(image_id), size, soft=soft_masks)
            return data.load_image(image_id, size=size), mask

        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            pairs = list(pool.map(load, self.ids))
        self.images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, h, w, 3), np.uint8)
        self.masks = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, h, w), np.uint8)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        from kaggle_utils.dataset import mask_tensor, normalize_image

        image, mask = self.images[i], self.masks[i]
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": normalize_image(image),
            "mask": mask_tensor(mask, self.soft_masks),
            "id": self.ids[i],
        }


class _Seeded(Dataset):
    """Re-seeds the augmentation per (seed, epoch, sample): the same run gives the same batches,
    whatever the number of workers and whether it resumed."""

    def __init__(self, base: Dataset, transform: Any, seed: int):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(
                (self.seed * 1_000_003 + self.epoch * 10_007 + i) % 2**31
            )
            if hasattr(self.base, "_seeded_pid"):  # CarvanaDataset: do not re-seed per worker
                self.base._seeded_pid = os.getpid()
        return self.base[i]


def _build_datasets(run: StageRun) -> tuple[Dataset, Dataset]:
    from kaggle_utils.augment import build_augmentations

    size, soft = run.size, run.member.soft_masks
    train_tf = build_augmentations(run.member.augment, train=True, soft_masks=soft)
    if run.member.cache:
        dataset_class: Any = _CachedDataset
    else:
        from kaggle_utils.dataset import CarvanaDataset

        dataset_class = CarvanaDataset
    train_ds = dataset_class(run.data, run.train_index, size, transform=train_tf, soft_masks=soft)
    val_ds = dataset_class(run.data, run.val_index, size, transform=None, soft_masks=soft)
    return _Seeded(train_ds, train_tf, run.member.seed), val_ds


class _ValMasks:
    """Validation masks at the metric's resolution, decoded once and kept bit-packed.

    val_full_res True: the masks' own size (1280x1918 on Carvana: Kaggle's metric); an int: that
    height at most (aspect kept; a cheaper CPU proxy); False: the training size.
    """

    def __init__(
        self,
        data: Any,
        ids: list[str],
        val_full_res: bool | int,
        size: tuple[int, int],
        guide_scale: int | None = None,
    ):
        from kaggle_utils.dataset import resize_mask
        from kaggle_utils.refine import load_guide

        self.ids = ids
        self.shape: tuple[int, int] | None = None
        if val_full_res is False:
            self.shape = (int(size[0]), int(size[1]))

        def target_shape(native: tuple[int, int]) -> tuple[int, int]:
            if val_full_res is True or val_full_res is False:
                return self.shape or native
            h = min(int(val_full_res), native[0])
            return h, round(native[1] * h / native[0])

        def load(image_id: str) -> tuple[tuple[int, int], np.ndarray, np.ndarray | None]:
            mask = data.load_mask(image_id)
            shape = target_shape(mask.shape[:2])
            guide = None
            if guide_scale:  # the photo at 1/scale of its own (= the mask's) size, gray
                guide = load_guide(data, image_id, mask.shape[:2], guide_scale)
            return shape, np.packbits(resize_mask(mask, shape)), guide

        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            loaded = list(pool.map(load, ids))
        shapes = {s for s, _, _ in loaded}
        if len(shapes) > 1:
            raise ValueError(f"validation masks differ in size: {sorted(shapes)}")
        self.shape = shapes.pop() if shapes else (self.shape or FULL_RES)
        self.packed = dict(zip(ids, (p for _, p, _ in loaded), strict=True))
        self.guides = {i: g for i, (_, _, g) in zip(ids, loaded, strict=True) if g is not None}

    def get(self, ids: list[str]) -> torch.Tensor:
        n = self.shape[0] * self.shape[1]
        arr = np.stack([np.unpackbits(self.packed[i], count=n).reshape(self.shape) for i in ids])
        return torch.from_numpy(arr)

    def guide(self, ids: list[str]) -> torch.Tensor:
        """Gray guides (N,1,h,w) in [0, 1] for ``refine.guided_upsample``."""
        from kaggle_utils.refine import to_guide

        return to_guide(torch.from_numpy(np.stack([self.guides[i] for i in ids])[:, None]))

    @property
    def label(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}"


# ---------------------------------------------------------------- optimisation pieces


class ModelEMA:
    """Exponential moving average of weights (buffers copied): evaluated instead of the raw model."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup_steps: int = 0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup_steps, self.steps = decay, warmup_steps, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        d = 0.0 if self.steps <= self.warmup_steps else self.decay
        ema_p = [p for p in self.module.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def build_optimizer(
    model: torch.nn.Module, member: MemberConfig, lr: float
) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD; no weight decay on norms and biases (the usual practice)."""
    cfg = member.optimizer
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # one fused kernel per step instead of ~5 tensor ops per parameter: on the CPU the per-parameter
    # AdamW step took ~10% of a RefineNet/ResNet-18 training step at 128x192 (bench_train.py)
    fused = _fused_optimizers_apply(decay + no_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused
        )
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=fused)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def _fused_optimizers_apply(params: list[torch.Tensor]) -> bool:
    """torch's fused optimizer kernels cover floating-point parameters on the CPU and CUDA."""
    devices = {p.device.type for p in params}
    return (
        bool(params)
        and devices <= {"cpu", "cuda"}
        and len(devices) == 1
        and all(p.is_floating_point() for p in params)
    )


def lr_factor(
    step: int, total: int, warmup: int, member: MemberConfig, steps_per_epoch: int
) -> float:
    """Multiplier of the peak LR at optimizer step `step`: linear warm-up, then cosine/step/constant."""
    if step < warmup:
        return (step + 1) / warmup
    sched = member.schedule
    if sched.name == "constant":
        return 1.0
    if sched.name == "step":
        return sched.gamma ** ((step - warmup) // max(1, sched.step_epochs * steps_per_epoch))
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return sched.min_lr_ratio + (1 - sched.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


# ---------------------------------------------------------------- the stage


@dataclass
class StageRun:
    """Everything one stage needs, resolved and validated before training starts."""

    member: MemberConfig
    member_file: Path
    stage: int
    fold: int
    data: Any
    train_index: pd.DataFrame
    val_index: pd.DataFrame
    split_source: str
    run_dir: Path
    stage_dir: Path
    device: torch.device
    init_checkpoint: Path | None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.member.stages[self.stage].size

    @property
    def stage_name(self) -> str:
        return self.member.stage_name(self.stage)

    @property
    def params_hash(self) -> str:
        return stage_hash(self.member, self.stage, self.fold)

    def status(self) -> str:
        """ "finished" (metrics.json with this params hash), "resume" (last.pt) or "new"."""
        return stage_status(self.stage_dir, self.params_hash)

    def describe(self) -> str:
        cfg = self.member.stages[self.stage]
        h, w = cfg.size
        return "\n".join(
            [
                f"member {self.member.name}  stage {self.stage} ({self.stage_name})  fold {self.fold}",
                f"size {h}x{w}  epochs {cfg.epochs}  lr {self.member.stage_lr(self.stage):g}  "
                f"batch {self.member.stage_batch_size(self.stage)} x accumulate {self.member.accumulate}",
                f"train {len(self.train_index)} images / {self.train_index['car'].nunique()} cars;  "
                f"val {len(self.val_index)} images / {self.val_index['car'].nunique()} cars  "
                f"[{self.split_source}]",
                f"device {self.device}  init {self.init_checkpoint or '-'}  status {self.status()}",
                f"-> {self.stage_dir}",
            ]
        )


def stage_hash(member: MemberConfig, stage: int, fold: int) -> str:
    """What must be unchanged for a finished stage to be skipped: its parameters and fold."""
    return f"{member.params_hash(stage)}-f{fold}"


def stage_dir_for(run_dir: str | os.PathLike, member: MemberConfig, stage: int, fold: int) -> Path:
    """`<run_dir>/<member>/<stage>` for the member's own fold, `<run_dir>/<member>/fold<k>/<stage>`
    for another fold (several folds of one member never share a folder)."""
    base = Path(run_dir) / member.name
    if fold != member.fold:
        base = base / f"fold{fold}"
    return base / member.stage_name(stage)


def stage_status(stage_dir: str | os.PathLike, params_hash: str) -> str:
    import json

    stage_dir = Path(stage_dir)
    metrics = stage_dir / "metrics.json"
    if metrics.exists():
        try:
            if json.loads(metrics.read_text()).get("params_hash") == params_hash:
                return "finished"
        except ValueError:
            pass
    if (stage_dir / "last.pt").exists():
        return "resume"
    return "new"


def prepare_stage(
    member_file: str | os.PathLike,
    stage: int = 0,
    *,
    fold: int | None = None,
    data_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike = "runs/demo",
    init_checkpoint: str | os.PathLike | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> StageRun:
    """Validate parameters, find the data, split by car and locate the stage folder."""
    from kaggle_utils.augment import build_augmentations
    from kaggle_utils.config import ConfigError
    from kaggle_utils.environment import resolve_run_dir
    from kaggle_utils.index import train_index
    from kaggle_utils.layout import find_data

    member = load_member(member_file, overrides)
    try:
        build_augmentations(member.augment, train=True)
    except ValueError as exc:
        raise ConfigError(f"{member_file}: key 'augment': {exc}") from None
    if not 0 <= stage < len(member.stages):
        raise ValueError(
            f"{member_file}: stage {stage} does not exist; stages are 0..{len(member.stages) - 1} "
            f"({', '.join(member.stage_name(i) for i in range(len(member.stages)))})"
        )
    fold = member.fold if fold is None else int(fold)
    if not 0 <= fold < member.n_folds:
        raise ValueError(
            f"fold {fold} must be in 0..{member.n_folds - 1} (n_folds of {member_file})"
        )
    if init_checkpoint and not Path(init_checkpoint).is_file():
        raise FileNotFoundError(f"init_checkpoint not found: {init_checkpoint}")
    data = find_data(data_dir)
    index = train_index(data)
    if "mask" in index.columns:
        index = index[index["mask"].notna()].reset_index(drop=True)
    run_path = resolve_run_dir(run_dir)
    train, val, source = make_split(index, member, fold, run_dir)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"split {source} left {len(train)} train / {len(val)} val images")
    stage_dir = stage_dir_for(run_path, member, stage, fold)
    return StageRun(
        member=member,
        member_file=Path(member_file),
        stage=stage,
        fold=fold,
        data=data,
        train_index=train,
        val_index=val,
        split_source=source,
        run_dir=run_path,
        stage_dir=stage_dir,
        device=pick_device(device),
        init_checkpoint=Path(init_checkpoint) if init_checkpoint else None,
        overrides=dict(overrides or {}),
    )


def build_stage_model(run: StageRun) -> torch.nn.Module:
    """The member's model, initialised from `init_checkpoint` (previous stage's best.pt) if given."""
    from kaggle_utils.models import build_model

    seed_everything(run.member.seed)
    model = build_model(dict(run.member.model))
    if run.init_checkpoint is not None:
        ckpt = load_checkpoint(run.init_checkpoint)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise RuntimeError(
                f"init_checkpoint {run.init_checkpoint} does not fit {run.member_file}'s model "
                f"{run.member.model}: {exc}"
            ) from exc
    return model


def _loss_value(outputs: Any) -> Any:
    """Autocast outputs to float32 for the loss (logits or (logits, [aux...]))."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    logits, aux = outputs
    return logits.float(), [a.float() for a in aux]


def _logits(outputs: Any) -> torch.Tensor:
    return outputs if isinstance(outputs, torch.Tensor) else outputs[0]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: torch.nn.Module,
    masks: _ValMasks,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    threshold: float = 0.5,
    largest_component: bool = False,
    tta: bool = False,
    keep_probs: bool = False,
    guided: GuidedFilterConfig | None = None,
) -> tuple[float, pd.DataFrame, dict[str, np.ndarray]]:
    """(mean loss at training size, per-image Dice at the metric resolution, probs if asked).

    tta: probabilities averaged with the mirrored image's (as 06 predicts); the loss is the
    plain pass's, so it stays comparable with the training loss. guided: Dice after the
    edge-aware upsampling 06 applies (``refine``; ``masks`` holds the guides). Kept probs are
    the model's own, at the training size."""
    from kaggle_utils.metrics import full_res_dice
    from kaggle_utils.refine import guided_upsample

    model.eval()
    total, count = 0.0, 0
    rows: list[tuple[str, float]] = []
    probs_out: dict[str, np.ndarray] = {}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
        y = batch["mask"].to(device, non_blocking=True)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            logits = _logits(model(torch.cat([x, x.flip(-1)]) if tta else x))
        logits = logits.float()
        n = len(x)
        total += float(loss_fn(logits[:n], y)) * n
        count += n
        probs = torch.sigmoid(logits[:n])
        if tta:
            probs = (probs + torch.sigmoid(logits[n:]).flip(-1)) * 0.5
        ids = list(batch["id"])
        for j in range(0, len(ids), 4):  # bounded memory at 1280x1918
            full = masks.get(ids[j : j + 4]).to(device)
            p = probs[j : j + 4]
            if guided is not None:
                p = guided_upsample(p, masks.guide(ids[j : j + 4]), guided.radius, guided.eps)
            dice = full_res_dice(p, full, threshold=threshold, largest_component=largest_component)
            rows += list(zip(ids[j : j + 4], dice.cpu().tolist(), strict=True))
        if keep_probs:
            u8 = (probs[:, 0] * 255).round().to(torch.uint8).cpu().numpy()
            probs_out.update(zip(ids, u8, strict=True))
    return total / max(1, count), pd.DataFrame(rows, columns=["id", "dice"]), probs_out


def train_stage(
    run: StageRun,
    model: torch.nn.Module | None = None,
    *,
    progress: bool = True,
    loss_hook: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train (or resume, or skip) the stage and return its metrics.json content.

    `loss_hook(loss, epoch, step)` may replace the loss (tests inject NaN with it).
    """
    import json

    from tqdm.auto import tqdm

    from kaggle_utils.losses import build_loss

    member, cfg, stage_dir = run.member, run.member.stages[run.stage], run.stage_dir
    status = run.status()
    if status == "finished":
        metrics = json.loads((stage_dir / "metrics.json").read_text())
        print(
            f"stage {run.stage_name} already finished (best Dice {metrics['best_dice']:.5f}); skipped"
        )
        return {**metrics, "skipped": True}
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        stage_dir / "params.json",
        {
            "member_file": str(run.member_file),
            "member": member.model_dump(mode="json"),
            "stage": run.stage,
            "stage_name": run.stage_name,
            "fold": run.fold,
            "overrides": run.overrides,
            "init_checkpoint": str(run.init_checkpoint) if run.init_checkpoint else None,
            "split": run.split_source,
            "params_hash": run.params_hash,
            "val_ids": list(run.val_index["id"]),
        },
    )

    device = run.device
    cuda = device.type == "cuda"
    if device.type == "cpu":
        from kaggle_utils.allocator import keep_freed_memory

        keep_freed_memory()  # no page faults through every activation each step
    amp_dtype = None
    if cuda and member.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif device.type == "cpu" and member.cpu_bf16:
        if cpu_has_fast_bf16():
            amp_dtype = torch.bfloat16
        else:
            print("cpu_bf16: this CPU has no bf16 units (AMX / AVX512-BF16): fp32", flush=True)
    # channels_last pays with AMP (CUDA tensor cores, CPU AMX), and costs in fp32 on the CPU
    auto_cl = cuda or amp_dtype is not None
    channels_last = auto_cl if member.channels_last == "auto" else bool(member.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if cuda:
        torch.backends.cudnn.benchmark = True

    seed_everything(member.seed)
    if model is None:
        model = build_stage_model(run)
    model = model.to(device, memory_format=fmt)
    loss_fn = build_loss(dict(member.loss)).to(device)
    val_loss_fn = build_loss({k: v for k, v in member.loss.items() if k != "aux_weight"}).to(device)

    t0 = time.perf_counter()
    train_ds, val_ds = _build_datasets(run)
    gf = member.guided_filter
    val_masks = _ValMasks(
        run.data, list(run.val_index["id"]), member.val_full_res, run.size, gf.scale if gf else None
    )
    print(
        f"data ready in {time.perf_counter() - t0:.1f} s (cache={member.cache}, Dice at {val_masks.label})"
    )

    batch_size = member.stage_batch_size(run.stage)
    workers = member.num_workers
    generator = torch.Generator()
    train_loader = DataLoader(
        train_ds,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(train_ds) > batch_size,
        num_workers=workers,
        pin_memory=cuda,
        generator=generator,
    )
    val_loader = DataLoader(
        val_ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=cuda
    )
    steps_per_epoch = math.ceil(len(train_loader) / member.accumulate)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_epochs = (
        cfg.warmup_epochs if cfg.warmup_epochs is not None else member.schedule.warmup_epochs
    )
    warmup = round(warmup_epochs * steps_per_epoch)
    peak_lr = member.stage_lr(run.stage)
    optimizer = build_optimizer(model, member, peak_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, member, steps_per_epoch)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ema = ModelEMA(model, member.ema.decay, member.ema.warmup_steps) if member.ema else None

    start_epoch, history, best_dice, best_epoch, elapsed = 0, [], -1.0, -1, 0.0
    resumed_from = None
    last_pt, best_pt = stage_dir / "last.pt", stage_dir / "best.pt"
    if status == "resume":
        ckpt = load_checkpoint(last_pt, map_location="cpu")
        if ckpt.get("params_hash") != run.params_hash:
            print(f"{last_pt} was written with other parameters; starting the stage afresh")
        else:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if "scaler" in ckpt:
                scaler.load_state_dict(ckpt["scaler"])
            if ema is not None and "ema" in ckpt:
                ema.module.load_state_dict(ckpt["ema"])
                ema.steps = ckpt.get("ema_steps", 0)
            if "rng" in ckpt:
                set_rng_state(ckpt["rng"])
            start_epoch = resumed_from = ckpt["epoch"] + 1
            history = list(ckpt.get("history", []))
            best_dice, best_epoch = ckpt.get("best_dice", -1.0), ckpt.get("best_epoch", -1)
            elapsed = ckpt.get("elapsed_s", 0.0)
            print(f"resuming {run.stage_name} from {last_pt} at epoch {start_epoch}/{cfg.epochs}")

    meta = {
        "member": member.name,
        "stage": run.stage,
        "stage_name": run.stage_name,
        "fold": run.fold,
        "params_hash": run.params_hash,
        "threshold": member.threshold,
        "largest_component": member.largest_component,
        "val_tta": member.val_tta,
        "guided_filter": gf.model_dump() if gf else None,
    }
    # every validation (each val_every epochs, then the best weights) scores as 06 will submit
    eval_kw: dict[str, Any] = {
        "amp_dtype": amp_dtype,
        "channels_last": channels_last,
        "threshold": member.threshold,
        "largest_component": member.largest_component,
        "tta": member.val_tta,
        "guided": gf,
    }
    train_images, train_seconds = 0, 0.0
    best_eval: tuple[float, pd.DataFrame, dict[str, np.ndarray]] | None = None
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        seed_everything(member.seed * 1000 + epoch)
        generator.manual_seed(member.seed * 1000 + epoch)
        train_ds.epoch = epoch
        model.train()
        optimizer.zero_grad(set_to_none=True)
        running, seen = 0.0, 0
        bar = tqdm(
            train_loader,
            desc=f"{run.stage_name} epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            leave=False,
            mininterval=2.0,
        )
        for i, batch in enumerate(bar):
            x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
            y = batch["mask"].to(device, non_blocking=True)
            with torch.autocast(
                device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ):
                outputs = model(x)
            loss = loss_fn(_loss_value(outputs), y)
            if loss_hook is not None:
                loss = loss_hook(loss, epoch, i)
            if not torch.isfinite(loss):
                kept = (
                    f"last good checkpoint kept: {last_pt}"
                    if last_pt.exists()
                    else "no checkpoint yet"
                )
                raise NonFiniteLossError(
                    f"{run.member_file} stage {run.stage_name}: training loss is {float(loss.detach())} at "
                    f"epoch {epoch + 1} step {i + 1} (lr {optimizer.param_groups[0]['lr']:.3g}); "
                    f"stopped, {kept}. Lower the learning rate or check the data."
                )
            scaler.scale(loss / member.accumulate).backward()
            if (i + 1) % member.accumulate == 0 or i + 1 == len(train_loader):
                if member.optimizer.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), member.optimizer.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if ema is not None:
                    ema.update(model)
            running += float(loss.detach()) * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{running / seen:.4f}", refresh=False)
        bar.close()
        if cuda:
            torch.cuda.synchronize()
        train_time = time.perf_counter() - epoch_start
        train_images += seen
        train_seconds += train_time

        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": running / max(1, seen),
            "val_loss": float("nan"),
            "val_dice": float("nan"),
            "images_per_s": seen / max(train_time, 1e-9),
        }
        if (epoch + 1) % member.val_every == 0 or epoch + 1 == cfg.epochs:
            eval_model = ema.module if ema is not None else model
            last = epoch + 1 == cfg.epochs  # keep its probabilities: the OOF when it is the best
            val_loss, per_image, probs = evaluate(
                eval_model, val_loader, val_loss_fn, val_masks, device, keep_probs=last, **eval_kw
            )
            row["val_loss"], row["val_dice"] = val_loss, float(per_image["dice"].mean())
            if row["val_dice"] > best_dice:
                best_dice, best_epoch = row["val_dice"], epoch + 1
                if last:
                    best_eval = (val_loss, per_image, probs)
                save_checkpoint(
                    best_pt,
                    eval_model,
                    model_spec=dict(member.model),
                    size=run.size,
                    epoch=epoch,
                    extra={**meta, "dice": best_dice, "val_loss": val_loss},
                )
        row["seconds"] = time.perf_counter() - epoch_start
        elapsed += row["seconds"]
        history.append(row)
        atomic_write_text(stage_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
        save_checkpoint(
            last_pt,
            model,
            model_spec=dict(member.model),
            size=run.size,
            epoch=epoch,
            extra={
                **meta,
                "dice": row["val_dice"],
                "history": history,
                "best_dice": best_dice,
                "best_epoch": best_epoch,
                "elapsed_s": elapsed,
                "ema_steps": ema.steps if ema else 0,
            },
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler if scaler.is_enabled() else None,
            ema=ema.module if ema else None,
            rng=True,
        )
        print(
            f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
            f"val loss {row['val_loss']:.4f}  val Dice {row['val_dice']:.5f}  "
            f"{row['images_per_s']:.1f} img/s  {row['seconds']:.0f} s",
            flush=True,
        )

    # ------------------------------------------------ best weights -> OOF, figures, metrics.json
    from kaggle_utils import plots
    from kaggle_utils.checkpoint import load_member_model

    if best_eval is None:  # the best epoch is not the last one run here: score best.pt again
        best_model, _ = load_member_model(best_pt, device=device)
        best_model = best_model.to(memory_format=fmt)
        best_eval = evaluate(
            best_model, val_loader, val_loss_fn, val_masks, device, keep_probs=True, **eval_kw
        )
    val_loss, per_image, probs = best_eval
    oof_dir = stage_dir / "oof"
    oof_dir.mkdir(exist_ok=True)
    for image_id, prob in probs.items():
        ok, png = cv2.imencode(".png", prob)
        atomic_write_bytes(oof_dir / f"{image_id}.png", png.tobytes())
    per_image = per_image.merge(run.val_index[["id", "car", "angle"]], on="id", how="left")
    atomic_write_text(stage_dir / "oof.csv", per_image.to_csv(index=False))
    hist = pd.DataFrame(history)
    plots.save_figure(
        plots.learning_curve(hist, title=f"{member.name} {run.stage_name}"),
        stage_dir / "curves.png",
    )
    plots.save_figure(
        plots.worst_images(run.data, per_image, probs, val_masks, n=6, threshold=member.threshold),
        stage_dir / "worst.png",
    )
    n_epochs_run = len(hist) - (resumed_from or 0) if resumed_from else len(hist)
    metrics = {
        **meta,
        "size": list(run.size),
        "best_dice": float(per_image["dice"].mean()),
        "best_epoch": best_epoch,
        "val_loss": val_loss,
        "dice_resolution": val_masks.label,
        "epochs": cfg.epochs,
        "time_s": round(elapsed, 1),
        "images_per_s": round(train_images / train_seconds, 2) if train_seconds else None,
        "n_train": len(run.train_index),
        "n_val": len(run.val_index),
        "val_cars": int(run.val_index["car"].nunique()),
        "device": str(device),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "channels_last": channels_last,
        "resumed_from_epoch": resumed_from,
        "epochs_run_here": n_epochs_run,
        "best_checkpoint": str(best_pt),
        "split": run.split_source,
    }
    atomic_write_json(stage_dir / "metrics.json", metrics)
    print(
        f"{member.name} {run.stage_name}: best val Dice {metrics['best_dice']:.5f} "
        f"(epoch {best_epoch}, {val_masks.label}) in {elapsed:.0f} s -> {stage_dir}"
    )
    return metrics


def run_stage(member_file: str | os.PathLike, stage: int = 0, **kwargs: Any) -> dict[str, Any]:
    """prepare_stage + train_stage in one call (scripts and tests)."""
    progress = kwargs.pop("progress", True)
    loss_hook = kwargs.pop("loss_hook", None)
    run = prepare_stage(member_file, stage, **kwargs)
    print(run.describe(), flush=True)
    return train_stage(run, progress=progress, loss_hook=loss_hook)


def stage_up(
    member_file: str | os.PathLike,
    *,
    fold: int | None = None,
    data_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike = "runs/demo",
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    notebook: str = "03_train_member.ipynb",
) -> pd.DataFrame:
    """Run 03 through papermill for each stage of a member, in order, each stage initialised from
    the previous stage's best.pt; finished stages are skipped. Returns (and writes
    `<run_dir>/<member>/stages.csv` and `stages.png`) one row per stage.

    The executed 03 notebook of each stage is kept beside its outputs. A failing stage raises
    `notebook.NotebookExecutionError` naming the cell; later stages are not run.
    """
    import json

    from kaggle_utils import plots
    from kaggle_utils.checkpoint import atomic_write_text
    from kaggle_utils.environment import resolve_run_dir
    from kaggle_utils.notebook import REPO_NOTEBOOKS, execute_notebook

    member_path = Path(member_file).resolve()
    member = load_member(member_path, overrides)
    fold = member.fold if fold is None else int(fold)
    run_path = resolve_run_dir(run_dir).resolve()
    rows: list[dict[str, Any]] = []
    init: Path | None = None
    for i in range(len(member.stages)):
        stage_dir = stage_dir_for(run_path, member, i, fold)
        status = stage_status(stage_dir, stage_hash(member, i, fold))
        started = time.perf_counter()
        if status == "finished":
            print(f"[skip] {member.name} {member.stage_name(i)}: finished", flush=True)
        else:
            print(
                f"[run ] {member.name} {member.stage_name(i)} ({status}) -> {stage_dir}", flush=True
            )
            execute_notebook(
                notebook,
                stage_dir / Path(notebook).name,
                {
                    "member_file": str(member_path),
                    "stage": i,
                    "fold": fold,
                    "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
                    "run_dir": str(run_path),
                    "init_checkpoint": str(init) if init else None,
                    "device": device,
                    "overrides": dict(overrides or {}),
                },
                cwd=REPO_NOTEBOOKS.parent if REPO_NOTEBOOKS.is_dir() else None,
            )
        metrics = json.loads((stage_dir / "metrics.json").read_text())
        rows.append(
            {
                "member": member.name,
                "stage": i,
                "stage_name": member.stage_name(i),
                "size": "x".join(str(s) for s in member.stages[i].size),
                "epochs": member.stages[i].epochs,
                "best_dice": metrics["best_dice"],
                "best_epoch": metrics["best_epoch"],
                "time_s": metrics["time_s"],
                "images_per_s": metrics["images_per_s"],
                "status": "skipped" if status == "finished" else "trained",
                "wall_s": round(time.perf_counter() - started, 1),
                "checkpoint": str(stage_dir / "best.pt"),
            }
        )
        init = stage_dir / "best.pt"
    table = pd.DataFrame(rows)
    member_dir = stage_dir_for(run_path, member, 0, fold).parent
    atomic_write_text(member_dir / "stages.csv", table.to_csv(index=False))
    plots.save_figure(
        plots.stage_dice(table, title=f"{member.name}: Dice per stage"), member_dir / "stages.png"
    )
    return table


def previous_stage_checkpoint(
    member_file: str | os.PathLike,
    stage: int,
    fold: int | None = None,
    run_dir: str | os.PathLike = "runs/demo",
    overrides: dict[str, Any] | None = None,
) -> Path:
    """best.pt of stage ``stage - 1`` under run_dir: where the curriculum's next stage starts."""
    from kaggle_utils.environment import resolve_run_dir

    member = load_member(member_file, overrides)
    fold = member.fold if fold is None else int(fold)
    prev = stage_dir_for(resolve_run_dir(run_dir), member, stage - 1, fold) / "best.pt"
    if not prev.is_file():
        raise FileNotFoundError(
            f"stage {stage} of {member_file} starts from stage {stage - 1}'s weights, but {prev} "
            "does not exist: run that stage first, or pass --init-checkpoint PATH (or 'none')"
        )
    return prev


def main(argv: list[str] | None = None) -> int:
    """`python -m kaggle_utils.train MEMBER.yaml [--stage N ...]`: one stage without a notebook."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kaggle_utils.train", description=main.__doc__)
    parser.add_argument("member_file")
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--fold", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument(
        "--init-checkpoint",
        help="weights to start from; default for --stage N > 0: stage N-1's best.pt "
        "(as 04_stage_up does); 'none' starts from scratch",
    )
    parser.add_argument("--device")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set optimizer.lr=1e-3 --set stages.0.epochs=2",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    init = args.init_checkpoint
    if init is None and args.stage > 0:
        try:
            init = previous_stage_checkpoint(
                args.member_file, args.stage, args.fold, args.run_dir, overrides
            )
        except FileNotFoundError as exc:
            parser.error(str(exc))
    elif init is not None and init.lower() == "none":
        init = None
    metrics = run_stage(
        args.member_file,
        args.stage,
        fold=args.fold,
        data_dir=args.data_dir,
        run_dir=args.run_dir,
        init_checkpoint=init,
        device=args.device,
        overrides=overrides,
        progress=not args.no_progress,
    )
    print(f"best Dice {metrics['best_dice']:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
