"""Reading parameter files: YAML, dotted-key overrides, validation with errors naming file and key."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kaggle_utils.config.ensemble import EnsembleConfig
from kaggle_utils.config.errors import ConfigError, describe_errors
from kaggle_utils.config.member import MemberConfig


def resolve_file(path: str | os.PathLike) -> Path:
    """A parameter file: absolute as given; relative under the project root (the folder holding
    params/) first, then from the cwd, so `params/demo/x.yaml` works from a kernel started in
    notebooks/. Raises ConfigError naming every absolute path tried."""
    from kaggle_utils import environment

    tried = environment.path_candidates(path)
    if environment.on_kaggle():  # as before on Kaggle: the path as given
        return Path(path)
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"{path}: parameter file not found (tried {' and '.join(map(str, tried))}); give an "
        "absolute path or one relative to the project root (the folder holding params/)"
    )


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
    """Read and validate a member YAML (plus dotted-key overrides); errors name file and key.
    A relative path is looked up under the project root, then the cwd (`resolve_file`)."""
    path = resolve_file(path)
    raw = apply_overrides(_read_yaml(path), overrides)
    raw.setdefault("name", path.stem)
    try:
        return MemberConfig.model_validate(raw)
    except ValidationError as exc:
        where = f"{path} (with overrides {overrides})" if overrides else path
        raise ConfigError(describe_errors(where, MemberConfig, exc, raw)) from None


def load_ensemble(path: str | os.PathLike, validate_members: bool = True) -> EnsembleConfig:
    """Read an ensemble YAML; member files are resolved relative to it and validated too.
    A relative path is looked up under the project root, then the cwd (`resolve_file`)."""
    path = resolve_file(path)
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
