"""Typed mappings handed on to the builders: `model:`, `loss:` and `augment:` of a member.

Each is typed from its builder's registry (`models.ARCHITECTURES`, `losses.LOSS_TERMS`,
`augment.TRANSFORMS`), yet keeps the mapping as written: `.spec()` is what `build_model` /
`build_loss` / `build_augmentations` take, and what the stage hash covers. Those registries import
torch; they are imported on the first validation, not with this module.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)

from kaggle_utils.config.errors import describe_errors, key_error

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
