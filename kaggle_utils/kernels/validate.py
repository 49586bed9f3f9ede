"""Offline checks of kernel and dataset bundles: the kaggle CLI's own rules, plus a few of Kaggle's.

`kaggle kernels push` validates `kernel-metadata.json` before it sends anything (see
`KaggleApi.kernels_push` in kaggle/api/kaggle_api_extended.py); the rules below reproduce those
checks one by one, so a bundle that passes here is one the CLI sends. A few rules are stricter than
the CLI because the server (or our workflow) rejects what the CLI lets through: the owner and slug
syntax, a title of at most 50 characters that resolves to the slug (the CLI only warns), `enable_internet` stated explicitly
(the CLI's default is on), and a notebook that is a valid nbformat document. Every problem names
the file and the field.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

KERNEL_METADATA_FILE = "kernel-metadata.json"
DATASET_METADATA_FILE = "dataset-metadata.json"

# KaggleApi.valid_push_language_types / valid_push_kernel_types / valid_push_pinning_types
VALID_LANGUAGES = ("python", "r", "rmarkdown")
VALID_KERNEL_TYPES = ("script", "notebook")
VALID_PINNING_TYPES = ("original", "latest")
BOOLEAN_FIELDS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
LIST_FIELDS = (
    "dataset_sources",
    "competition_sources",
    "kernel_sources",
    "model_sources",
    "keywords",
)
MAX_TITLE = 50  # Kaggle's limit on kernel titles (the server fails on longer ones)
# Kaggle's slug syntax (KaggleApi._validate_slug_syntax): lowercase words joined by single hyphens.
SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
OWNER_RE = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")

# The accelerator ids `kaggle kernels push --accelerator` and kernel-metadata.json's `machine_shape`
# take: the kaggle CLI's docs/kernels.md (the list "as of Feb 2026"; kaggle-cli PR #1198: NvidiaTeslaT4
# is GPU T4 x2, a single T4 is not offered; NvidiaTeslaT4Highmem is an internal pool) and the retired
# shapes of the installed CLI (kaggle_api_extended._RETIRED_ACCELERATORS). Kaggle substitutes a
# retired shape silently; the CLI only warns.
ACCELERATORS = {
    "NvidiaTeslaT4": "GPU T4 x2 (Kaggle's default GPU)",
    "NvidiaTeslaP100": "GPU P100 (retired: sessions run on T4 x2)",
    "NvidiaL4": "GPU L4 (some competitions only)",
    "NvidiaL4X1": "GPU L4 x1 (some competitions only)",
    "NvidiaTeslaA100": "GPU A100 (some competitions only)",
    "NvidiaH100": "GPU H100 (some competitions only)",
    "NvidiaRtxPro6000": "GPU RTX PRO 6000 (some competitions only)",
    "TpuV5E8": "TPU v5e-8",
    "TpuV6E8": "TPU v6e-8",
    "TpuV38": "TPU v3-8 (retired: sessions run on TPU v5e-8)",
    "Tpu1VmV38": "TPU VM v3-8 (retired: sessions run on TPU v5e-8)",
}
DEFAULT_ACCELERATOR = "NvidiaTeslaT4"

__all__ = [
    "ACCELERATORS",
    "DEFAULT_ACCELERATOR",
    "BundleError",
    "accelerator_problem",
    "accelerator_warning",
    "KERNEL_METADATA_FILE",
    "DATASET_METADATA_FILE",
    "kernel_problems",
    "dataset_problems",
    "validate_kernel_bundle",
    "validate_dataset_bundle",
    "validate_tree",
]


class BundleError(ValueError):
    """A bundle the kaggle CLI (or Kaggle) would reject; `problems` holds (field, message) pairs."""

    def __init__(self, where: str | os.PathLike, problems: list[tuple[str, str]]):
        self.where = str(where)
        self.problems = problems
        self.fields = [f for f, _ in problems]
        lines = "\n  ".join(f"field '{f}': {m}" for f, m in problems)
        super().__init__(f"{where}: invalid bundle:\n  {lines}")


def accelerator_problem(value: Any) -> str | None:
    """Why `value` is no accelerator id Kaggle takes (with the list and a did-you-mean), or None."""
    import difflib

    if isinstance(value, str) and value in ACCELERATORS:
        return None
    ids = ", ".join(f"{k} ({v})" for k, v in ACCELERATORS.items())
    close = difflib.get_close_matches(str(value), ACCELERATORS, n=1, cutoff=0.5)
    if not close and isinstance(value, str):  # case or spacing slips: "nvidia tesla t4", "t4"
        folded = value.replace(" ", "").replace("_", "").casefold()
        close = [k for k in ACCELERATORS if folded and folded in k.casefold()][:1]
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{value!r} is not a Kaggle accelerator id: {hint}use one of {ids}"


def accelerator_warning(value: str | None) -> str | None:
    """What goes wrong on Kaggle with an id it takes (retired GPUs and TPUs), or None."""
    if value == "NvidiaTeslaP100":
        return (
            "NvidiaTeslaP100: Kaggle's current torch (cu128) has no sm_60 kernels, so a P100 "
            "fails at the first CUDA call (and Kaggle retired it: sessions land on T4 x2); "
            "use NvidiaTeslaT4"
        )
    if value is not None and value.startswith("Tpu"):
        return (
            f"{value}: a TPU has no CUDA; the training engine and 06 run on its host's CPU "
            "instead: use a GPU id such as NvidiaTeslaT4"
        )
    return None


def slugify_title(title: str) -> str:
    """The slug Kaggle derives from a title (the kaggle CLI uses python-slugify the same way)."""
    from slugify import slugify

    return slugify(title)


def _kernel_string_problem(value: Any) -> str | None:
    """KaggleApi.validate_kernel_string: owner/slug[/version], slug >= 5 characters."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string 'owner/slug', got {value!r}"
    parts = value.split("/")
    if len(parts) < 2 or len(parts) > 3 or not parts[0] or not parts[1]:
        return f"{value!r} must be 'owner/kernel-slug' or 'owner/kernel-slug/version'"
    if len(parts[1]) < 5:
        return f"{value!r}: kernel slug {parts[1]!r} must be at least five characters"
    if len(parts) == 3 and not parts[2]:
        return f"{value!r}: kernel version cannot be empty if specified"
    return None


def _dataset_string_problem(value: Any) -> str | None:
    """KaggleApi.validate_dataset_string: owner/slug or owner/slug/version."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string 'owner/dataset-slug', got {value!r}"
    if "/" not in value:
        return f"{value!r} must be in the form 'owner/dataset-slug'"
    parts = value.split("/")
    if not parts[0] or not parts[1] or len(parts) > 3:
        return f"invalid dataset specification {value!r}"
    return None


def _model_string_problem(value: Any) -> str | None:
    """KaggleApi.validate_model_instance_version_string: owner/model/framework/instance/N."""
    if not isinstance(value, str) or value.count("/") != 4:
        return f"{value!r} must be 'owner/model-slug/framework/instance-slug/version-number'"
    parts = value.split("/")
    if not all(parts):
        return f"invalid model instance version specification {value!r}"
    if not parts[4].isdigit():
        return f"{value!r}: version-number must be an integer"
    return None


def _bool_problem(value: Any) -> str | None:
    """KaggleApi.get_bool: a JSON boolean, or the strings "true"/"false" (any case)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return None
    return f"must be true or false, got {value!r}"


def _notebook_problem(path: Path) -> str | None:
    """The CLI json-loads a notebook and walks its cells; we also ask nbformat if it is valid."""
    import nbformat

    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{path.name} is not a JSON notebook: {exc}"
    if not isinstance(body, dict) or not isinstance(body.get("cells"), list):
        return f"{path.name} is not a notebook (no 'cells' list)"
    for i, cell in enumerate(body["cells"]):
        if not isinstance(cell, dict) or "cell_type" not in cell:
            return f"{path.name}: cell {i} has no 'cell_type'"
    try:
        nbformat.validate(nbformat.from_dict(body))
    except nbformat.ValidationError as exc:
        return f"{path.name} is not a valid nbformat notebook: {exc.message}"
    return None


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, f"metadata file not found: {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path.name} is not valid JSON: {exc}"
    if not isinstance(data, dict):
        return None, f"{path.name} must hold a JSON object, got {type(data).__name__}"
    return data, None


def kernel_problems(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """Every (field, message) problem of one kernel bundle folder; [] when it would push."""
    folder = Path(folder)
    if not folder.is_dir():
        return [("folder", f"not a folder: {folder}")]
    meta, error = _read_json(folder / KERNEL_METADATA_FILE)
    if meta is None:
        return [(KERNEL_METADATA_FILE, error or "")]
    problems: list[tuple[str, str]] = []

    # id: the CLI accepts a bare slug (owner from the config) or id_no; we always write owner/slug.
    kid = meta.get("id")
    slug = None
    if not kid and not meta.get("id_no"):
        problems.append(("id", "an id 'owner/slug' (or id_no) must be given"))
    elif kid is not None:
        problem = _kernel_string_problem(kid)
        if problem is None and kid.count("/") != 1:
            problem = f"{kid!r} must be 'owner/slug' without a version"
        if problem is None:
            owner, slug = kid.split("/")
            if not OWNER_RE.match(owner):
                problem = f"owner {owner!r} must be a lowercase Kaggle username"
            elif not SLUG_RE.match(slug):
                problem = (
                    f"slug {slug!r} must be lowercase letters and digits joined by single hyphens"
                )
        if problem:
            problems.append(("id", problem))

    title = meta.get("title")
    if not isinstance(title, str) or not title:
        problems.append(
            ("title", f"a title of at least five characters is required, got {title!r}")
        )
    elif len(title) < 5:
        problems.append(("title", f"{title!r} must be at least five characters"))
    elif len(title) > MAX_TITLE:
        # the CLI sends it; Kaggle answers a bare "500 internal server error"
        problems.append(("title", f"{title!r} is longer than {MAX_TITLE} characters"))
    elif slug and slugify_title(title) != slug:
        problems.append(
            ("title", f"{title!r} resolves to slug {slugify_title(title)!r}, not the id's {slug!r}")
        )

    code = meta.get("code_file")
    code_path = None
    if not code or not isinstance(code, str):
        problems.append(("code_file", "a source file must be given"))
    else:
        code_path = folder / code
        if not code_path.is_file():
            problems.append(("code_file", f"source file not found: {code_path}"))
            code_path = None

    language = meta.get("language", "")
    if language not in VALID_LANGUAGES:
        problems.append(("language", f"{language!r} is not one of {list(VALID_LANGUAGES)}"))
    kernel_type = meta.get("kernel_type", "")
    if kernel_type not in VALID_KERNEL_TYPES:
        problems.append(
            ("kernel_type", f"{kernel_type!r} is not one of {list(VALID_KERNEL_TYPES)}")
        )
    if code_path is not None and kernel_type == "notebook":
        problem = _notebook_problem(code_path)
        if problem:
            problems.append(("code_file", problem))

    for field in LIST_FIELDS:
        value = meta.get(field, [])
        if not isinstance(value, list):
            problems.append((field, f"must be a list, got {value!r}"))
            continue
        check = {
            "dataset_sources": _dataset_string_problem,
            "kernel_sources": _kernel_string_problem,
            "model_sources": _model_string_problem,
        }.get(field)
        for item in value:
            problem = check(item) if check else None
            if problem is None and not isinstance(item, str):
                problem = f"entries must be strings, got {item!r}"
            if problem:
                problems.append((field, problem))

    pinning = meta.get("docker_image_pinning_type")
    if pinning is not None and pinning not in VALID_PINNING_TYPES:
        problems.append(
            ("docker_image_pinning_type", f"{pinning!r} is not one of {list(VALID_PINNING_TYPES)}")
        )

    shape = meta.get("machine_shape")
    if shape not in (None, ""):
        problem = accelerator_problem(shape)
        if problem:
            problems.append(("machine_shape", problem))
        elif not shape.startswith("Tpu") and str(meta.get("enable_gpu")).lower() != "true":
            problems.append(("enable_gpu", f"must be true with machine_shape {shape!r}"))

    for field in BOOLEAN_FIELDS:
        if field in meta:
            problem = _bool_problem(meta[field])
            if problem:
                problems.append((field, problem))
    if "enable_internet" not in meta:
        problems.append(("enable_internet", "state it explicitly (the CLI's default is true)"))
    return problems


def dataset_problems(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """KaggleApi.dataset_create_new's checks of dataset-metadata.json, plus the files it names."""
    folder = Path(folder)
    if not folder.is_dir():
        return [("folder", f"not a folder: {folder}")]
    meta, error = _read_json(folder / DATASET_METADATA_FILE)
    if meta is None:
        return [(DATASET_METADATA_FILE, error or "")]
    problems: list[tuple[str, str]] = []
    ref = meta.get("id")
    if not isinstance(ref, str) or ref.count("/") != 1:
        problems.append(("id", f"must be 'owner/dataset-slug', got {ref!r}"))
    else:
        owner, slug = ref.split("/")
        if not OWNER_RE.match(owner):
            problems.append(("id", f"owner {owner!r} must be a lowercase Kaggle username"))
        if not 6 <= len(slug) <= 50:
            problems.append(("id", f"dataset slug {slug!r} must be 6 to 50 characters"))
        elif not SLUG_RE.match(slug):
            problems.append(("id", f"slug {slug!r} must be lowercase words joined by hyphens"))
        if slug == "INSERT_SLUG_HERE":
            problems.append(("id", "default slug detected"))
    title = meta.get("title")
    if not isinstance(title, str) or not 6 <= len(title) <= 50:
        problems.append(("title", f"must be 6 to 50 characters, got {title!r}"))
    licenses = meta.get("licenses")
    if not isinstance(licenses, list) or len(licenses) != 1:
        problems.append(("licenses", f"specify exactly one license, got {licenses!r}"))
    elif not isinstance(licenses[0], dict) or not licenses[0].get("name"):
        problems.append(("licenses", f"the license needs a 'name', got {licenses[0]!r}"))
    subtitle = meta.get("subtitle")
    if subtitle and not 20 <= len(subtitle) <= 80:
        problems.append(("subtitle", "must be 20 to 80 characters"))
    for item in meta.get("resources") or []:
        name = item.get("path") if isinstance(item, dict) else None
        if not name or not (folder / name).is_file():
            problems.append(("resources", f"{folder / str(name)} does not exist"))
    if not any(p.is_file() and p.name != DATASET_METADATA_FILE for p in folder.iterdir()):
        problems.append(("files", f"{folder} holds no file to upload"))
    return problems


def validate_kernel_bundle(folder: str | os.PathLike) -> dict[str, Any]:
    """The bundle's metadata, or BundleError naming every bad field."""
    problems = kernel_problems(folder)
    if problems:
        raise BundleError(Path(folder) / KERNEL_METADATA_FILE, problems)
    return json.loads((Path(folder) / KERNEL_METADATA_FILE).read_text(encoding="utf-8"))


def validate_dataset_bundle(folder: str | os.PathLike) -> dict[str, Any]:
    """The dataset's metadata, or BundleError naming every bad field."""
    problems = dataset_problems(folder)
    if problems:
        raise BundleError(Path(folder) / DATASET_METADATA_FILE, problems)
    return json.loads((Path(folder) / DATASET_METADATA_FILE).read_text(encoding="utf-8"))


def validate_tree(out: str | os.PathLike) -> list[BundleError]:
    """Check every bundle under `out` (folders holding kernel- or dataset-metadata.json)."""
    errors: list[BundleError] = []
    for folder in sorted(p for p in Path(out).iterdir() if p.is_dir()):
        if (folder / KERNEL_METADATA_FILE).exists():
            problems = kernel_problems(folder)
            if problems:
                errors.append(BundleError(folder / KERNEL_METADATA_FILE, problems))
        elif (folder / DATASET_METADATA_FILE).exists():
            problems = dataset_problems(folder)
            if problems:
                errors.append(BundleError(folder / DATASET_METADATA_FILE, problems))
    return errors
