"""Validated parameter files: one YAML per ensemble member, one per ensemble.

Every mistake in a parameter file (a misspelt key, a wrong type, a size that is not a multiple of 32)
fails on load -- before any data is read or any epoch is trained -- with the file, the key and the
allowed values in the message.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ConfigError",
    "EMAConfig",
    "EnsembleConfig",
    "MemberConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "StageConfig",
    "apply_overrides",
    "load_ensemble",
    "load_member",
    "parse_size",
]

SIZE_MULTIPLE = 32


class ConfigError(ValueError):
    """A parameter file is invalid; the message names the file, the key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_size(value: Any) -> tuple[int, int]:
    """(H, W) from "1024x1024", "1280x1792", 1024 (square) or [H, W]; sides multiples of 32."""
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
    if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(
            f"size {h}x{w}: both sides must be positive multiples of {SIZE_MULTIPLE} "
            f"(e.g. {max(SIZE_MULTIPLE, round(h / 32) * 32)}x{max(SIZE_MULTIPLE, round(w / 32) * 32)})"
        )
    return h, w


class StageConfig(_Strict):
    """One resolution stage of a member's curriculum."""

    size: tuple[int, int] = Field(description="(H, W) training size, multiples of 32")
    epochs: int = Field(ge=1)
    lr: float | None = Field(default=None, gt=0, description="peak LR; None -> optimizer.lr")
    batch_size: int | None = Field(default=None, ge=1, description="None -> member batch_size")
    warmup_epochs: float | None = Field(default=None, ge=0, description="None -> schedule's")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> tuple[int, int]:
        return parse_size(v)


class OptimizerConfig(_Strict):
    name: Literal["adamw", "sgd", "adam"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD only")
    nesterov: bool = True
    grad_clip: float | None = Field(default=None, gt=0, description="max grad norm")


class ScheduleConfig(_Strict):
    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(default=0.0, ge=0)
    min_lr_ratio: float = Field(default=0.01, ge=0, le=1, description="cosine floor, x peak LR")
    step_epochs: int = Field(default=10, ge=1, description="step: decay every N epochs")
    gamma: float = Field(default=0.1, gt=0, le=1, description="step: decay factor")


class EMAConfig(_Strict):
    decay: float = Field(default=0.999, gt=0, lt=1)
    warmup_steps: int = Field(default=0, ge=0, description="plain copy of weights before this step")


class GuidedFilterConfig(_Strict):
    """Edge-aware upsampling of the prediction with the photo as guide (``refine``)."""

    scale: Literal[1, 2, 4, 8] = Field(default=4, description="guide = photo at 1/scale size")
    radius: int = Field(default=2, ge=1, le=32, description="window radius, in guide pixels")
    eps: float = Field(default=1e-4, gt=0, description="edge strength to follow (gray in 0..1)")


class MemberConfig(_Strict):
    """One ensemble member: model, loss, optimisation and its resolution stages."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    model: dict[str, Any]
    loss: dict[str, Any] = Field(default_factory=lambda: {"bce": 1.0, "dice": 1.0})
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    batch_size: int = Field(default=8, ge=1)
    accumulate: int = Field(default=1, ge=1, description="gradient accumulation steps")
    augment: dict[str, Any] | None = Field(default=None, description="augment.build_augmentations")
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
    cache: bool = Field(default=False, description="keep decoded resized images in memory")
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
    stages: list[StageConfig] = Field(min_length=1)

    @field_validator("model")
    @classmethod
    def _model(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "arch" not in v:
            raise ValueError("model needs an 'arch' (e.g. refinenet_v4, unet)")
        return v

    @field_validator("val_full_res")
    @classmethod
    def _val_res(cls, v: bool | int) -> bool | int:
        if not isinstance(v, bool) and v < 32:
            raise ValueError("val_full_res as an int is a mask height >= 32")
        return v

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
        stage is only skipped when it is unchanged."""
        spec = self.model_dump(mode="json", exclude={"num_workers", "description"})
        if spec["guided_filter"] is None:  # added later: stages finished before stay valid
            del spec["guided_filter"]
        spec["stages"] = spec["stages"][: stage + 1]
        blob = json.dumps({"member": spec, "stage": stage}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class EnsembleConfig(_Strict):
    """Which members (and folds) make the ensemble, and where data and runs live."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    members: list[str] = Field(min_length=1, description="member YAMLs, relative to this file")
    folds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    n_folds: int = Field(default=5, ge=2, description="02_split: folds grouped by car")
    stratify: Literal["make", "coverage", None] = "make"
    seed: int = 0
    data_dir: str | None = None
    run_dir: str | None = Field(default=None, description="None -> runs/<name>")
    synthetic: dict[str, Any] | None = Field(
        default=None, description="generate synthetic data into data_dir first (demo)"
    )
    tta: list[Literal["none", "hflip"]] = Field(default_factory=lambda: ["none", "hflip"])
    combine: Literal["mean", "vote"] = "mean"
    threshold: float | None = Field(default=None, gt=0, lt=1, description="None -> tuned on OOF")
    largest_component: bool = Field(
        default=False, description="06: keep each test mask's largest connected component"
    )
    guided_filter: GuidedFilterConfig | None = Field(
        default=None, description="06: upsample with the photo as guide (refine)"
    )
    predict_batch_size: int = Field(default=4, ge=1)
    submit_limit: int | None = Field(default=None, ge=1)
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _folds_in_range(self) -> EnsembleConfig:
        bad = [f for f in self.folds if not 0 <= f < self.n_folds]
        if bad:
            raise ValueError(
                f"folds {bad} must lie in 0..{self.n_folds - 1} (n_folds={self.n_folds})"
            )
        return self

    def member_paths(self, ensemble_file: str | os.PathLike | None = None) -> list[Path]:
        """Member files resolved against the ensemble file's folder."""
        source = Path(ensemble_file) if ensemble_file else self.source
        base = source.parent if source else Path.cwd()
        return [(base / m).resolve() for m in self.members]

    def resolved_run_dir(self) -> str:
        return self.run_dir or f"runs/{self.name}"


# ---------------------------------------------------------------- loading and error messages


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}"
        )
    return raw


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the key at `loc` (for 'allowed keys')."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        nxt = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            for inner in (cand, *getattr(cand, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    nxt = inner
        current = nxt
    return current


def _describe_errors(path: Path | str, model: type[BaseModel], exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<top level>"
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc)
            allowed = sorted(owner.model_fields) if owner else []
            allowed = [a for a in allowed if a != "source"]
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"unknown key '{key}'{hint}; allowed keys: {', '.join(allowed)}")
        elif err["type"] == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            lines.append(
                f"key '{key}': {err['input']!r} is not allowed; allowed values: {expected}"
            )
        elif err["type"] == "missing":
            lines.append(f"key '{key}' is required")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"key '{key}': {msg} (got {err.get('input')!r})")
    return f"{path}: invalid parameters:\n  " + "\n  ".join(lines)


def _coerce_override(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Dotted keys ("optimizer.lr", "stages.0.epochs") set into a copy of the raw mapping.

    Values given as strings are parsed as YAML ("1e-3" -> float) so command lines can pass them.
    """
    out = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        parts = str(dotted).split(".")
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                try:
                    idx = int(part)
                    node[idx]  # noqa: B018 - raises IndexError for a bad index
                except (ValueError, IndexError):
                    raise ConfigError(
                        f"override '{dotted}': '{part}' is not an index of a list of {len(node)}"
                    ) from None
                if last:
                    node[idx] = _coerce_override(value)
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = _coerce_override(value)
                else:
                    node = node.setdefault(part, {})
                    if node is None:
                        node = {}
            else:
                raise ConfigError(f"override '{dotted}': cannot descend into {node!r}")
    return out


def load_member(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> MemberConfig:
    """Read and validate a member YAML (plus dotted-key overrides); errors name file and key."""
    path = Path(path)
    raw = apply_overrides(_read_yaml(path), overrides)
    raw.setdefault("name", path.stem)
    try:
        return MemberConfig.model_validate(raw)
    except ValidationError as exc:
        where = f"{path} (with overrides {overrides})" if overrides else path
        raise ConfigError(_describe_errors(where, MemberConfig, exc)) from None


def load_ensemble(path: str | os.PathLike, validate_members: bool = True) -> EnsembleConfig:
    """Read an ensemble YAML; member files are resolved relative to it and validated too."""
    path = Path(path)
    raw = _read_yaml(path)
    raw.setdefault("name", path.stem)
    try:
        ens = EnsembleConfig.model_validate({**raw, "source": path})
    except ValidationError as exc:
        raise ConfigError(_describe_errors(path, EnsembleConfig, exc)) from None
    if validate_members:
        for rel, member_path in zip(ens.members, ens.member_paths(), strict=True):
            if not member_path.is_file():
                raise ConfigError(
                    f"{path}: key 'members': member file {rel!r} not found ({member_path})"
                )
            load_member(member_path)
    return ens
