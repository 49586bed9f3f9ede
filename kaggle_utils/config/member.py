"""One ensemble member's parameters: model, loss, optimisation and its resolution stages."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import to_jsonable_python

from kaggle_utils.config.specs import DEFAULT_LOSS, AugmentSpec, LossSpec, ModelConfig

SIZE_MULTIPLE = 32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_size(value: Any) -> tuple[int, int]:
    """(H, W) from "1024x1024", "1280x1918", 1024 (square) or [H, W].

    Any side of 32 pixels or more: the model reflect-pads its input to a multiple of 32 and crops
    the logits back (`models.wrapper`), so a stage at the frame's own 1280x1918 trains on the whole
    photo as the 1st-place team did (1918 padded to 1920) and its Dice needs no resize at all."""
    if isinstance(value, bool):
        raise ValueError(f"size must be 'HxW', [H, W] or an int, got {value!r}")
    if isinstance(value, int):
        h = w = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", value)
        if not m:
            raise ValueError(f"size must look like 'HxW' (e.g. '1024x1024'), got {value!r}")
        h, w = int(m.group(1)), int(m.group(2))
    elif isinstance(value, list | tuple) and len(value) == 2:
        try:
            h, w = (int(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"size must hold two integers [H, W], got {value!r}") from None
        if any(isinstance(v, float) and not float(v).is_integer() for v in value):
            raise ValueError(f"size must hold two integers [H, W], got {value!r}")
    else:
        raise ValueError(f"size must be 'HxW', [H, W] or an int, got {value!r}")
    if h < SIZE_MULTIPLE or w < SIZE_MULTIPLE:
        raise ValueError(f"size {h}x{w}: both sides must be at least {SIZE_MULTIPLE} pixels")
    return h, w


def parse_crop(value: Any) -> tuple[int, int]:
    """A training crop's (H, W): like `parse_size`, but sides must be multiples of 32 (a crop is
    chosen freely, so none of the model's padding is wasted on it)."""
    h, w = parse_size(value)
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(
            f"crop {h}x{w}: both sides must be multiples of {SIZE_MULTIPLE} "
            f"(e.g. {max(SIZE_MULTIPLE, round(h / 32) * 32)}x{max(SIZE_MULTIPLE, round(w / 32) * 32)})"
        )
    return h, w


class PseudoLabelsConfig(_Strict):
    """Test images labelled by an ensemble's confident predictions, added to a stage's training
    set (``kaggle_utils.pseudo``; written by ``python -m kaggle_utils.pseudo`` between stages).
    The folder is checked when the stage starts, not here: it is written after the member file
    is first validated (the pipeline plans every stage up front)."""

    dir: str = Field(
        min_length=1,
        description="folder with pseudo_labels.csv and <id>.png maps; relative: under run_dir",
    )
    max_uncertain: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="keep rows whose uncertain fraction is below this; None -> the writer's rule",
    )
    max_images: int | None = Field(
        default=None, ge=1, description="at most this many, most confident first; None -> all"
    )


class StageConfig(_Strict):
    """One resolution stage of a member's curriculum."""

    size: tuple[int, int] = Field(description="(H, W) training size, multiples of 32")
    epochs: int = Field(ge=1)
    lr: float | None = Field(default=None, gt=0, description="peak LR; None -> optimizer.lr")
    batch_size: int | None = Field(default=None, ge=1, description="None -> member batch_size")
    warmup_epochs: float | None = Field(default=None, ge=0, description="None -> schedule's")
    crop: tuple[int, int] | None = Field(
        default=None,
        description="train on random (H, W) crops of the frame at `size` (validation: whole "
        "frames); full resolution in a T4's 16 GB, e.g. size 1280x1918, crop 1024x1024",
    )
    pseudo_labels: PseudoLabelsConfig | None = Field(
        default=None,
        description="train also on confidently predicted test images (pseudo); never validated on",
    )

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> tuple[int, int]:
        return parse_size(v)

    @field_validator("crop", mode="before")
    @classmethod
    def _crop(cls, v: Any) -> tuple[int, int] | None:
        return None if v is None else parse_crop(v)

    @model_validator(mode="after")
    def _crop_fits(self) -> StageConfig:
        if self.crop is not None and (self.crop[0] > self.size[0] or self.crop[1] > self.size[1]):
            raise ValueError(
                f"crop {self.crop[0]}x{self.crop[1]} is larger than the stage's size "
                f"{self.size[0]}x{self.size[1]}: choose a crop within the frame"
            )
        return self


class OptimizerConfig(_Strict):
    name: Literal["adamw", "sgd", "adam"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD only")
    nesterov: bool = True
    grad_clip: float | None = Field(default=None, gt=0, description="max grad norm")


CYCLIC_SCHEDULES = ("cosine_restarts", "cyclic")
# schedule keys added after stages were trained: left out of params_hash at their defaults
_SCHEDULE_DEFAULTS = {
    "cycle_epochs": None,
    "cycle_mult": 1.0,
    "cycle_peak_ratio": 1.0,
    "cyclic_from_epoch": None,
}


class ScheduleConfig(_Strict):
    """Per optimizer step (`optim.lr_factor`): linear warm-up, then cosine, step, constant,
    cosine with warm restarts or triangular cycles, optionally cycles after a late epoch."""

    name: Literal["cosine", "step", "constant", "cosine_restarts", "cyclic"] = "cosine"
    warmup_epochs: float = Field(default=0.0, ge=0)
    min_lr_ratio: float = Field(default=0.01, ge=0, le=1, description="cosine floor, x peak LR")
    step_epochs: int = Field(default=10, ge=1, description="step: decay every N epochs")
    gamma: float = Field(default=0.1, gt=0, le=1, description="step: decay factor")
    # -- LR cycles (issue 17: schedules, snapshots, SWA) --
    cycle_epochs: float | None = Field(
        default=None,
        gt=0,
        description="cosine_restarts / cyclic / cyclic_from_epoch: epochs of one LR cycle",
    )
    cycle_mult: float = Field(
        default=1.0, ge=1, description="cosine_restarts: each cycle this many times the last"
    )
    cycle_peak_ratio: float = Field(
        default=1.0, gt=0, le=1, description="top LR of each cycle, x peak LR"
    )
    cyclic_from_epoch: int | None = Field(
        default=None,
        ge=1,
        description="`name` over the stage's first N epochs, then triangular cycles (the "
        "1st-place Carvana pattern: a cyclic LR from a late epoch)",
    )

    @model_validator(mode="after")
    def _cycles_need_a_length(self) -> ScheduleConfig:
        cycles = self.name in CYCLIC_SCHEDULES or self.cyclic_from_epoch is not None
        if cycles and self.cycle_epochs is None:
            what = "cyclic_from_epoch" if self.cyclic_from_epoch else f"schedule {self.name!r}"
            raise ValueError(f"{what} needs schedule.cycle_epochs (epochs of one LR cycle, e.g. 4)")
        if self.cyclic_from_epoch is not None and self.name in CYCLIC_SCHEDULES:
            raise ValueError(
                f"schedule.cyclic_from_epoch follows a cosine, step or constant schedule, not "
                f"{self.name!r}: set schedule.name to one of those"
            )
        return self


class EMAConfig(_Strict):
    decay: float = Field(default=0.999, gt=0, lt=1)
    warmup_steps: int = Field(default=0, ge=0, description="plain copy of weights before this step")


class SWAConfig(_Strict):
    """Stochastic weight averaging (`engine.swa.SWA`): the mean of the epoch-end weights."""

    start_epoch: int = Field(ge=1, description="average the weights at the end of this epoch on")
    bn_batches: int | None = Field(
        default=None,
        ge=1,
        description="BatchNorm statistics recomputed over this many training batches; None: all",
    )


class GuidedFilterConfig(_Strict):
    """Edge-aware upsampling of the prediction with the photo as guide (``refine``)."""

    scale: Literal[1, 2, 4, 8] = Field(default=4, description="guide = photo at 1/scale size")
    radius: int = Field(default=2, ge=1, le=32, description="window radius, in guide pixels")
    eps: float = Field(default=1e-4, gt=0, description="edge strength to follow (gray in 0..1)")


# Keys added after members were trained: at their default they stay out of `params_hash`, so the
# stages users finished before a key existed are not retrained (key -> its default).
ADDED_MEMBER_KEYS: dict[str, Any] = {
    "guided_filter": None,
    "hq": False,
    "corrected_masks": None,
    "snapshots": False,
    "swa": None,
}
ADDED_STAGE_KEYS: dict[str, Any] = {"crop": None, "pseudo_labels": None}


def _drop_defaults(spec: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    for key, default in added.items():
        if key in spec and spec[key] == default:
            del spec[key]
    return spec


class MemberConfig(_Strict):
    """One ensemble member: model, loss, optimisation and its resolution stages."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    model: ModelConfig
    loss: LossSpec = Field(default_factory=lambda: LossSpec.model_validate(DEFAULT_LOSS))
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    batch_size: int = Field(default=8, ge=1)
    accumulate: int = Field(default=1, ge=1, description="gradient accumulation steps")
    augment: AugmentSpec | None = Field(
        default=None, description="augment.build_augmentations; None -> its defaults"
    )
    n_folds: int = Field(default=5, ge=2)
    fold: int = Field(default=0, ge=0)
    seed: int = 42
    ema: EMAConfig | None = None
    amp: bool = Field(default=True, description="autocast on CUDA (bf16 if supported, else fp16)")
    cpu_bf16: bool = Field(
        default=False,
        description="bf16 autocast on CPUs with bf16 units (AMX / AVX512-BF16); else fp32",
    )
    channels_last: Literal["auto", True, False] = "auto"
    num_workers: int = Field(default=2, ge=0)
    devices: int = Field(
        default=1,
        ge=1,
        description="processes (GPUs) per machine; batch_size stays the global batch (engine.stage)",
    )
    num_nodes: int = Field(
        default=1, ge=1, description="machines; batch_size stays the global batch"
    )
    sync_batchnorm: bool = Field(
        default=True,
        description="with several CUDA devices, BatchNorm statistics over the global batch "
        "(SyncBatchNorm); per-device statistics otherwise",
    )
    accelerator: str | None = Field(
        default=None,
        description="Kaggle kernels: machine_shape of this member's training kernels; None -> "
        "the ensemble's (hardware: not in params_hash)",
    )
    cache: bool = Field(default=False, description="keep decoded resized images in memory")
    hq: bool = Field(
        default=False,
        description="train, validate and predict from train_hq / test_hq (the high-quality "
        "JPEGs the 1st- and 3rd-place teams used), decoded reduced where the size allows",
    )
    soft_masks: bool = Field(
        default=True,
        description="train on each pixel's car coverage (0..1) instead of a thresholded mask",
    )
    max_train_images: int | None = Field(default=None, ge=1)
    max_val_images: int | None = Field(default=None, ge=1)
    val_every: int = Field(default=1, ge=1)
    val_full_res: bool | int = Field(
        default=True,
        description="Dice at 1280x1918 (True), at the training size (False), or at this mask height",
    )
    threshold: float = Field(default=0.5, gt=0, lt=1)
    largest_component: bool = Field(
        default=False, description="score validation masks after keeping their largest component"
    )
    val_tta: bool = Field(
        default=False, description="validate on the mean of the image's and its mirror's prediction"
    )
    guided_filter: GuidedFilterConfig | None = Field(
        default=None, description="score validation after edge-aware upsampling (refine)"
    )
    corrected_masks: str | None = Field(
        default=None,
        description="replacement train masks: a folder (or .zip) of <id>_mask.gif or a CSV of "
        "img,rle_mask rows (kaggle_utils.corrections); relative to the project root like data_dir; "
        "its content hash enters params_hash",
    )
    # -- snapshots and SWA (issue 17: schedules, snapshots, SWA) --
    snapshots: bool | list[int] = Field(
        default=False,
        description="write <stage>/snapshots/epoch_NN.pt (best.pt format, with its OOF) at the "
        "end of each LR cycle (true) or after these epochs: extra candidates for 05",
    )
    swa: SWAConfig | None = Field(
        default=None,
        description="average the weights of every epoch from swa.start_epoch: swa.pt, and "
        "best.pt when it validates better",
    )
    stages: list[StageConfig] = Field(min_length=1)

    @field_validator("val_full_res")
    @classmethod
    def _val_res(cls, v: bool | int) -> bool | int:
        if not isinstance(v, bool) and v < 32:
            raise ValueError("val_full_res as an int is a mask height >= 32")
        return v

    @model_validator(mode="after")
    def _snapshots_have_epochs(self) -> MemberConfig:
        sched = self.schedule
        cycles = sched.name in CYCLIC_SCHEDULES or sched.cyclic_from_epoch is not None
        if self.snapshots is True and not cycles:
            raise ValueError(
                f"snapshots: true writes one at each LR cycle's end, but schedule {sched.name!r} "
                "has no cycles: use schedule.name cyclic/cosine_restarts or "
                "schedule.cyclic_from_epoch, or list the epochs (snapshots: [10, 20])"
            )
        if isinstance(self.snapshots, list) and any(e < 1 for e in self.snapshots):
            raise ValueError(f"snapshots: epochs count from 1, got {self.snapshots}")
        return self

    @model_validator(mode="after")
    def _fold_in_range(self) -> MemberConfig:
        if self.fold >= self.n_folds:
            raise ValueError(f"fold {self.fold} must be < n_folds {self.n_folds}")
        return self

    def stage_name(self, i: int) -> str:
        """Folder name of stage i, e.g. "s1_1024x1024"."""
        if not 0 <= i < len(self.stages):
            raise IndexError(f"member {self.name} has stages 0..{len(self.stages) - 1}, asked {i}")
        h, w = self.stages[i].size
        return f"s{i + 1}_{h}x{w}"

    def stage_batch_size(self, i: int) -> int:
        return self.stages[i].batch_size or self.batch_size

    def stage_lr(self, i: int) -> float:
        return self.stages[i].lr or self.optimizer.lr

    def params_hash(self, stage: int) -> str:
        """Hash of what determines stage `stage`'s result (not workers or paths): a finished
        stage is only skipped when it is unchanged.

        `model`, `loss` and `augment` enter as the user wrote them (`spec()`), never with defaults
        filled in: a schema gaining a default must not retrain the stages users have finished."""
        # hardware is not a result: batch_size is the global batch on any number of devices
        hardware = {"num_workers", "description", "devices", "num_nodes", "sync_batchnorm"}
        hardware |= {"accelerator"}  # the Kaggle GPU a kernel asks for
        spec = self.model_dump(mode="json", exclude=hardware)
        for key in ("model", "loss", "augment"):
            value = getattr(self, key)
            spec[key] = None if value is None else to_jsonable_python(value.spec())
        _drop_defaults(spec, ADDED_MEMBER_KEYS)
        _drop_defaults(spec["schedule"], _SCHEDULE_DEFAULTS)
        if self.corrected_masks is not None:  # what the masks are, not where they lie: an
            from kaggle_utils.corrections import corrections_digest  # edited file retrains

            spec["corrected_masks"] = corrections_digest(self.corrected_masks)
        spec["stages"] = [_drop_defaults(s, ADDED_STAGE_KEYS) for s in spec["stages"][: stage + 1]]
        blob = json.dumps({"member": spec, "stage": stage}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
