"""What the GPU suite carries to a lent GPU machine, and how it installs there.

The lent machine (docs/gpu.md) has torch, timm, numba, opencv, pandas and lightning but lacks
segmentation-models-pytorch, albumentations (and albucore's compiled helpers) and pydantic, and it
can fetch nothing; `../shared` does not travel either. So `.gpu_suite/` (ignored by git, named in the
`run` tool's `carry`) holds:

  wheels/   the missing packages at exactly this .venv's versions (`pip download --no-deps`):
            py3-none-any where one exists, manylinux cp312 wheels for the compiled ones
  data/carvana_subset/   whole cars of the real sample: their JPEGs, their train_masks.csv rows
            (the masks travel as Kaggle's RLE, ~10x smaller than the GIFs) and metadata rows
  manifest.json   which cars, which wheels, the sizes

All of the working tree travels too, so the cars are chosen to keep the whole carry under the tool's
64 MiB. On the GPU `install_wheels` unpacks the wheels into `.gpu_suite/site` (`pip install
--no-index --no-deps --target`), which the suite puts first on sys.path and PYTHONPATH; the
machine's own torch is never touched.

    .venv/bin/python bench/gpu_carry.py --dry-run    what would travel, and its size
    .venv/bin/python bench/gpu_carry.py --prepare    build .gpu_suite/ (bench/gpu_suite.py calls this)
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY_DIR = REPO / ".gpu_suite"
CARRY = [".gpu_suite"]  # the `run` tool's carry list (relative to the repo root)
LIMIT = 64 * 2**20  # what the run tool sends: the working tree plus the carry
MARGIN = 4 * 2**20  # other engineers' untracked files grow while a session runs
ANGLES = 16
DEFAULT_SAMPLE = Path(os.environ.get("CARVANA_SAMPLE", REPO.parent / "shared" / "carvana_sample"))

# The GPU machine's Python (KINDS.md in the device library, read 2026-11: /opt/torch/.venv, 3.12.3);
# the suite records sys.version there, and a mismatch fails the install naming both.
GPU_PYTHON = "3.12"
GPU_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
# The distributions kaggle_utils' training and 06 path import that the machine lacks, closed under
# their requirements (tests/test_gpu_suite.py checks the closure against this .venv's metadata).
# typing_extensions is there but may be older than pydantic 2.14 needs (>= 4.16): carried too.
WHEELS = (
    "segmentation_models_pytorch",
    "albumentations",
    "albucore",
    "simsimd",
    "stringzilla",
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_inspection",
    "typing_extensions",
)
# Modules whose absence means the wheels must be installed (the machine's python lacks them).
NEEDED_MODULES = ("segmentation_models_pytorch", "albumentations", "pydantic")
# What the machine already has (KINDS.md's package list, 2026-11-17) among the requirements of
# WHEELS: these need not travel.
GPU_HAS = frozenset(
    {
        "huggingface-hub",
        "numpy",
        "opencv-python-headless",
        "pillow",
        "pyyaml",
        "safetensors",
        "scipy",
        "timm",
        "torch",
        "torchvision",
        "tqdm",
    }
)
# A fresh prepare's wheels measured 8.0 MiB (2026-12): the dry-run's allowance before they exist.
WHEEL_ALLOWANCE = 9 * 2**20


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# --------------------------------------------------------------------------------------------------
# sizes


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what the run tool sends besides the carry: tracked and untracked-not-ignored files
    (`git ls-files -co --exclude-standard`); falls back to every file but .git and ignored
    folders when git is unavailable."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"],
            cwd=repo,
            capture_output=True,
            check=True,
        ).stdout
        paths = [repo / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "runs", ".gpu_suite", "__pycache__"}
        paths = [p for p in repo.rglob("*") if not skip & set(p.relative_to(repo).parts)]
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


# --------------------------------------------------------------------------------------------------
# the plan: wheels and cars


@dataclass
class Car:
    car: str
    images: list[Path]
    rows: list[str]  # train_masks.csv lines, without newline

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.images) + sum(len(r) + 1 for r in self.rows)


@dataclass
class Plan:
    """What `--prepare` writes: wheels (name==version), whole cars, and the size of it all."""

    sample: Path
    wheels: list[str]
    wheel_bytes: int
    wheels_measured: bool
    cars: list[Car]
    tree: int
    extra: int  # CSV headers, metadata rows, manifest
    skipped_cars: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def data_bytes(self) -> int:
        return sum(c.bytes for c in self.cars) + self.extra

    @property
    def total(self) -> int:
        return self.tree + self.wheel_bytes + self.data_bytes

    def summary(self) -> dict:
        return {
            "carry": CARRY,
            "sample": str(self.sample),
            "wheels": self.wheels,
            "wheel_bytes": self.wheel_bytes,
            "wheels_measured": self.wheels_measured,
            "cars": [c.car for c in self.cars],
            "n_cars": len(self.cars),
            "n_images": sum(len(c.images) for c in self.cars),
            "data_bytes": self.data_bytes,
            "tree_bytes": self.tree,
            "total_bytes": self.total,
            "limit_bytes": LIMIT,
            "fits": self.total < LIMIT,
        }


def wheel_pins() -> list[str]:
    """name==version of each carried distribution, as installed in this interpreter (.venv)."""
    pins = []
    for name in WHEELS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError as exc:
            raise SystemExit(
                f"gpu_carry: {name} is not installed in {sys.executable}; run this with the "
                "project's .venv/bin/python (`make venv` installs it)"
            ) from exc
    return pins


def read_cars(sample: Path) -> list[Car]:
    """Every car of the sample with all 16 angles' JPEGs and train_masks.csv rows, sorted."""
    csv_path = sample / "train_masks.csv"
    if not csv_path.is_file():
        raise SystemExit(
            f"gpu_carry: {csv_path} not found: point --sample (or CARVANA_SAMPLE) at the real "
            "Carvana sample (its README says what it holds)"
        )
    rows: dict[str, list[str]] = {}
    with open(csv_path, newline="") as f:
        lines = f.read().splitlines()
    for line in lines[1:]:
        img = line.split(",", 1)[0]
        rows.setdefault(img.rsplit("_", 1)[0], []).append(line)
    cars = []
    for car, car_rows in sorted(rows.items()):
        images = [sample / "train" / r.split(",", 1)[0] for r in car_rows]
        if len(car_rows) == ANGLES and all(p.is_file() for p in images):
            cars.append(Car(car, images, car_rows))
    return cars


def make_plan(
    sample: Path = DEFAULT_SAMPLE, max_cars: int | None = None, repo: Path = REPO
) -> Plan:
    """The wheels and as many whole cars (sorted by id) as keep the carry under LIMIT - MARGIN."""
    carry = repo / ".gpu_suite"
    pins = wheel_pins()
    present = sorted((carry / "wheels").glob("*.whl"))
    measured = len(present) == len(pins)
    wheel_bytes = sum(p.stat().st_size for p in present) if measured else WHEEL_ALLOWANCE
    tree = tree_bytes(repo)
    extra = 4096 + 16 * 1024  # CSV headers, the cars' metadata rows, manifest.json
    budget = LIMIT - MARGIN - tree - wheel_bytes - extra
    chosen, skipped = [], 0
    for car in read_cars(sample):
        if (max_cars is None or len(chosen) < max_cars) and car.bytes <= budget:
            chosen.append(car)
            budget -= car.bytes
        else:
            skipped += 1
    plan = Plan(sample, pins, wheel_bytes, measured, chosen, tree, extra, skipped)
    if not measured:
        plan.notes.append(f"wheels not downloaded yet: {mib(WHEEL_ALLOWANCE)} allowed for them")
    return plan


def print_plan(plan: Plan) -> None:
    s = plan.summary()
    print(f"carry (run tool `carry`): {CARRY}  -> {CARRY_DIR}")
    print(f"  wheels/ ({mib(plan.wheel_bytes)}{'' if plan.wheels_measured else ', estimated'}):")
    for pin in plan.wheels:
        print(f"    {pin}")
    print(
        f"  data/carvana_subset/: {s['n_cars']} whole cars, {s['n_images']} images + their "
        f"train_masks.csv rows ({mib(plan.data_bytes)}); {plan.skipped_cars} cars left behind"
    )
    print(f"    cars: {' '.join(c.car for c in plan.cars)}")
    print(f"  working tree that travels with it: {mib(plan.tree)}")
    for note in plan.notes:
        print(f"  note: {note}")
    verdict = "fits" if s["fits"] else "DOES NOT FIT"
    print(f"total {mib(plan.total)} of {mib(LIMIT)} ({verdict}; {mib(MARGIN)} kept free)")


# --------------------------------------------------------------------------------------------------
# prepare (here) and install (there)


def download_wheels(pins: list[str], dest: Path) -> None:
    """pip download --no-deps each pin for the GPU machine's Python: py3-none-any where one
    exists, else its manylinux cp312 wheel; a wheel already in dest is kept."""
    dest.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("-")[0].lower() for p in dest.glob("*.whl")}
    for pin in pins:
        name = pin.split("==")[0]
        if name.lower().replace("-", "_") in have:
            continue
        platforms = [a for p in GPU_PLATFORMS for a in ("--platform", p)]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        cmd += ["--python-version", GPU_PYTHON, "--implementation", "cp", *platforms]
        cmd += ["--platform", "any", "-d", str(dest), pin]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(
                f"gpu_carry: pip could not download {pin} for Python {GPU_PYTHON} "
                f"(manylinux x86_64 or py3-none-any): {result.stderr.strip()[-400:]}"
            )


def write_subset(plan: Plan, dest: Path) -> None:
    """dest/{train/*.jpg, train_masks.csv, metadata.csv} of the plan's cars (replaced whole)."""
    tmp = Path(tempfile.mkdtemp(prefix="subset.", dir=dest.parent))
    (tmp / "train").mkdir()
    for car in plan.cars:
        for image in car.images:
            shutil.copy2(image, tmp / "train" / image.name)
    rows = [r for car in plan.cars for r in car.rows]
    (tmp / "train_masks.csv").write_text("img,rle_mask\n" + "\n".join(rows) + "\n")
    meta = plan.sample / "metadata.csv"
    if meta.is_file():
        wanted = {c.car for c in plan.cars}
        with open(meta, newline="") as f, open(tmp / "metadata.csv", "w", newline="") as out:
            reader, writer = csv.reader(f), csv.writer(out)
            writer.writerow(next(reader))
            writer.writerows(r for r in reader if r and r[0] in wanted)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def prepare(sample: Path = DEFAULT_SAMPLE, max_cars: int | None = None) -> dict:
    """Build .gpu_suite/ (wheels, data subset, manifest) and return the manifest."""
    CARRY_DIR.mkdir(exist_ok=True)
    download_wheels(wheel_pins(), CARRY_DIR / "wheels")
    plan = make_plan(sample, max_cars)  # now with the wheels' real sizes
    if not plan.summary()["fits"]:
        raise SystemExit(f"gpu_carry: the carry would be {mib(plan.total)}, over {mib(LIMIT)}")
    (CARRY_DIR / "data").mkdir(exist_ok=True)
    write_subset(plan, CARRY_DIR / "data" / "carvana_subset")
    site = CARRY_DIR / "site"
    if site.exists():  # an install belongs to the GPU machine; it must not travel from here
        shutil.rmtree(site)
    manifest = {**plan.summary(), "carry_bytes": folder_bytes(CARRY_DIR)}
    manifest["total_bytes"] = plan.tree + manifest["carry_bytes"] + 4096
    manifest["fits"] = manifest["total_bytes"] < LIMIT
    (CARRY_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print_plan(plan)
    print(
        f"prepared {CARRY_DIR}: {mib(manifest['carry_bytes'])} in the carry, "
        f"{mib(manifest['total_bytes'])} with the working tree (limit {mib(LIMIT)})"
    )
    return manifest


def subset_dir() -> Path | None:
    """The carried data subset, when prepared."""
    path = CARRY_DIR / "data" / "carvana_subset"
    return path if (path / "train_masks.csv").is_file() else None


def install_wheels() -> dict:
    """Where kaggle_utils' dependencies are missing (the GPU machine), install the carried wheels
    into .gpu_suite/site and put it first on sys.path and PYTHONPATH (for subprocesses too), with
    the repo root beside it. Call before torch is imported: the carried typing_extensions must win.
    """
    missing = [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is None]
    site = CARRY_DIR / "site"
    info: dict = {"missing": missing, "site": None, "installed": []}
    paths = [str(REPO)]
    if missing or (site / ".installed").is_file():
        wheels = sorted((CARRY_DIR / "wheels").glob("*.whl"))
        if not wheels:
            raise SystemExit(
                f"gpu_suite: {', '.join(missing)} missing here and no wheels in "
                f"{CARRY_DIR / 'wheels'}: run `.venv/bin/python bench/gpu_suite.py --prepare` on "
                f"the CPU machine and carry {CARRY}"
            )
        if not (site / ".installed").is_file():
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
            cmd += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site)]
            result = subprocess.run([*cmd, *map(str, wheels)], capture_output=True, text=True)
            if result.returncode:
                raise SystemExit(
                    f"gpu_suite: installing {CARRY_DIR / 'wheels'} into {site} failed on Python "
                    f"{sys.version.split()[0]} (wheels are for {GPU_PYTHON}): "
                    f"{result.stderr.strip()[-600:]}"
                )
            (site / ".installed").write_text("\n".join(w.name for w in wheels) + "\n")
        info["site"] = str(site)
        info["installed"] = (site / ".installed").read_text().split()
        paths.insert(0, str(site))
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    importlib.invalidate_caches()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *([old] if old else [])])
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="build .gpu_suite/")
    parser.add_argument("--dry-run", action="store_true", help="list the carry (the default)")
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--cars", type=int, help="at most this many cars")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--quick", action="store_true", help="(make bench-quick) same as default")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.sample, args.cars)
        return 0
    if not (args.sample / "train_masks.csv").is_file():
        print(f"gpu_carry: no real sample at {args.sample}; nothing to plan (pass --sample)")
        return 0
    plan = make_plan(args.sample, args.cars)
    if args.json:
        print(json.dumps(plan.summary()))
    else:
        print_plan(plan)
    return 0 if plan.summary()["fits"] or not args.dry_run else 1  # make bench: report, not fail


if __name__ == "__main__":
    sys.exit(main())
