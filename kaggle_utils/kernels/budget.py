"""Measured GPU figures for planning Kaggle runs: what a card trains and predicts per second.

`bench/gpu_suite.py` measures them on a GPU (docs/gpu.md) and `--record` merges them into
`bench/gpu_figures.json`, keyed by `torch.cuda.get_device_name()` ("NVIDIA H200", "Tesla T4"),
each with its date, torch and CUDA versions:

    train:   refinenet_v4/resnet34 at 1024x1024, fp32 and AMP + channels_last images/s, batches,
             peak GiB, the ratio
    submit:  06 end to end (hflip TTA, guided upsampling, RLE) at 1280x1918: images/s and the hours
             for 100,064 test images
    quality: the suite's from-scratch Dice on the carried validation cars

Torch-free, so a planner can read it before any kernel starts. A card never measured gives None:
plan with a measured one and say so rather than guess.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FIGURES",
    "TEST_IMAGES",
    "Budget",
    "KernelEstimate",
    "KernelStatus",
    "gpu_figures",
    "kernel_status",
    "load_figures",
    "plan_budget",
    "rates_for",
    "submit_hours",
]

FIGURES = Path(__file__).resolve().parents[2] / "bench" / "gpu_figures.json"
TEST_IMAGES = 100_064


def load_figures(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Every GPU's figures ({} where the file is absent, e.g. an installed package without bench/);
    a file that is not a JSON object of objects fails naming it."""
    path = Path(path) if path is not None else FIGURES
    if not path.is_file():
        return {}
    try:
        figures = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); re-record it with gpu_suite.py") from exc
    if not isinstance(figures, dict) or not all(isinstance(v, dict) for v in figures.values()):
        raise ValueError(
            f"{path}: expected {{gpu name: {{figures}}}}, got {type(figures).__name__}"
        )
    return figures


def gpu_figures(gpu_name: str, path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The figures measured on `gpu_name` (as torch.cuda.get_device_name() spells it); the
    match ignores case and surrounding spaces, and a unique partial name ("H200", "T4") is
    accepted. None when that card was never measured."""
    figures = load_figures(path)
    if gpu_name in figures:
        return figures[gpu_name]
    wanted = gpu_name.strip().casefold()
    exact = [k for k in figures if k.strip().casefold() == wanted]
    if exact:
        return figures[exact[0]]
    partial = [k for k in figures if wanted and (wanted in k.casefold() or k.casefold() in wanted)]
    return figures[partial[0]] if len(partial) == 1 else None


def submit_hours(
    gpu_name: str, n_images: int = TEST_IMAGES, path: str | os.PathLike | None = None
) -> float | None:
    """Hours 06 needs for `n_images` on `gpu_name` at its measured rate (None: not measured)."""
    figures = gpu_figures(gpu_name, path)
    rate = (figures or {}).get("submit", {}).get("images_per_s")
    return n_images / float(rate) / 3600 if rate else None


# ------------------------------------------------------------------------------------ the planner
#
# hours = images / images_per_s, per kernel: a training stage is epochs x (its train images + its
# validation images at a forward pass's cost); 05 re-predicts the validation images and 06 the
# 100,064 test images with every member x fold model. Rates are per card for the suite's workload
# (refinenet_v4/resnet34); other members and sizes scale by cost (below).

CARVANA_TRAIN_IMAGES = 5_088
SESSION_HOURS = 12.0
USABLE_HOURS = 11.5  # the time budget a stage gets: saves last.pt and ends before Kaggle kills it
WEEKLY_GPU_HOURS = 30.0  # Kaggle's weekly GPU quota (about; `kaggle quota` shows yours)
TRAIN_FORWARDS = 3.0  # one training image costs about three forward passes (forward + backward)
TTA_FORWARDS = 2.0  # 06's figure and the reference are with hflip TTA: two forwards an image
MULTI_GPU_EFFICIENCY = 0.9  # assumed DDP scaling per added card (not measured)
# An estimate's anchor, stated in issue 15: the 4th-place team's test pass took 6 h on three cards
# for one network (100,064 images, hflip TTA), taken as the rate at 1024x1024.
REFERENCE_PREDICT = TEST_IMAGES / (6 * 3600 * 3)
REFERENCE_SIZE = (1024, 1024)
REFERENCE_WHAT = "the 4th-place team's test pass: one network, 100,064 images in 6 h on 3 cards"
# torchvision's GFLOPs at 224x224: a member's cost relative to the suite's resnet34 (decoders and
# the rest of the network are not modelled: a labelled estimate)
ENCODER_GFLOPS = {
    "resnet18": 1.8,
    "resnet34": 3.6,
    "resnet50": 4.1,
    "resnet101": 7.8,
    "resnet152": 11.5,
    "vgg11": 7.6,
    "vgg13": 11.3,
    "vgg16": 15.5,
    "vgg19": 19.6,
}
# accelerator id -> the card's name as torch.cuda.get_device_name() spells it (gpu_figures' keys)
GPU_NAMES = {
    "NvidiaTeslaT4": "Tesla T4",
    "NvidiaTeslaP100": "Tesla P100",
    "NvidiaL4": "NVIDIA L4",
    "NvidiaL4X1": "NVIDIA L4",
    "NvidiaTeslaA100": "A100",
    "NvidiaH100": "H100",
    "NvidiaRtxPro6000": "RTX PRO 6000",
}


@dataclass
class Rates:
    """Per-card images/s of the reference workload for training and for 06's test pass."""

    train: float
    train_size: tuple[int, int]
    predict: float
    predict_size: tuple[int, int]
    basis: str  # "measured", "measured, scaled", "estimate"
    rules: list[str]


def rates_for(accelerator: str, amp: bool = True, path: str | os.PathLike | None = None) -> Rates:
    """The rates recorded for the accelerator's GPU class, else the stated reference estimate."""
    gpu = GPU_NAMES.get(accelerator, accelerator)
    found = gpu_figures(gpu, path) or {}
    train = found.get("train") or {}
    submit = found.get("submit") or {}
    key = "amp_images_per_s" if amp else "fp32_images_per_s"
    t_rate, p_rate = train.get(key), submit.get("images_per_s")
    t_size = tuple(train.get("size") or REFERENCE_SIZE)
    p_size = tuple(submit.get("member_size") or t_size)
    when = f"{gpu} ({found.get('date', 'undated')}, bench/gpu_figures.json)"
    if t_rate and p_rate:
        rules = [f"train {t_rate} img/s and 06 {p_rate} img/s per card: measured on {when}"]
        return Rates(float(t_rate), t_size, float(p_rate), p_size, "measured", rules)
    ratio = (
        f"one training image = {TRAIN_FORWARDS:g} forwards, a TTA'd test image = {TTA_FORWARDS:g}"
    )
    if t_rate:
        p_rate = float(t_rate) * TRAIN_FORWARDS / TTA_FORWARDS
        rule = f"train {t_rate} img/s measured on {when}; 06 = {p_rate:.2f} img/s, an estimate: {ratio}"
        return Rates(float(t_rate), t_size, p_rate, t_size, "estimate", [rule])
    if p_rate:
        t_rate = float(p_rate) * TTA_FORWARDS / TRAIN_FORWARDS
        rule = f"06 {p_rate} img/s measured on {when}; train = {t_rate:.2f} img/s, an estimate: {ratio}"
        return Rates(t_rate, p_size, float(p_rate), p_size, "estimate", [rule])
    t_rate = REFERENCE_PREDICT * TTA_FORWARDS / TRAIN_FORWARDS
    rules = [
        f"ESTIMATE: {gpu} was never measured (bench/gpu_suite.py --record adds it); the rates "
        f"come from {REFERENCE_WHAT} = {REFERENCE_PREDICT:.2f} img/s per card at "
        f"{REFERENCE_SIZE[0]}x{REFERENCE_SIZE[1]}, on any card; train = {t_rate:.2f} img/s ({ratio})"
    ]
    return Rates(t_rate, REFERENCE_SIZE, REFERENCE_PREDICT, REFERENCE_SIZE, "estimate", rules)


def member_cost(member: Any, size: tuple[int, int], reference: tuple[int, int]) -> float:
    """A member's cost per image at `size` relative to the suite's resnet34 at `reference`:
    pixels x encoder GFLOPs (an unknown encoder counts as resnet34)."""
    encoder = member.model.spec().get("encoder", "resnet34")
    flops = ENCODER_GFLOPS.get(encoder, ENCODER_GFLOPS["resnet34"])
    pixels = size[0] * size[1] / (reference[0] * reference[1])
    return pixels * flops / ENCODER_GFLOPS["resnet34"]


@dataclass
class KernelEstimate:
    """One kernel's GPU hours (None: a CPU kernel, outside the GPU quota) and how they add up."""

    slug: str
    accelerator: str | None
    hours: float | None
    basis: str
    details: list[str] = field(default_factory=list)

    @property
    def sessions(self) -> int | None:
        """12-hour sessions, each used to USABLE_HOURS (the next version resumes from last.pt)."""
        return None if self.hours is None else max(1, math.ceil(self.hours / USABLE_HOURS))


@dataclass
class Budget:
    """The plan's estimates per kernel, the weekly-quota total and the rules behind them."""

    ensemble: str
    kernels: list[KernelEstimate]
    rules: list[str]

    @property
    def gpu_hours(self) -> float:
        return sum(k.hours or 0.0 for k in self.kernels)

    def describe(self) -> str:
        lines = [f"{'kernel':<44} {'accelerator':<16} {'hours':>7} {'sessions':>8}  basis"]
        for k in self.kernels:
            hours = "-" if k.hours is None else f"{k.hours:.1f}"
            sessions = "-" if k.sessions is None else str(k.sessions)
            acc = k.accelerator or "none (CPU)"
            lines.append(f"{k.slug:<44} {acc:<16} {hours:>7} {sessions:>8}  {k.basis}")
            lines += [f"    {d}" for d in k.details]
        weeks = self.gpu_hours / WEEKLY_GPU_HOURS
        lines.append(
            f"total: {self.gpu_hours:.1f} GPU hours = {weeks:.1f} weeks of Kaggle's ~"
            f"{WEEKLY_GPU_HOURS:g} h weekly GPU quota; sessions of {SESSION_HOURS:g} h, "
            f"{USABLE_HOURS:g} h used by each (the stage time budget)"
        )
        lines.append("how:")
        lines += [f"  - {r}" for r in dict.fromkeys(self.rules)]
        return "\n".join(lines)


def _split_sizes(n_folds: int, member: Any) -> tuple[int, int]:
    """Train and validation images of one fold of Carvana's 5,088 (capped by the member)."""
    n_train = round(CARVANA_TRAIN_IMAGES * (n_folds - 1) / n_folds)
    n_val = CARVANA_TRAIN_IMAGES - n_train
    return min(n_train, member.max_train_images or n_train), min(
        n_val, member.max_val_images or n_val
    )


def _stage_hours(
    member: Any, i: int, n_folds: int, devices: int, rates: Rates
) -> tuple[float, str]:
    stage = member.stages[i]
    n_train, n_val = _split_sizes(n_folds, member)
    cost = member_cost(member, stage.size, rates.train_size)  # whole frames: validation
    train_cost = member_cost(member, stage.crop, rates.train_size) if stage.crop else cost
    val_forwards = (2.0 if member.val_tta else 1.0) / TRAIN_FORWARDS / member.val_every
    seconds = stage.epochs * (n_train * train_cost + n_val * val_forwards * cost) / rates.train
    speedup = devices * MULTI_GPU_EFFICIENCY if devices > 1 else 1.0
    hours = seconds / speedup / 3600
    crop = f" (crops at cost {train_cost:.2f})" if stage.crop else ""
    return hours, (
        f"{member.stage_name(i)}: {stage.epochs} epochs x ({n_train:,} train + {n_val:,} "
        f"validation) images at cost {cost:.2f}{crop}, {devices} GPU(s) -> {hours:.1f} h"
    )


def _tta_forwards(candidates: list[Any], combine: Any) -> int:
    """Forwards per image of the ensemble file's TTA candidates: 05 scores every candidate
    (`sum`), 06 runs the one 05 chose, at most the dearest (`max`); at least one forward."""
    from kaggle_utils.tta import parse_setting

    return max(1, combine(parse_setting(c).forwards for c in candidates) if candidates else 1)


def _predict_hours(models: list[Any], n_images: int, tta: int, rates: Rates) -> float:
    cost = sum(member_cost(m, m.stages[-1].size, rates.predict_size) for m in models)
    return n_images * cost * (tta / TTA_FORWARDS) / rates.predict / 3600


def plan_budget(
    ensemble_file: str | os.PathLike,
    accelerator: str | None = None,
    *,
    per_stage: bool = False,
    datasets: Sequence[str] = (),
    figures: str | os.PathLike | None = None,
) -> Budget:
    """Estimated GPU hours, sessions and quota for every kernel `build` would write."""
    import yaml

    from kaggle_utils.config import MemberConfig, load_ensemble
    from kaggle_utils.kernels.build import plan_kernels

    options = {"per_stage": per_stage, "datasets": datasets, "internet": True}
    plan = plan_kernels(ensemble_file, accelerator=accelerator, **options)
    ens = load_ensemble(ensemble_file)

    def shipped(spec: Any) -> Any:  # the member file as the kernel reads it (devices included)
        flat = str(spec.parameters["member_file"]).rsplit("/", 1)[-1]
        raw = yaml.safe_load(plan.params_files[flat])
        return MemberConfig.model_validate({"name": Path(flat).stem, **raw})

    first = [k for k in plan.kernels if k.step in ("03", "04") and not k.parameters.get("stage")]
    models = [shipped(k) for k in first]  # one model per member and fold
    estimates, rules = (
        [],
        [
            f"a fold trains on {CARVANA_TRAIN_IMAGES:,} x (n_folds-1)/n_folds images and validates "
            "on the rest (a validation image: a forward, a third of a training image)",
            f"cost = pixels / the measured size x encoder GFLOPs / resnet34's ({ENCODER_GFLOPS})",
            f"several GPUs: {MULTI_GPU_EFFICIENCY:g} of linear per card (assumed); predicting on one",
            "not counted: session start, installing the wheels, reading the data",
        ],
    )
    for spec in plan.kernels:
        if not spec.gpu:
            estimates.append(KernelEstimate(spec.slug, spec.machine_shape, None, "no GPU"))
            continue
        rates = rates_for(spec.machine_shape or "", path=figures)
        rules += rates.rules
        if spec.step in ("03", "04"):
            member = shipped(spec)
            devices = int(spec.parameters.get("devices") or member.devices)
            stages = [spec.parameters["stage"]] if spec.step == "03" else range(len(member.stages))
            parts = [_stage_hours(member, i, ens.n_folds, devices, rates) for i in stages]
            hours, details = sum(h for h, _ in parts), [d for _, d in parts]
            if rates.basis == "measured" and member.model.spec().get("encoder") != "resnet34":
                rates.basis = "measured, scaled"
        elif spec.step == "05":
            n_val = CARVANA_TRAIN_IMAGES - round(
                CARVANA_TRAIN_IMAGES * (ens.n_folds - 1) / ens.n_folds
            )
            hours = _predict_hours(models, n_val, _tta_forwards(ens.tta, sum), rates)
            details = [f"{n_val:,} validation images x {len(models)} models, TTA {ens.tta}"]
        else:  # 06: the test set, or its shard; the merge of shards only joins files
            n_test = _test_images_of(spec)
            hours = _predict_hours(models, n_test, _tta_forwards(ens.tta, max), rates)
            details = [f"{n_test:,} test images x {len(models)} models, TTA {ens.tta}"]
        estimates.append(KernelEstimate(spec.slug, spec.machine_shape, hours, rates.basis, details))
    return Budget(ens.name, estimates, rules)


# ------------------------------------------------------------------------------------ the status
#
# Which kernels are done, to continue (a stage stopped at its time budget, or any stage state this
# module does not know) or waiting on upstream kernels, from the run folders their outputs hold:
# a build folder's bundles (each kernel's output downloaded into OUTPUTS/<slug>/ with
# `kaggle kernels output OWNER/SLUG -p OUTPUTS/SLUG`), or one run folder for every kernel.

# what a finished non-training kernel leaves in its run folder
DONE_FILES = {"02": "folds.csv", "05": "ensemble.yaml", "06": "submission.csv.gz"}


def _test_images_of(spec: Any) -> int:
    """Test images a 06 kernel predicts: all, its shard's share, or none for the merge."""
    n_shards, shard = spec.parameters.get("n_shards"), spec.parameters.get("shard")
    if not n_shards:
        return TEST_IMAGES
    if shard is None:
        return 0
    from kaggle_utils.testset import shard_range

    start, stop = shard_range(TEST_IMAGES, int(shard), int(n_shards))
    return stop - start


@dataclass
class KernelStatus:
    """One kernel: done / to continue / ready / waiting / unknown, and why."""

    slug: str
    state: str
    detail: str = ""


@dataclass
class _Kernel:
    slug: str
    step: str
    parameters: dict[str, Any]
    upstream: list[str]
    member: Any = None  # MemberConfig for 03/04


def _stage_states(kernel: _Kernel, run: Path) -> list[tuple[str, str]]:
    """(stage name, "finished" | "new" | whatever runs.stage_status says) of a training kernel."""
    from kaggle_utils.runs import stage_dir_for, stage_hash, stage_status

    member = kernel.member
    fold = kernel.parameters.get("fold")
    fold = member.fold if fold is None else int(fold)
    stages = [int(kernel.parameters["stage"])] if kernel.step == "03" else range(len(member.stages))
    return [
        (
            member.stage_name(i),
            stage_status(stage_dir_for(run, member, i, fold), stage_hash(member, i, fold)),
        )
        for i in stages
    ]


def _own_state(kernel: _Kernel, run: Path | None, output: Path | None) -> tuple[str, str]:
    """("done" | "to continue" | "not started" | "unknown", detail) from the kernel's own files."""
    if kernel.step in ("03", "04") and kernel.member is not None:
        states = _stage_states(kernel, run) if run is not None else []
        if states and all(s == "finished" for _, s in states):
            return "done", ", ".join(n for n, _ in states) + " finished"
        if not states or all(s == "new" for _, s in states):
            return "not started", ""
        todo = [f"{n}: {s}" for n, s in states if s != "finished"]
        return "to continue", "; ".join(todo) + " (push the kernel again with its output attached)"
    if kernel.step == "06" and kernel.parameters.get("shard") is not None and run is not None:
        from kaggle_utils.shards import shard_path  # a shard kernel is done when its rows are

        shard, n_shards = int(kernel.parameters["shard"]), int(kernel.parameters["n_shards"])
        done = shard_path(run / DONE_FILES["06"], shard, n_shards)
        return ("done", f"{done.name} written") if done.is_file() else ("not started", "")
    if kernel.step in DONE_FILES:
        name = DONE_FILES[kernel.step]
        if run is not None and (run / name).is_file():
            return "done", f"{name} written"
        return "not started", ""
    if output is not None and output.is_dir() and any(output.iterdir()):
        return "done", f"output in {output}"
    return "unknown", f"no rule for step {kernel.step}: look at its log on Kaggle"


def kernel_status(
    path: str | os.PathLike,
    *,
    ensemble: str | os.PathLike | None = None,
    outputs: str | os.PathLike | None = None,
) -> list[KernelStatus]:
    """Each kernel's state, upstream first. `path`: a build folder (bundles; outputs under
    `outputs`, default <path>/outputs) or a run folder (every kernel's results in it; needs
    `ensemble`, the file the kernels were built from)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; give a build folder or a run folder")
    if any(path.glob("*.manifest.json")):
        kernels = _bundle_kernels(path)
        out = Path(outputs) if outputs is not None else path / "outputs"

        def where(k: _Kernel) -> tuple[Path | None, Path | None]:
            own = out / k.slug
            rel = k.parameters.get("run_dir")
            return (own / rel if rel else None), own
    elif ensemble is None:
        raise ValueError(
            f"{path} holds no *.manifest.json (not a build folder): for a run folder, pass "
            "--ensemble params/<set>/ensemble.yaml (the file the kernels were built from)"
        )
    else:
        kernels = _planned_kernels(ensemble)

        def where(k: _Kernel) -> tuple[Path | None, Path | None]:
            return path, None

    return _resolve(kernels, where)


def _resolve(kernels: list[_Kernel], where: Any) -> list[KernelStatus]:
    """Own states, then "ready" or "waiting on ..." for kernels not started, upstream first."""
    done: dict[str, bool] = {}
    result = []
    for k in kernels:
        run, output = where(k)
        state, detail = _own_state(k, run, output)
        if state == "not started":
            waiting = [u for u in k.upstream if not done.get(u, False)]
            state = f"waiting on {', '.join(waiting)}" if waiting else "ready"
            detail = "" if waiting else "every upstream kernel is done: push it"
        done[k.slug] = state == "done"
        result.append(KernelStatus(k.slug, state, detail))
    return result


def _bundle_kernels(out: Path) -> list[_Kernel]:
    """The kernels of a build folder, from each bundle itself: the parameters papermill injected,
    kernel_sources, and the member file shipped in the package dataset."""
    import nbformat

    from kaggle_utils.kernels.validate import KERNEL_METADATA_FILE

    slugs: list[str] = []
    for manifest in sorted(out.glob("*.manifest.json")):
        slugs += json.loads(manifest.read_text(encoding="utf-8")).get("kernels", [])
    kernels = []
    for slug in dict.fromkeys(slugs):
        meta_file = out / slug / KERNEL_METADATA_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file}: listed in the manifest but missing: rebuild")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        nb = nbformat.read(str(out / slug / meta["code_file"]), as_version=4)
        record = nb.metadata.get("papermill", {})
        step = Path(record.get("input_path", "")).name[:2]
        params = dict(record.get("parameters", {}))
        upstream = [s.split("/", 1)[-1] for s in meta.get("kernel_sources", [])]
        member = _shipped_member(out, params) if step in ("03", "04") else None
        kernels.append(_Kernel(slug, step, params, upstream, member))
    return kernels


def _shipped_member(out: Path, params: dict[str, Any]) -> Any:
    from kaggle_utils.config import load_member
    from kaggle_utils.kernels.build import PACKAGE_DIR

    flat = str(params.get("member_file", "")).rsplit("/", 1)[-1]
    path = out / PACKAGE_DIR / flat
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the member file of a training kernel; rebuild with the package"
        )
    return load_member(path)


def _planned_kernels(ensemble: str | os.PathLike) -> list[_Kernel]:
    import yaml

    from kaggle_utils.config import MemberConfig
    from kaggle_utils.kernels.build import plan_kernels

    plan = plan_kernels(ensemble, internet=True)
    kernels = []
    for spec in plan.kernels:
        member = None
        if spec.step in ("03", "04"):
            flat = str(spec.parameters["member_file"]).rsplit("/", 1)[-1]
            raw = yaml.safe_load(plan.params_files[flat])
            member = MemberConfig.model_validate({"name": Path(flat).stem, **raw})
        kernels.append(_Kernel(spec.slug, spec.step, spec.parameters, spec.upstream, member))
    return kernels


def describe_status(statuses: list[KernelStatus]) -> str:
    """One line per kernel, then the counts."""
    lines = [f"{s.slug:<44} {s.state}{f'  ({s.detail})' if s.detail else ''}" for s in statuses]
    counts: dict[str, int] = {}
    for s in statuses:
        key = "waiting" if s.state.startswith("waiting") else s.state
        counts[key] = counts.get(key, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(lines)
