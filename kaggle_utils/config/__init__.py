"""Validated parameter files: one YAML per ensemble member, one per ensemble.

Every mistake in a parameter file (a misspelt key, a wrong type, a crop larger than its frame)
fails on load -- before any data is read or any epoch is trained -- with the file, the key and the
allowed values in the message.

The nested mappings a member hands to a builder (`model`, `loss`, `augment`) are typed too, each from
its builder's registry (`models.ARCHITECTURES`, `losses.LOSS_TERMS`, `augment.TRANSFORMS`), yet each
keeps the mapping as written: `.spec()` is what `build_model` / `build_loss` /
`build_augmentations` take, and what the stage hash covers, so validated files train and hash as
before. Those registries import torch; they are imported on the first validation, not with this
module.

Modules: `errors` (ConfigError and the messages), `specs` (the typed builder mappings), `member`
(MemberConfig and its parts), `ensemble` (EnsembleConfig), `loading` (YAML, overrides, load_*).
"""

from __future__ import annotations

from kaggle_utils.config.ensemble import EnsembleConfig
from kaggle_utils.config.errors import ConfigError, describe_errors, key_error
from kaggle_utils.config.errors import _describe_errors as _describe_errors  # the former name
from kaggle_utils.config.loading import apply_overrides, load_ensemble, load_member
from kaggle_utils.config.member import (
    SIZE_MULTIPLE,
    EMAConfig,
    GuidedFilterConfig,
    MemberConfig,
    OptimizerConfig,
    PseudoLabelsConfig,
    ScheduleConfig,
    StageConfig,
    SWAConfig,
    parse_crop,
    parse_size,
)
from kaggle_utils.config.member import _Strict as _Strict  # the base the schemas share
from kaggle_utils.config.specs import DEFAULT_LOSS, AugmentSpec, LossSpec, ModelConfig, UserSpec

__all__ = [
    "AugmentSpec",
    "DEFAULT_LOSS",
    "SIZE_MULTIPLE",
    "ConfigError",
    "EMAConfig",
    "EnsembleConfig",
    "GuidedFilterConfig",
    "LossSpec",
    "MemberConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PseudoLabelsConfig",
    "SWAConfig",
    "ScheduleConfig",
    "StageConfig",
    "UserSpec",
    "apply_overrides",
    "describe_errors",
    "key_error",
    "load_ensemble",
    "load_member",
    "parse_crop",
    "parse_size",
]
