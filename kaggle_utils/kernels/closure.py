"""The dependency closure Kaggle's image lacks, as wheels shipped in the package dataset.

Kernels run with internet off, so `pip install kaggle-utils` there can only use what the attached
dataset holds. Kaggle's image already has torch, numpy, albumentations, Lightning & co (its package
list is committed beside this module: kaggle_image.txt, with source and date); shipping those again
would replace the image's CUDA build of torch. So the closure is what is *missing* or *too old* in
that list: each runtime requirement of our wheel is checked against the image's version with
packaging's SpecifierSet, and only the failures are fetched, `pip download --no-deps` as wheels for
Kaggle's Python and platform, then their own requirements are checked the same way, recursively.

The notebooks' first cell (INSTALL_CELL) installs with
`pip install --no-index --find-links <dataset> kaggle-utils`: pip sees the image's packages as
installed, adds only the dataset's wheels, and never touches torch. The wheels lie flat beside
ours: `kaggle datasets create` skips subfolders (its --dir-mode defaults to skip).

    python -m kaggle_utils.kernels.closure check     # what a build would ship, and why
    python -m kaggle_utils.kernels.closure refresh   # re-read Kaggle's list (then commit it)

Downloads go through a wheel cache (~/.cache/kaggle-utils/wheels, or $KAGGLE_UTILS_WHEEL_CACHE)
that is tried first with --no-index, so a second build needs no network.
"""

from __future__ import annotations

import argparse
import email.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from kaggle_utils.atomic import atomic_write_text

IMAGE_LIST = Path(__file__).with_name("kaggle_image.txt")
IMAGE_SOURCE = "https://github.com/Kaggle/docker-python/blob/main/installed_cpu_packages.txt"
IMAGE_RAW = "https://raw.githubusercontent.com/Kaggle/docker-python/main/installed_cpu_packages.txt"
# Kaggle's Python (kaggle_image.txt says why 3.12); 3.11 too, so a 3.11 box (and this repo's
# tests) install from the very same dataset.
KAGGLE_PYTHONS = ("3.12", "3.11")
# Ubuntu 22.04 (glibc 2.35) on x86_64: every manylinux tag up to it.
KAGGLE_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)),
    "manylinux2014_x86_64",
)
# Never shipped: a wheel of these would replace the image's CUDA build. Our pins must fit the image.
IMAGE_ONLY = frozenset({"torch", "torchvision", "torchaudio", "nvidia-nccl-cu12"})
CACHE_ENV = "KAGGLE_UTILS_WHEEL_CACHE"
INPUT_ENV = "KAGGLE_UTILS_KAGGLE_INPUT"

# The notebooks' first code cell (all six, verbatim; tests compare them to this).
INSTALL_CELL = """\
# On Kaggle (internet off): install kaggle_utils from its dataset, which also holds the wheels of
# what Kaggle's image lacks (kaggle_utils.kernels.closure); pip adds only those, never torch.
# Elsewhere this does nothing ($KAGGLE_UTILS_KAGGLE_INPUT: a local stand-in for /kaggle/input).
import glob, os, subprocess, sys
_input = os.environ.get("KAGGLE_UTILS_KAGGLE_INPUT", "/kaggle/input")
_wheels = sorted(glob.glob(f"{_input}/*/kaggle_utils-*.whl"))
if _wheels:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", os.path.dirname(_wheels[-1]), "kaggle-utils"], check=True)"""

__all__ = [
    "IMAGE_LIST",
    "INSTALL_CELL",
    "KAGGLE_PYTHONS",
    "Closure",
    "ClosureError",
    "Image",
    "build_closure",
    "read_image",
    "wheel_requirements",
]


class ClosureError(RuntimeError):
    """A requirement the closure cannot satisfy (the message names it and what to do)."""


@dataclass(frozen=True)
class Image:
    """Kaggle's image: distribution versions by canonical name, and where the list came from."""

    versions: dict[str, Version]
    source: str
    read: str
    path: Path

    def constraints(self) -> str:
        """The image's versions as a pip constraints file (local labels such as +cpu kept)."""
        return "".join(f"{name}=={v}\n" for name, v in sorted(self.versions.items()))


@dataclass
class Closure:
    """What a build ships beside our wheel: wheel files, and for each its reason."""

    wheels: list[Path] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # canonical name -> why it ships

    def describe(self) -> str:
        if not self.reasons:
            return "closure: Kaggle's image has every runtime requirement"
        return "\n".join(f"closure: {name}: {why}" for name, why in sorted(self.reasons.items()))


def _header(text: str, key: str) -> str:
    match = re.search(rf"^# {key}: (.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def read_image(path: str | os.PathLike = IMAGE_LIST) -> Image:
    """Parse kaggle_image.txt (`name==version` lines under a `#` header)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: Kaggle's package list is missing: run "
            "`python -m kaggle_utils.kernels.closure refresh`"
        )
    text = path.read_text(encoding="utf-8")
    versions: dict[str, Version] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        try:
            if not sep:
                raise InvalidVersion(line)
            versions[canonicalize_name(name)] = Version(version)
        except InvalidVersion:
            raise ValueError(
                f"{path}:{n}: expected `name==version`, got {line!r}: fix the line or refresh "
                "the list"
            ) from None
    return Image(versions, _header(text, "source"), _header(text, "read"), path)


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(names) != 1:
            raise ClosureError(f"{wheel}: no single *.dist-info/METADATA in it: not a wheel?")
        return email.parser.Parser().parsestr(zf.read(names[0]).decode("utf-8"))


def wheel_requirements(wheel: str | os.PathLike) -> list[Requirement]:
    """Requires-Dist of a wheel, extras' requirements included (markers say which apply)."""
    return [Requirement(r) for r in _metadata(Path(wheel)).get_all("Requires-Dist") or []]


def marker_env(python: str) -> dict[str, str]:
    """PEP 508 marker values of a Kaggle kernel running CPython `python` (e.g. "3.12")."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_release": "",
        "platform_version": "",
    }


def _applies(req: Requirement, python: str, extras: Iterable[str] = ()) -> bool:
    if req.marker is None:
        return True
    env = marker_env(python)
    return any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras))


def _download_command(req: str, dest: Path, python: str, *, offline_from: Path | None) -> list[str]:
    """`pip download --no-deps` of one requirement as a wheel for Kaggle's Python and platform."""
    abi = f"cp{python.replace('.', '')}"
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--dest", str(dest), "--python-version", python, "--implementation", "cp"]
    cmd += [arg for a in (abi, "abi3", "none") for arg in ("--abi", a)]
    cmd += [arg for p in KAGGLE_PLATFORMS for arg in ("--platform", p)]
    if offline_from is not None:
        cmd += ["--no-index", "--find-links", str(offline_from)]
    return [*cmd, req]


def cache_dir() -> Path:
    """Where downloaded wheels are kept between builds (tried before the index)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kaggle-utils"
    return Path(os.environ.get(CACHE_ENV) or default / "wheels")


def fetch_wheel(req: Requirement, python: str, cache: Path) -> Path:
    """The newest wheel for `req` on Kaggle's Python: from the cache, else from the index."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kaggle-utils-closure-") as tmp:
        got = Path(tmp)
        cached = subprocess.run(
            _download_command(str(req), got, python, offline_from=cache), capture_output=True
        )
        if cached.returncode != 0:
            cmd = _download_command(str(req), got, python, offline_from=None)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise ClosureError(
                    f"pip download of {req} for Python {python} (manylinux x86_64) failed: "
                    f"{done.stderr.strip().splitlines()[-1:]}; check the network or "
                    f"put the wheel in {cache}"
                )
        (wheel,) = got.glob("*.whl")
        target = cache / wheel.name
        if not target.exists():
            shutil.copy2(wheel, cache / f".{wheel.name}.tmp")
            os.replace(cache / f".{wheel.name}.tmp", target)
    return target


def _pure(wheel: Path) -> bool:
    """A py3-none-any wheel: the same file serves every Python version."""
    *_, tags = parse_wheel_filename(wheel.name)
    return all(t.abi == "none" and t.platform == "any" for t in tags)


def _image_verdict(req: Requirement, image: Image) -> str | None:
    """None when the image satisfies `req`; else why the closure must ship it."""
    name = canonicalize_name(req.name)
    have = image.versions.get(name)
    if have is not None and req.specifier.contains(have, prereleases=True):
        return None
    why = "missing from" if have is None else f"{have} in"
    if name in IMAGE_ONLY:
        raise ClosureError(
            f"{req} is not met by Kaggle's image ({why} {image.path.name}): a wheel of "
            f"{name} would replace the image's CUDA build; widen the pin in pyproject.toml"
        )
    return f"{why} Kaggle's image (needs {req.specifier or 'any version'})"


def build_closure(
    requirements: Sequence[Requirement],
    dest: str | os.PathLike,
    *,
    image: Image | None = None,
    pythons: Sequence[str] = KAGGLE_PYTHONS,
    cache: Path | None = None,
    keep: Iterable[str] = (),
) -> Closure:
    """Fetch into `dest` the wheels of every requirement (recursively) Kaggle's image does not
    satisfy, for each Python in `pythons`; other wheels in `dest` are removed except `keep`."""
    image = image or read_image()
    cache = cache or cache_dir()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    closure = Closure()
    for python in pythons:
        todo = [(r, ()) for r in requirements if _applies(r, python)]
        chosen: dict[str, Path] = {}
        while todo:
            req, _ = todo.pop(0)
            name = canonicalize_name(req.name)
            if name in chosen:
                _check_chosen(req, chosen[name])
                continue
            why = _image_verdict(req, image)
            if why is None:
                continue
            wheel = _reuse_pure(closure.wheels, name, req) or fetch_wheel(req, python, cache)
            chosen[name] = wheel
            closure.reasons.setdefault(name, f"{_version(wheel)}: {why}")
            if wheel not in closure.wheels:
                closure.wheels.append(wheel)
            deps = wheel_requirements(wheel)
            todo += [(d, ()) for d in deps if _applies(d, python, req.extras)]
    _install_wheels(closure, dest, keep)
    return closure


def _version(wheel: Path) -> Version:
    return parse_wheel_filename(wheel.name)[1]


def _check_chosen(req: Requirement, wheel: Path) -> None:
    if not req.specifier.contains(_version(wheel), prereleases=True):
        raise ClosureError(
            f"{req} conflicts with {wheel.name}, chosen for another requirement: pin a version "
            "that satisfies both in pyproject.toml"
        )


def _reuse_pure(wheels: list[Path], name: str, req: Requirement) -> Path | None:
    """A pure wheel already chosen for another Python serves this one too."""
    for wheel in wheels:
        if canonicalize_name(parse_wheel_filename(wheel.name)[0]) == name and _pure(wheel):
            return wheel if req.specifier.contains(_version(wheel), prereleases=True) else None
    return None


def _install_wheels(closure: Closure, dest: Path, keep: Iterable[str]) -> None:
    """Copy the chosen wheels into `dest` (atomically each) and drop stale ones."""
    wanted = {w.name for w in closure.wheels} | set(keep)
    for old in dest.glob("*.whl"):
        if old.name not in wanted:
            old.unlink()
    for wheel in closure.wheels:
        target = dest / wheel.name
        if not target.exists():
            shutil.copy2(wheel, dest / f".{wheel.name}.tmp")
            os.replace(dest / f".{wheel.name}.tmp", target)
    closure.wheels = [dest / w.name for w in closure.wheels]


def refresh(path: Path = IMAGE_LIST, url: str = IMAGE_RAW) -> Path:
    """Re-read Kaggle's published list and rewrite `path` with today's date (header kept)."""
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (a fixed https URL)
        body = response.read().decode("utf-8")
    lines = [ln for ln in body.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines or not all("==" in ln for ln in lines):
        raise ValueError(f"{url}: not a `name==version` list; {path} left as it was")
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    header = [ln for ln in old.splitlines() if ln.startswith("#")]
    header = [re.sub(r"^# read: .*", f"# read: {date.today()}", ln) for ln in header]
    header = [re.sub(r"^# commit: .*", "# commit: main (see read:)", ln) for ln in header]
    if not header:
        header = [f"# source: {IMAGE_SOURCE}", f"# read: {date.today()}"]
    atomic_write_text(path, "\n".join([*header, *lines]) + "\n")
    return path


def project_requirements(project_dir: Path) -> list[Requirement]:
    """[project].dependencies of pyproject.toml (what the wheel requires at run time)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    data = tomllib.loads((project_dir / "pyproject.toml").read_text(encoding="utf-8"))
    return [Requirement(r) for r in data["project"]["dependencies"]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaggle_utils.kernels.closure")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("refresh", help=f"re-read Kaggle's package list into {IMAGE_LIST.name}")
    check = sub.add_parser("check", help="fetch the closure into a folder and say why each ships")
    check.add_argument("--out", default="build/closure", help="where the wheels go")
    args = parser.parse_args(argv)
    if args.command == "refresh":
        print(f"wrote {refresh()}")
        return 0
    root = Path(__file__).resolve().parents[2]
    closure = build_closure(project_requirements(root), Path(args.out))
    print(closure.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
