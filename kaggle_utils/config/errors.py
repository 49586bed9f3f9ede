"""Errors of parameter files: ConfigError, and one line per mistake naming key and fix.

A misspelt key lists the allowed keys of the class that checked it (each model arch has its own)
with the close match; a wrong choice lists the allowed values.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A parameter file is invalid; the message names the file, the key and what is allowed."""


def key_error(key: str | tuple, message: str, value: Any = None) -> ValidationError:
    """A validation error at `key` (a name or a path inside the mapping being validated); raised
    inside a validator its location gains the outer path, so the message names e.g. `model.merge`."""
    loc = key if isinstance(key, tuple) else (key,)
    error = PydanticCustomError("invalid_key", "{message}", {"message": message})
    return ValidationError.from_exception_data(
        "parameters", [{"type": error, "loc": loc, "input": value}]
    )


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
    schema_for = getattr(owner, "schema_for", None)  # specs.UserSpec's hook (no import back)
    if isinstance(data, Mapping) and callable(schema_for):
        try:
            return schema_for(data)
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
