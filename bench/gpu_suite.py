"""The GPU suite: one command a lent GPU runs in about 5 minutes (docs/gpu.md).

    python3 bench/gpu_suite.py --out $OUT          on the GPU machine (carry: .gpu_suite)
    .venv/bin/python bench/gpu_suite.py --prepare  here, first: wheels + real cars in .gpu_suite/
    .venv/bin/python bench/gpu_suite.py --dry-run  what would travel, and its size (< 64 MiB)
    .venv/bin/python bench/gpu_suite.py --record REPORT   merge a report into bench/gpu_figures.json

Sections, each recorded in <out>/gpu_report.json as passed / failed / skipped (with the reason),
the report rewritten after each, the log (<out>/gpu_suite.log) written as it goes:

1. cuda_tests: `pytest -m cuda` (tests/test_cuda.py, tests/test_metrics.py) in a subprocess,
   pass/fail per test from its JUnit XML.
2. train_throughput: refinenet_v4/resnet34 at 1024x1024 through the engine's step, fp32 against
   AMP + channels_last, each at the batch that fills the card (bench/gpu_train_throughput.py).
2b. full_frame: the same step on whole 1280x1918 frames (padded to 1920 inside the model), AMP at
   the card-filling batch: its GiB per image says whether the 1st-place batch of 4 whole frames
   fits a T4's 16 GB, or a member needs `crop:` (train_throughput's 1024x1024 is the crop's cost).
3. quality: params/gpu_suite/refinenet_v4_resnet34.yaml from scratch on the carried training cars,
   512x768 then 1024x1536, the epochs of each chosen to fit a wall budget (--quality-s) from the
   throughput measured; its best_dice is the full-resolution Dice of the validation cars as 06
   submits them (val_tta, guided filter, largest component).
4. submit_path: 06 itself (`predict.predict_submission`: decode workers, hflip TTA, guided
   upsampling to 1280x1918, largest component, RLE) with that member over every carried JPEG:
   images/s, the hours for 100,064 test images, and the validation cars' Dice of its rows.
5. device_predict: 06's device work alone, fp32 against mixed precision (gpu_predict_throughput).

Without CUDA every GPU section is skipped, saying so, and the suite exits 0; --cpu-smoke runs the
GPU sections on the CPU at toy sizes on synthetic data instead (tests/test_gpu_suite.py), so a
plumbing bug costs no GPU minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [p for p in (str(BENCH), str(REPO)) if p not in sys.path]

import gpu_carry  # noqa: E402  (torch-free: it installs the wheels before torch is imported)

MEMBER = REPO / "params" / "gpu_suite" / "refinenet_v4_resnet34.yaml"
FIGURES = BENCH / "gpu_figures.json"
CPU_REFERENCE = {
    "dice": 0.99066,
    "what": "params/cpu_sample RefineNet v4 / ResNet-18, 64x96 -> 128x192 -> 192x288 crops of 288x432, 2 CPU "
    "cores without AMX, 619 s (bench_cpu_sample.py, 2026-12-01)",
}
TEST_IMAGES = 100_064
CUDA_TEST_FILES = ("tests/test_cuda.py", "tests/test_metrics.py")


@dataclass(frozen=True)
class Scale:
    """Sizes and budgets of the GPU sections: the GPU's, or toy ones for --cpu-smoke."""

    device: str = "cuda"
    train_size: tuple[int, int] = (1024, 1024)
    train_steps: int = 8
    train_batch: int | None = None  # None: fill the card
    quality_s: float = 150.0
    quality_overrides: tuple[tuple[str, Any], ...] = ()
    predict_batch: int = 8
    device_batches: int = 15
    smoke: bool = False


SMOKE = Scale(
    device="cpu",
    train_size=(64, 96),
    train_steps=2,
    train_batch=2,
    quality_s=0.0,
    quality_overrides=(
        ("stages.0.size", "64x96"),
        ("stages.1.size", "96x128"),
        ("stages.0.epochs", 1),
        ("stages.1.epochs", 1),
        ("batch_size", 4),
        ("num_workers", 0),
        ("max_train_images", 16),
    ),
    predict_batch=4,
    device_batches=1,
    smoke=True,
)


# --------------------------------------------------------------------------------------------------
# log and report


class Tee(io.TextIOBase):
    """stdout/stderr into the terminal and the log file, flushed at every write (the run tool
    returns what a killed command left; a buffered line would be lost)."""

    def __init__(self, stream: Any, log: Any):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.stream.flush()
        self.log.write(text)
        self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()


def say(message: str) -> None:
    print(f"[gpu_suite {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Report:
    """gpu_report.json, rewritten atomically after every section."""

    def __init__(self, out: Path, argv: list[str]):
        self.path = out / "gpu_report.json"
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {
            "suite": "bench/gpu_suite.py",
            "argv": argv,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "finished": None,
            "seconds": None,
            "cpu_reference": CPU_REFERENCE,
            "sections": {},
            "figures": {},
        }

    def section(self, name: str, record: dict[str, Any]) -> None:
        self.data["sections"][name] = record
        self.save()

    def save(self, finished: bool = False) -> None:
        from kaggle_utils.atomic import atomic_write_json

        self.data["seconds"] = round(time.perf_counter() - self.started, 1)
        if finished:
            self.data["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(self.path, self.data, fsync=False)


# --------------------------------------------------------------------------------------------------
# environment


def environment() -> dict[str, Any]:
    """Python, torch, CUDA, the GPU and the versions of what the suite imports."""
    import importlib.metadata as md

    import torch

    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gib": (
            round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None
        ),
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
    }
    names = ("segmentation_models_pytorch", "albumentations", "pydantic", "lightning_fabric")
    names += ("pytorch_lightning", "timm", "numpy", "opencv-python-headless", "numba")
    for name in names:
        try:
            env[f"version_{name}"] = md.version(name)
        except md.PackageNotFoundError:
            env[f"version_{name}"] = None
    return env


# --------------------------------------------------------------------------------------------------
# sections


def run_cuda_tests(out: Path, timeout_s: float) -> dict[str, Any]:
    """pytest -m cuda in a subprocess, streamed into the log; outcomes per test from JUnit XML."""
    junit = out / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", *CUDA_TEST_FILES, "-m", "cuda", "-q", "-rA"]
    cmd += ["-p", "no:cacheprovider", f"--junitxml={junit}", "--timeout=300"]
    env = dict(os.environ)
    subset = gpu_carry.subset_dir()
    if subset is not None:
        env.setdefault("CARVANA_SAMPLE", str(subset))
    say(f"$ {' '.join(cmd[2:])}")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watchdog = threading.Timer(timeout_s, proc.kill)  # a hung test must not eat the lease
    watchdog.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
    rc = proc.wait()
    watchdog.cancel()
    tests = parse_junit(junit) if junit.is_file() else {}
    counts = {k: sum(1 for t in tests.values() if t["outcome"] == k) for k in OUTCOMES}
    failed = counts["failed"] + counts["error"]
    if rc not in (0, 5) and not failed:  # 5: nothing collected; else pytest itself broke
        failed = 1
    status = "failed" if failed else ("passed" if counts["passed"] else "skipped")
    record: dict[str, Any] = {"status": status, "returncode": rc, "counts": counts, "tests": tests}
    if status == "skipped":
        record["reason"] = "every CUDA test skipped (no CUDA device)"
    return record


OUTCOMES = ("passed", "failed", "error", "skipped")


def parse_junit(path: Path) -> dict[str, dict[str, str]]:
    """{test id: {outcome, message}} from pytest's JUnit XML."""
    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = "failed" if tag == "failure" else tag
                message = (child.get("message") or child.text or "")[:500]
                break
        tests[name] = {"outcome": outcome, "message": message}
    return tests


def train_throughput(scale: Scale) -> dict[str, Any]:
    import gpu_train_throughput as gtt

    if scale.smoke:
        fp32 = gtt.engine_throughput(scale.train_size, 2, "32-true", False, 2, 1, "cpu")
        amp = gtt.engine_throughput(scale.train_size, 2, "bf16-mixed", True, 2, 1, "cpu")
        ratio = round(amp["images_per_s"] / fp32["images_per_s"], 3)
        return {"size": list(scale.train_size), "fp32": fp32, "amp": amp, "ratio": ratio}
    return gtt.compare(scale.train_size, scale.train_steps, scale.train_batch)


def full_frame(scale: Scale) -> dict[str, Any]:
    """AMP training step on whole frames (1280x1918; toy 64x90 with --cpu-smoke: both pad)."""
    import gpu_train_throughput as gtt

    if scale.smoke:
        amp = gtt.engine_throughput((64, 90), 2, "bf16-mixed", True, 2, 1, "cpu")
        return {"size": [64, 90], "amp": amp}
    from kaggle_utils.precision import precision_for

    size = (1280, 1918)
    amp = gtt.measure_filled(size, precision_for("cuda"), True, scale.train_steps, None)
    per_image = amp.get("per_image_gib")
    fits = None if per_image is None else amp.get("fixed_gib", 0) + 4 * per_image < 15.0
    return {"size": list(size), "amp": amp, "batch4_fits_16gib": fits}


def smoke_data() -> Path:
    """A small synthetic Carvana for --cpu-smoke (the carried cars are too big for a CPU)."""
    from kaggle_utils.synthetic import generate

    root = Path(tempfile.gettempdir()) / "gpu_suite_smoke_synthetic"
    return generate(root, n_train_cars=4, n_test_cars=1, size=(160, 240), seed=0)


def plan_epochs(
    budget_s: float, images_per_s: float, n_train: int, overhead_s: float, cap: int
) -> int:
    """Whole epochs of n_train images that fit budget_s at images_per_s after overhead_s."""
    return max(1, min(cap, int((budget_s - overhead_s) * images_per_s / max(1, n_train))))


class Quality:
    """Stage 1 then stage 2 of the gpu_suite member, each sized to its share of the budget."""

    OVERHEAD_S = 15.0  # per stage: the cache's decode, full-resolution validation, artefacts
    SHARE_1 = 0.4

    def __init__(self, scale: Scale, data_dir: Path, run_dir: Path, train_ips: float | None):
        self.scale, self.data_dir, self.run_dir = scale, data_dir, run_dir
        self.train_ips = train_ips  # AMP images/s at train_size from train_throughput, if any

    def prepare(self, stage: int, overrides: dict[str, Any], init: Path | None) -> Any:
        from kaggle_utils.train import prepare_stage

        return prepare_stage(
            MEMBER,
            stage,
            data_dir=self.data_dir,
            run_dir=self.run_dir,
            device=self.scale.device,
            overrides={**dict(self.scale.quality_overrides), **overrides},
            init_checkpoint=init,
        )

    def first_rate(self, size: tuple[int, int]) -> float:
        """Stage 1's expected images/s: the measured AMP rate scaled by pixels, halved for the
        member's smaller batch and the loader (a GPU without a measurement: 100 images/s)."""
        if not self.train_ips:
            return 100.0
        pixels = self.scale.train_size[0] * self.scale.train_size[1] / (size[0] * size[1])
        return 0.5 * self.train_ips * pixels

    def run(self) -> dict[str, Any]:
        from kaggle_utils.train import fit_stage

        started = time.perf_counter()
        budget = self.scale.quality_s
        probe = self.prepare(0, {}, None)
        n_train, size1 = len(probe.train_index), probe.size
        overrides: dict[str, Any] = {}
        if not self.scale.smoke:
            rate1 = self.first_rate(size1)
            e1 = plan_epochs(budget * self.SHARE_1, rate1, n_train, self.OVERHEAD_S, 60)
            overrides["stages.0.epochs"] = e1
            say(f"quality: stage 1 {e1} epochs of {n_train} images (~{rate1:.0f} img/s expected)")
        run1 = self.prepare(0, overrides, None)
        say(run1.describe())
        m1 = fit_stage(run1, progress=False)
        if not self.scale.smoke:
            size2 = self.prepare(1, overrides, None).size
            rate2 = (m1.get("images_per_s") or 1.0) * size1[0] * size1[1] / (size2[0] * size2[1])
            left = budget - (time.perf_counter() - started)
            e2 = plan_epochs(left, 0.9 * rate2, n_train, self.OVERHEAD_S, 30)
            overrides["stages.1.epochs"] = e2
            say(
                f"quality: stage 2 {e2} epochs (~{0.9 * rate2:.1f} img/s expected, {left:.0f} s left)"
            )
        run2 = self.prepare(1, overrides, run1.stage_dir / "best.pt")
        say(run2.describe())
        m2 = fit_stage(run2, progress=False)
        return self.summary(run2, m1, m2, time.perf_counter() - started)

    def summary(self, run2: Any, m1: dict, m2: dict, seconds: float) -> dict[str, Any]:
        keep = ("best_dice", "best_epoch", "epochs", "images_per_s", "time_s", "size", "precision")
        dice = m2["best_dice"]
        say(
            f"quality: full-resolution Dice of the {m2.get('val_cars')} validation cars as 06 "
            f"submits them: {dice:.5f} (CPU scale: {CPU_REFERENCE['dice']}) in {seconds:.0f} s"
        )
        return {
            "dice": round(dice, 5),
            "cpu_reference_dice": CPU_REFERENCE["dice"],
            "seconds": round(seconds, 1),
            "n_train": m2.get("n_train"),
            "n_val": m2.get("n_val"),
            "val_cars": m2.get("val_cars"),
            "dice_resolution": m2.get("dice_resolution"),
            "stage1": {k: m1.get(k) for k in keep},
            "stage2": {k: m2.get(k) for k in keep},
            "best_checkpoint": str(run2.stage_dir / "best.pt"),
            "val_ids": [str(i) for i in run2.val_index["id"]],
            "data_dir": str(self.data_dir),
            "member": str(MEMBER.relative_to(REPO)),
        }


def as_test_set(data_dir: Path, root: Path) -> Path:
    """A test folder of every training JPEG under data_dir (symlinks) with a sample submission
    naming them: 06 runs on real photos with known masks."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in (data_dir / "train").glob("*.jpg"))
    for name in names:
        link = root / "test" / name
        if not link.exists():
            link.symlink_to((data_dir / "train" / name).resolve())
    rows = "".join(f"{n},1 1\n" for n in names)
    (root / "sample_submission.csv").write_text("img,rle_mask\n" + rows)
    return root


def submit_path(scale: Scale, quality: dict[str, Any], work: Path) -> dict[str, Any]:
    """06 end to end with the quality member on every carried JPEG; Dice of the val cars' rows."""
    import pandas as pd

    from kaggle_utils.config import load_member
    from kaggle_utils.inference import load_members
    from kaggle_utils.layout import find_data
    from kaggle_utils.predict import predict_submission, score_submission

    member = load_member(MEMBER, dict(scale.quality_overrides))
    data_dir = Path(quality["data_dir"])
    data = find_data(as_test_set(data_dir, work / "as_test"))
    members = load_members([quality["best_checkpoint"]])
    out = work / "submission.csv.gz"
    result = predict_submission(
        members,
        data,
        out,
        limit="available",
        tta=True,
        threshold=member.threshold,
        largest_component=member.largest_component,
        guided=member.guided_filter,
        batch_size=scale.predict_batch,
        num_workers=min(8, os.cpu_count() or 1),
        device=scale.device,
        progress=False,
        restart=True,
    )
    sub = pd.read_csv(out, keep_default_na=False)
    val = sub[sub["img"].isin({f"{i}.jpg" for i in quality["val_ids"]})]
    val_csv = work / "val_rows.csv"
    val.to_csv(val_csv, index=False)
    truth = pd.read_csv(data_dir / "train_masks.csv", keep_default_na=False)
    dice = float(score_submission(val_csv, truth, result.shape)["dice"].mean())
    hours = TEST_IMAGES / result.images_per_s / 3600
    say(
        f"submit_path: {result.n_images} images at {result.images_per_s:.1f} img/s -> "
        f"{hours:.2f} h for {TEST_IMAGES:,} test images; Dice of the {len(val)} validation rows "
        f"06 wrote: {dice:.5f}"
    )
    return {
        "images": result.n_images,
        "images_per_s": round(result.images_per_s, 2),
        "hours_100064": round(hours, 3),
        "member_size": list(members[0].size),
        "output_shape": list(result.shape),
        "batch": scale.predict_batch,
        "tta": True,
        "guided": member.guided_filter.model_dump() if member.guided_filter else None,
        "largest_component": member.largest_component,
        "val_rows": len(val),
        "val_dice": round(dice, 5),
    }


def device_predict(scale: Scale, quality: dict[str, Any]) -> dict[str, Any]:
    import gpu_predict_throughput as gpt

    from kaggle_utils.checkpoint import load_member_model

    model, info = load_member_model(quality["best_checkpoint"])
    size = tuple(int(s) for s in info["size"])
    if scale.smoke:
        rate = gpt.device_predict(model, size, 2, 1, "32-true", False, device="cpu")
        return {"size": list(size), "fp32_images_per_s": round(rate, 2)}
    return gpt.compare(size, scale.predict_batch, scale.device_batches, model=model)


# --------------------------------------------------------------------------------------------------
# figures


def figures_entry(env: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """What bench/gpu_figures.json keeps for this GPU (read by kaggle_utils.kernels.budget)."""
    entry: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "torch": env["torch"],
        "cuda": env["cuda"],
        "cudnn": env["cudnn"],
        "gpu_memory_gib": env["gpu_memory_gib"],
    }
    train = sections.get("train_throughput", {})
    if train.get("status") == "passed":
        entry["train"] = {
            "model": "refinenet_v4/resnet34",
            "size": train["size"],
            "fp32_images_per_s": train["fp32"]["images_per_s"],
            "fp32_batch": train["fp32"]["batch"],
            "fp32_peak_gib": train["fp32"]["peak_gib"],
            "amp_images_per_s": train["amp"]["images_per_s"],
            "amp_batch": train["amp"]["batch"],
            "amp_peak_gib": train["amp"]["peak_gib"],
            "amp_precision": train["amp"]["precision"],
            "ratio": train["ratio"],
        }
    keys = ("images_per_s", "hours_100064", "member_size", "batch", "val_dice")
    submit = sections.get("submit_path", {})
    if submit.get("status") == "passed":
        entry["submit"] = {k: submit[k] for k in keys}
    quality = sections.get("quality", {})
    if quality.get("status") == "passed":
        entry["quality"] = {k: quality[k] for k in ("dice", "seconds", "n_train", "n_val")}
    device = sections.get("device_predict", {})
    if device.get("status") == "passed" and "amp_images_per_s" in device:
        entry["device_predict"] = {
            k: device[k] for k in ("size", "fp32_images_per_s", "amp_images_per_s", "ratio")
        }
    return entry


def record(report_path: Path, figures_path: Path = FIGURES) -> dict[str, Any]:
    """Merge a GPU run's figures (gpu_report.json) into bench/gpu_figures.json; print the row
    for docs/gpu.md."""
    from kaggle_utils.atomic import atomic_write_json

    report = json.loads(Path(report_path).read_text())
    figures = json.loads(figures_path.read_text()) if figures_path.is_file() else {}
    new = report.get("figures") or {}
    if not new:
        raise SystemExit(
            f"{report_path}: no figures (was it a run without CUDA?); nothing recorded"
        )
    figures.update(new)
    atomic_write_json(figures_path, dict(sorted(figures.items())))
    for gpu, entry in new.items():
        print(f"recorded {gpu} in {figures_path}")
        print(table_row(gpu, entry))
    return figures


def table_row(gpu: str, e: dict[str, Any]) -> str:
    """docs/gpu.md's table row of one figures entry."""
    t, s, q = e.get("train", {}), e.get("submit", {}), e.get("quality", {})
    cells = [
        e.get("date"),
        gpu,
        e.get("torch"),
        e.get("cuda"),
        f"{t.get('fp32_images_per_s')} (b{t.get('fp32_batch')}, {t.get('fp32_peak_gib')} GiB)",
        f"{t.get('amp_images_per_s')} (b{t.get('amp_batch')}, {t.get('amp_peak_gib')} GiB)",
        f"{t.get('ratio')}x",
        s.get("images_per_s"),
        s.get("hours_100064"),
        q.get("dice"),
        CPU_REFERENCE["dice"],
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


# --------------------------------------------------------------------------------------------------
# the run


class Suite:
    """Runs the sections in order under one deadline, each into the report."""

    def __init__(self, out: Path, args: argparse.Namespace, boot: dict[str, Any]):
        import torch

        self.out, self.args = out, args
        self.deadline = time.monotonic() + args.budget_s
        self.cuda = torch.cuda.is_available()
        self.scale = SMOKE if args.cpu_smoke else Scale(quality_s=args.quality_s)
        self.report = Report(out, sys.argv[1:])
        self.report.data["bootstrap"] = boot
        self.report.data["environment"] = self.env = environment()
        self.report.data["carry"] = self.carry_info()
        self.work = Path(tempfile.mkdtemp(prefix="gpu_suite."))
        self.results: dict[str, Any] = {}

    def carry_info(self) -> dict[str, Any]:
        manifest = gpu_carry.CARRY_DIR / "manifest.json"
        if manifest.is_file():
            return {"prepared": True, **json.loads(manifest.read_text())}
        return {"prepared": False, "hint": "bench/gpu_suite.py --prepare builds it"}

    def section(
        self, name: str, fn: Callable[[], dict[str, Any]], estimate_s: float, gpu: bool = True
    ) -> None:
        left = self.deadline - time.monotonic()
        if gpu and not (self.cuda or self.scale.smoke):
            record = {"status": "skipped", "reason": "no CUDA device (torch sees none)"}
            say(f"{name}: skipped ({record['reason']})")
        elif left < estimate_s:
            reason = f"{left:.0f} s left of --budget-s, needs ~{estimate_s:.0f} s"
            record = {"status": "skipped", "reason": reason}
            say(f"{name}: skipped ({reason})")
        else:
            record = self.run_section(name, fn)

        self.results[name] = record
        self.report.section(name, record)

    def run_section(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        say(f"{name}: start")
        started = time.perf_counter()
        try:
            record = {"status": "passed", **fn()}
        except Exception as exc:  # a section's failure is a finding: record it, run the rest
            traceback.print_exc()
            record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        record["seconds"] = round(time.perf_counter() - started, 1)
        say(f"{name}: {record['status']} in {record['seconds']} s")
        return record

    def needs(self, name: str) -> Callable[[], dict[str, Any]]:
        def missing() -> dict[str, Any]:
            raise RuntimeError(f"needs the {name} section, which did not pass")

        return missing

    def run(self) -> int:
        say(
            f"torch {self.env['torch']} CUDA {self.env['cuda']} on "
            f"{self.env['gpu'] or 'no CUDA device: the GPU sections are skipped'}"
            + (" (--cpu-smoke: GPU sections on the CPU at toy sizes)" if self.scale.smoke else "")
        )
        s = self.scale
        self.section("cuda_tests", lambda: run_cuda_tests(self.out, 240), 60, gpu=False)
        self.section("train_throughput", lambda: train_throughput(s), 60)
        self.section("full_frame", lambda: full_frame(s), 40)
        self.section("quality", self.quality, s.quality_s + 60)
        q = self.results["quality"]
        ok = q["status"] == "passed"
        self.section(
            "submit_path",
            (lambda: submit_path(s, q, self.work)) if ok else self.needs("quality"),
            45,
        )
        self.section(
            "device_predict", (lambda: device_predict(s, q)) if ok else self.needs("quality"), 25
        )
        if self.cuda:
            self.report.data["figures"] = {self.env["gpu"]: figures_entry(self.env, self.results)}
        self.report.save(finished=True)
        failed = [n for n, r in self.results.items() if r["status"] == "failed"]
        skipped = [n for n, r in self.results.items() if r["status"] == "skipped"]
        say(
            f"done in {self.report.data['seconds']} s: failed {failed or 'none'}, skipped "
            f"{skipped or 'none'} -> {self.report.path}"
        )
        return 1 if failed else 0

    def quality(self) -> dict[str, Any]:
        data_dir = smoke_data() if self.scale.smoke else gpu_carry.subset_dir()
        if data_dir is None:
            raise FileNotFoundError(
                f"no carried cars in {gpu_carry.CARRY_DIR / 'data'}: run `.venv/bin/python "
                f"bench/gpu_suite.py --prepare` on the CPU machine and carry {gpu_carry.CARRY}"
            )
        train = self.results.get("train_throughput", {})
        ips = train.get("amp", {}).get("images_per_s") if train.get("status") == "passed" else None
        return Quality(self.scale, data_dir, self.work / "runs", ips).run()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_suite")
    parser.add_argument("--prepare", action="store_true", help="build .gpu_suite/ (here)")
    parser.add_argument("--dry-run", action="store_true", help="list the carry and its size")
    parser.add_argument("--record", type=Path, metavar="REPORT", help="merge into gpu_figures.json")
    parser.add_argument("--sample", type=Path, default=gpu_carry.DEFAULT_SAMPLE)
    parser.add_argument("--cars", type=int, help="--prepare: at most this many cars")
    parser.add_argument("--budget-s", type=float, default=540.0, help="the whole suite's wall cap")
    parser.add_argument("--quality-s", type=float, default=150.0, help="quality's wall budget")
    parser.add_argument("--cpu-smoke", action="store_true", help="GPU sections on the CPU, toy")
    parser.add_argument("--quick", action="store_true", help="(make bench-quick) no effect")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare:
        gpu_carry.prepare(args.sample, args.cars)
        return 0
    if args.dry_run:
        cars = ["--cars", str(args.cars)] if args.cars else []
        return gpu_carry.main(["--dry-run", "--sample", str(args.sample), *cars])
    if args.record:
        record(args.record)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "gpu_suite.log", "a", buffering=1)  # noqa: SIM115 (lives as long as the run)
    sys.stdout, sys.stderr = Tee(sys.__stdout__, log), Tee(sys.__stderr__, log)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    boot = gpu_carry.install_wheels()  # before torch: the carried typing_extensions must win
    say(f"dependencies: {'installed ' + boot['site'] if boot['site'] else 'all present here'}")
    return Suite(args.out, args, boot).run()


if __name__ == "__main__":
    sys.exit(main())
