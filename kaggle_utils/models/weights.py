"""Encoder weights: smp's named downloads with an offline-aware error, or a local file.

Kaggle kernels without internet attach weights as a dataset, so `encoder_weights` may be a path to a
`.safetensors` / `.pth` / `.pt` file holding the encoder's state dict (bare, under an "encoder."
prefix as in a whole smp model, or wrapped in {"state_dict": ...} as training scripts save it).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Keys of a classification head that an encoder never has; silently dropped from a weights file.
_HEAD_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.", "_fc.")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "encoder")
_PREFIXES = ("module.", "_orig_mod.", "model.encoder.", "net.encoder.", "encoder.")


class WeightsDownloadError(RuntimeError):
    """Named pretrained weights (e.g. "imagenet") could not be fetched: offline or no access."""


def is_weights_path(weights: object) -> bool:
    """True when `encoder_weights` names a local file rather than smp's named weights."""
    if isinstance(weights, os.PathLike):
        return True
    if not isinstance(weights, str):
        return False
    return weights.lower().endswith(WEIGHT_SUFFIXES) or "/" in weights or os.sep in weights


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):  # huggingface_hub's own (most subclass OSError already)
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    with contextlib.suppress(ImportError):
        import httpx

        errors.append(httpx.TransportError)
    return tuple(errors)


@contextlib.contextmanager
def download_errors(encoder: str, weights: str | None) -> Iterator[None]:
    """Turn the network errors of smp's weight download into one message that says how to fix it."""
    if weights is None:  # nothing is downloaded; let any error through unchanged
        yield
        return
    try:
        yield
    except _network_errors() as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsDownloadError(
            f"encoder_weights={weights!r} for encoder {encoder!r} cannot be downloaded: no internet "
            f"access or the weights hub is unreachable ({type(exc).__name__}: {first_line}). "
            "Pass a local weights file path as encoder_weights (e.g. a .safetensors or .pth file "
            "from a Kaggle dataset attached to the notebook: "
            "/kaggle/input/<dataset>/<encoder>.safetensors), or encoder_weights: null to start "
            "from random weights."
        ) from exc


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read tensors from a .safetensors or torch file, unwrapping {"state_dict": ...} layouts."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder weights file not found: {path} (encoder_weights must be an existing "
            ".safetensors/.pth file, 'imagenet' or null)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: object = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle / zip errors come in several kinds
            raise ValueError(
                f"encoder weights file {path} cannot be read as a torch file: {exc}"
            ) from exc
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if isinstance(state, Mapping) and not _is_tensor_dict(state):
            inner = next(
                (state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None
            )
            if inner is None:
                break
            state = inner
    if not isinstance(state, Mapping) or not _is_tensor_dict(state):
        raise ValueError(
            f"encoder weights file {path} holds no state dict of tensors "
            f"(top-level keys: {list(state)[:8] if isinstance(state, Mapping) else type(state).__name__})"
        )
    return dict(state)


def _is_tensor_dict(state: Mapping) -> bool:
    return len(state) > 0 and all(isinstance(v, torch.Tensor) for v in state.values())


def _strip_prefixes(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes ("module.", "encoder.", ...) until the keys look like the encoder's."""
    for _ in range(len(_PREFIXES)):
        if sum(k in wanted for k in state) >= len(wanted):
            break
        for prefix in _PREFIXES:
            selected = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if selected:
                state = selected
                break
        else:
            break
    return state


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load a local weights file into `encoder`; missing or mis-shaped keys raise naming the file."""
    state = read_state_dict(path)
    own = encoder.state_dict()
    state = _strip_prefixes(state, set(own))
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(
            f"encoder weights file {path} does not fit encoder {type(encoder).__name__}: "
            f"{len(missing)} of {len(own)} keys missing (first: {missing[:5]}; the file has e.g. "
            f"{list(state)[:5]}). Save the weights of the same encoder (name and depth), e.g. "
            "safetensors.torch.save_file(smp.encoders.get_encoder(name).state_dict(), file)."
        )
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(v.shape)}"
        for k, v in own.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError(f"encoder weights file {path} has tensors of the wrong shape: {wrong[:5]}")
    extra = [k for k in state if k not in own and not k.startswith(_HEAD_PREFIXES)]
    if extra:
        warnings.warn(
            f"{path}: {len(extra)} keys not used by the encoder were ignored (e.g. {extra[:3]})",
            stacklevel=2,
        )
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)
