"""Validated parameter files: one YAML per ensemble member, one per ensemble.

Every mistake in a parameter file (a misspelt key, a wrong type, a size that is not a multiple of 32)
fails on load -- before any data is read or any epoch is trained -- with the file, the key and the
allowed values in the message.

The nested mappings a member hands to a builder (`model`, `loss`, `augment`) are typed too, each from
its builder's registry (`models.ARCHITECTURES`, `losses.LOSS_TERMS`, `augment.TRANSFORMS`), yet each
keeps the mapping as written: `.spec()` is what `build_model` / `build_loss` /
`build_augmentations` take, and what the stage hash covers, so validated files train and hash as
before. Those registries import torch; they are imported on the first validation, not with this
module.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError, to_jsonable_python

__all__ = [
    "AugmentSpec",
    "ConfigError",
    "EMAConfig",
    "EnsembleConfig",
    "LossSpec",
    "MemberConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "StageConfig",
    "UserSpec",
    "apply_overrides",
    "describe_errors",
    "key_error",
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


# ------------------------------------------------ typed mappings handed on to the builders


def key_error(key: str | tuple, message: str, value: Any = None) -> ValidationError:
    """A validation error at `key` (a name or a path inside the mapping being validated); raised
    inside a validator its location gains the outer path, so the message names e.g. `model.merge`."""
    loc = key if isinstance(key, tuple) else (key,)
    error = PydanticCustomError("invalid_key", "{message}", {"message": message})
    return ValidationError.from_exception_data(
        "parameters", [{"type": error, "loc": loc, "input": value}]
    )


_S = TypeVar("_S", bound="UserSpec")


class UserSpec(BaseModel):
    """A mapping the user writes for a builder: typed and checked key by key, handed on as written.

    `spec()` is the input mapping itself -- no defaults filled in, numbers as written -- because the
    builders and the stage hash took exactly that before these schemas existed: a validated file
    builds the same objects and keeps its finished stages. Dumps give the same mapping. Frozen, so
    `spec()` never goes stale; change a file or pass overrides instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    _spec: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def schema_for(cls, data: Mapping[str, Any]) -> type[UserSpec]:
        """The class that validates `data`: this one, or one it dispatches to (a model's arch)."""
        return cls

    @model_validator(mode="wrap")
    @classmethod
    def _validate_as_written(cls, data: Any, handler: Any) -> Any:
        if isinstance(data, Mapping):
            target = cls.schema_for(data)
            if target is not cls:
                return target.model_validate(data)
        out = handler(data)
        if isinstance(data, Mapping):
            out._spec = copy.deepcopy(dict(data))
        return out

    @model_serializer(mode="plain")
    def _dump_as_written(self) -> dict[str, Any]:
        return self.spec()

    def spec(self) -> dict[str, Any]:
        """The mapping as the user wrote it: what the builder (build_model, build_loss,
        build_augmentations) takes."""
        return copy.deepcopy(self._spec)

    @classmethod
    def from_spec(cls: type[_S], spec: Mapping[str, Any] | UserSpec | None, where: str) -> _S:
        """Validate a plain mapping as a builder receives it; ValueError naming key and fix."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, UserSpec):
            spec = spec.spec()
        if spec is not None and not isinstance(spec, Mapping):
            raise ValueError(f"{where} must be a mapping of keys, got {spec!r}")
        data = dict(spec or {})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(describe_errors(where, cls, exc, data)) from None


class ModelConfig(UserSpec):
    """`model:` -- the keys every arch takes; `schema_for` adds the arch's own keys, read from the
    model registry (kaggle_utils.models), so a misspelt key fails on load naming that arch's keys.

    smp archs with a `tu-` (timm) encoder also pass unknown keys on to timm, as build_model does.
    """

    arch: str = Field(description="a kaggle_utils.models.ARCHITECTURES name, e.g. refinenet_v4")
    encoder: str | None = Field(default=None, description="None -> the arch's default encoder")
    encoder_weights: str | Path | None = Field(
        default=None, description="null (random), a weights name or a .safetensors/.pth path"
    )
    classes: int = Field(default=1, ge=1)
    in_channels: int = Field(default=3, ge=1)

    @classmethod
    def schema_for(cls, data: Mapping[str, Any]) -> type[UserSpec]:
        if cls is not ModelConfig:
            return cls
        from kaggle_utils.models import ARCHITECTURES, allowed_extras

        given = data.get("arch")
        if given is None:
            raise key_error("arch", f"model needs an 'arch'; valid archs: {_arch_list()}")
        name = str(given).lower()
        if name not in ARCHITECTURES:
            _arch_choice().model_validate({"arch": name})  # literal error: valid archs, close one
        encoder = data.get("encoder") or ARCHITECTURES[name].default_encoder
        open_extras = allowed_extras(ARCHITECTURES[name], str(encoder)) is None
        return _arch_schema(name, open_extras)

    def __reduce__(self) -> tuple:
        # per-arch classes are built at run time (no module attribute): rebuild from the spec
        return (ModelConfig.model_validate, (self.spec(),))


class _OpenModelConfig(ModelConfig):
    """An smp arch with a timm encoder: keys beyond smp's own reach timm, so none is refused."""

    model_config = ConfigDict(extra="allow")


class _RefineNetModelConfig(ModelConfig):
    """A RefineNet variant: the keys that make the variant (merge, ...) are fixed by its name."""

    @model_validator(mode="before")
    @classmethod
    def _fixed_keys(cls, data: Any) -> Any:
        from kaggle_utils.models import FIXED_KEYS
        from kaggle_utils.models.refinenet import VARIANTS

        if not isinstance(data, Mapping):
            return data
        arch = str(data.get("arch", "")).lower()
        fixed = VARIANTS.get(arch, (None, {}))[1]
        for key in FIXED_KEYS:
            if key in data:
                raise key_error(
                    key,
                    f"'{key}' is fixed by arch {arch!r} ({key}: {fixed.get(key, 'default')}); "
                    f"remove it, or choose the refinenet_v* arch with the {key} you want",
                    data[key],
                )
        return data


def _arch_list() -> str:
    from kaggle_utils.models import ARCHITECTURES

    return ", ".join(sorted(ARCHITECTURES))


@functools.cache
def _arch_choice() -> type[BaseModel]:
    """`arch` as a choice of the registry's names: an unknown one lists them with the close one."""
    from kaggle_utils.models import ARCHITECTURES

    names = Literal[tuple(sorted(ARCHITECTURES))]  # type: ignore[valid-type]
    return create_model("ModelArch", arch=(names, ...))


def _field_type(annotation: Any) -> Any:
    """The builder's annotation when pydantic can check it, else Any (the builder checks)."""
    try:
        TypeAdapter(annotation)
    except Exception:  # noqa: BLE001 - any type pydantic has no schema for
        return Any
    return annotation


@functools.cache
def _arch_schema(arch: str, open_extras: bool) -> type[ModelConfig]:
    """The `model:` schema of one arch: common keys plus the extra keys its builder names."""
    from kaggle_utils.models import ARCHITECTURES, arch_keywords

    family = ARCHITECTURES[arch].family
    if family == "refinenet":
        base: type[ModelConfig] = _RefineNetModelConfig
    else:
        base = _OpenModelConfig if open_extras else ModelConfig
    fields: dict[str, Any] = {
        key: (_field_type(annotation), Field(default=default))
        for key, (annotation, default) in arch_keywords(arch).items()
    }
    suffix = "_open" if open_extras else ""
    return create_model(f"ModelConfig_{arch}{suffix}", __base__=base, __module__=__name__, **fields)


class LossSpec(UserSpec):
    """`loss:` -- validated by kaggle_utils.losses.LossConfig (built from its LOSS_TERMS
    registry), imported on first use so that this module loads without torch."""

    @classmethod
    def schema_for(cls, data: Mapping[str, Any]) -> type[UserSpec]:
        if cls is not LossSpec:
            return cls
        from kaggle_utils.losses import LossConfig

        return LossConfig


class AugmentSpec(UserSpec):
    """`augment:` -- validated by kaggle_utils.augment.AugmentConfig (one schema per transform),
    imported on first use."""

    @classmethod
    def schema_for(cls, data: Mapping[str, Any]) -> type[UserSpec]:
        if cls is not AugmentSpec:
            return cls
        from kaggle_utils.augment import AugmentConfig

        return AugmentConfig


DEFAULT_LOSS: dict[str, Any] = {"bce": 1.0, "dice": 1.0}  # a member without `loss:` (hashed so)


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
        stage is only skipped when it is unchanged.

        `model`, `loss` and `augment` enter as the user wrote them (`spec()`), never with defaults
        filled in: a schema gaining a default must not retrain the stages users have finished."""
        # hardware is not a result: batch_size is the global batch on any number of devices
        hardware = {"num_workers", "description", "devices", "num_nodes"}
        spec = self.model_dump(mode="json", exclude=hardware)
        for key in ("model", "loss", "augment"):
            value = getattr(self, key)
            spec[key] = None if value is None else to_jsonable_python(value.spec())
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


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic class inside an annotation (X, X | None, list[X]), if any."""
    found = None
    for cand in (annotation, *typing.get_args(annotation)):
        for inner in (cand, *typing.get_args(cand)):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                found = inner
    return found


def _dispatch(owner: type[BaseModel], data: Any) -> type[BaseModel]:
    """The class that validated `data` where `owner` dispatches on it (a model's arch)."""
    if isinstance(data, Mapping) and issubclass(owner, UserSpec):
        try:
            return owner.schema_for(data)
        except ValidationError:  # e.g. an unknown arch: reported as its own error
            return owner
    return owner


def _model_at(model: type[BaseModel], loc: tuple, raw: Any = None) -> type[BaseModel] | None:
    """The pydantic class that owns the key at `loc` (for 'allowed keys'); `raw`, the validated
    input, picks the class a dispatching field chose (each arch has its own keys)."""
    current: type[BaseModel] | None = _dispatch(model, raw)
    data = raw
    for part in loc[:-1]:
        if isinstance(part, int):
            data = data[part] if isinstance(data, list) and -len(data) <= part < len(data) else None
            continue
        if current is None:
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        data = data.get(part) if isinstance(data, Mapping) else None
        current = _model_class(field.annotation)
        if current is not None:
            current = _dispatch(current, data)
    return current


def _allowed_keys(owner: type[BaseModel] | None) -> list[str]:
    return sorted(k for k in owner.model_fields if k != "source") if owner else []


def _did_you_mean(given: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(given), choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_key(key: str, owner: type[BaseModel] | None, name: str) -> str:
    allowed = _allowed_keys(owner)
    hint = getattr(owner, "unknown_key_hint", None)
    extra = hint(name) if callable(hint) else ""
    return (
        f"unknown key '{key}'{_did_you_mean(name, allowed)}; allowed keys: "
        f"{', '.join(allowed)}{extra}"
    )


def _not_allowed(key: str, err: dict[str, Any]) -> str:
    expected = str(err.get("ctx", {}).get("expected", ""))
    choices = re.findall(r"'([^']*)'", expected)
    return (
        f"key '{key}': {err['input']!r} is not allowed{_did_you_mean(err['input'], choices)}; "
        f"allowed values: {expected}"
    )


def describe_errors(
    path: Path | str, model: type[BaseModel], exc: ValidationError, raw: Any = None
) -> str:
    """One line per error: the key path, what is wrong and the fix (allowed keys or values, the
    close match of a misspelling). `raw`: the validated input, so keys of a dispatching mapping
    (each model arch has its own) are listed from the class that checked them."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<top level>"
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key(key, _model_at(model, loc, raw), str(loc[-1])))
        elif err["type"] == "literal_error":
            lines.append(_not_allowed(key, err))
        elif err["type"] == "missing":
            lines.append(f"key '{key}' is required")
        elif err["type"] == "invalid_key":
            got = "" if err.get("input") is None else f" (got {err['input']!r})"
            lines.append(f"key '{key}': {err['msg']}{got}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            where = f"key '{key}': " if loc else ""
            lines.append(f"{where}{msg} (got {err.get('input')!r})")
    return f"{path}: invalid parameters:\n  " + "\n  ".join(lines)


_describe_errors = describe_errors  # the name this module used before


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
        raise ConfigError(describe_errors(where, MemberConfig, exc, raw)) from None


def load_ensemble(path: str | os.PathLike, validate_members: bool = True) -> EnsembleConfig:
    """Read an ensemble YAML; member files are resolved relative to it and validated too."""
    path = Path(path)
    raw = _read_yaml(path)
    raw.setdefault("name", path.stem)
    try:
        ens = EnsembleConfig.model_validate({**raw, "source": path})
    except ValidationError as exc:
        raise ConfigError(describe_errors(path, EnsembleConfig, exc, raw)) from None
    if validate_members:
        for rel, member_path in zip(ens.members, ens.member_paths(), strict=True):
            if not member_path.is_file():
                raise ConfigError(
                    f"{path}: key 'members': member file {rel!r} not found ({member_path})"
                )
            load_member(member_path)
    return ens
