"""Model factory: `build_model(spec)` for the RefineNet family and every smp architecture.

A member's parameter file names a model as a mapping, e.g.
`{arch: refinenet_v4, encoder: resnet34, encoder_weights: imagenet, classes: 1}`; the result is a
`SegmentationModel` that takes any input size (pads to a multiple of 32, crops back).

encoder_weights: null (random), a smp weights name ("imagenet", downloaded by smp; offline this
fails with a message saying how to fix it), or a local .safetensors/.pth path (Kaggle datasets).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from kaggle_utils.models.refinenet import (
    FIXED_KEYS,
    TUNABLE_KEYS,
    VARIANTS,
    DecoderBlock,
    RefineNet,
    RefineNetDecoder,
)
from kaggle_utils.models.weights import (
    WeightsDownloadError,
    download_errors,
    is_weights_path,
    load_encoder_weights,
    read_state_dict,
)
from kaggle_utils.models.wrapper import SegmentationModel

__all__ = [
    "ARCHITECTURES",
    "COMMON_KEYS",
    "FIXED_KEYS",
    "TUNABLE_KEYS",
    "Architecture",
    "DecoderBlock",
    "RefineNet",
    "RefineNetDecoder",
    "SegmentationModel",
    "WeightsDownloadError",
    "allowed_extras",
    "arch_keywords",
    "build_model",
    "load_encoder_weights",
    "read_state_dict",
]

COMMON_KEYS = ("arch", "encoder", "encoder_weights", "classes", "in_channels")


@dataclass(frozen=True)
class Architecture:
    """A registry entry: how to build the bare network for one `arch` name."""

    name: str
    family: str  # "refinenet" or "smp"
    default_encoder: str
    build: Callable[..., nn.Module]  # (encoder, encoder_weights, in_channels, classes, **extras)
    extras: tuple[str, ...] | None  # allowed extra spec keys; None = passed to smp as is


def _refinenet_builder(name: str) -> Callable[..., nn.Module]:
    fixed = VARIANTS[name][1]

    def build(encoder: str, encoder_weights: Any, in_channels: int, classes: int, **extras: Any):
        return RefineNet(
            encoder_name=encoder,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=classes,
            **{**fixed, **extras},
        )

    return build


def _smp_builder(name: str) -> Callable[..., nn.Module]:
    def build(encoder: str, encoder_weights: Any, in_channels: int, classes: int, **extras: Any):
        local = encoder_weights is not None and is_weights_path(encoder_weights)
        named = None if local else encoder_weights
        with download_errors(encoder, named):
            model = smp.create_model(
                name,
                encoder_name=encoder,
                encoder_weights=named,
                in_channels=in_channels,
                classes=classes,
                **extras,
            )
        if local:
            load_encoder_weights(model.encoder, encoder_weights)
        return model

    return build


ARCHITECTURES: dict[str, Architecture] = {
    **{
        name: Architecture(name, "refinenet", enc, _refinenet_builder(name), TUNABLE_KEYS)
        for name, (enc, _) in VARIANTS.items()
    },
    **{
        name: Architecture(name, "smp", "resnet34", _smp_builder(name), None)
        for name in smp.MODEL_ARCHITECTURES_MAPPING
    },
}


def _smp_keywords(name: str) -> tuple[str, ...]:
    """The named keyword arguments of an smp architecture (its **kwargs only reach timm encoders)."""
    params = inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[name].__init__).parameters
    skip = {"self", "encoder_name", "encoder_weights", "in_channels", "classes"}
    return tuple(
        p.name for p in params.values() if p.name not in skip and p.kind is not p.VAR_KEYWORD
    )


def allowed_extras(arch: Architecture, encoder: str) -> tuple[str, ...] | None:
    """The spec keys beyond COMMON_KEYS that `arch` takes with `encoder`; None = any, as an smp
    arch hands unknown keys to a timm ("tu-") encoder."""
    if arch.extras is not None:
        return arch.extras
    return None if encoder.startswith("tu-") else _smp_keywords(arch.name)


@functools.cache
def arch_keywords(name: str) -> dict[str, tuple[Any, Any]]:
    """Extra spec keys of arch `name` -> (type annotation, default), read from the signature of
    the class it builds, so parameter-file schemas follow the code instead of copying its lists."""
    arch = ARCHITECTURES[name]
    if arch.family == "refinenet":
        cls, keys = RefineNet, TUNABLE_KEYS
    else:
        cls, keys = smp.MODEL_ARCHITECTURES_MAPPING[name], _smp_keywords(name)
    params = inspect.signature(cls.__init__).parameters
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: the builder checks the value
        hints = {}
    return {key: (hints.get(key, Any), params[key].default) for key in keys}


def build_model(spec: Mapping[str, Any]) -> SegmentationModel:
    """Build the model a member's `model:` mapping describes (see module docstring)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"model spec must be a mapping with an 'arch' key, got {spec!r}")
    arch_name = spec.get("arch")
    if arch_name is None:
        raise ValueError(f"model spec lacks 'arch'; valid archs: {sorted(ARCHITECTURES)}")
    arch = ARCHITECTURES.get(str(arch_name).lower())
    if arch is None:
        raise ValueError(f"unknown model arch {arch_name!r}; valid archs: {sorted(ARCHITECTURES)}")
    encoder = spec.get("encoder") or arch.default_encoder
    weights = spec.get("encoder_weights")
    if weights is not None and not isinstance(weights, str) and not is_weights_path(weights):
        raise ValueError(
            f"encoder_weights must be null, a weights name or a file path, got {weights!r}"
        )
    weights = str(weights) if weights is not None else None
    classes = int(spec.get("classes", 1))
    in_channels = int(spec.get("in_channels", 3))
    extras = {k: v for k, v in spec.items() if k not in COMMON_KEYS}

    allowed = allowed_extras(arch, encoder)
    if allowed is not None:
        for key in extras:
            if arch.family == "refinenet" and key in FIXED_KEYS:
                raise ValueError(f"model key {key!r} is fixed by arch {arch.name!r}; remove it")
            if key not in allowed:
                raise ValueError(
                    f"unknown model key {key!r} for arch {arch.name!r}; allowed keys: "
                    f"{list(COMMON_KEYS) + list(allowed)}"
                )
        if "decoder_channels" in extras:
            extras["decoder_channels"] = tuple(int(c) for c in extras["decoder_channels"])
    try:
        net = arch.build(encoder, weights, in_channels, classes, **extras)
    except KeyError as exc:  # smp: unknown encoder or weights name (with its long list)
        message = str(exc.args[0]) if exc.args else str(exc)
        raise ValueError(f"model arch {arch.name!r}, encoder {encoder!r}: {message}") from exc
    except TypeError as exc:  # smp: unexpected keyword from the spec
        raise ValueError(f"model arch {arch.name!r} rejects the spec {dict(spec)}: {exc}") from exc

    resolved = {
        "arch": arch.name,
        "encoder": encoder,
        "encoder_weights": weights,
        "classes": classes,
        "in_channels": in_channels,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in extras.items()},
    }
    return SegmentationModel(net, resolved, pad_multiple=32)
