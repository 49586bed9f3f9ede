"""The batch runner's plan: the steps, and every notebook run with its papermill parameters."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass(frozen=True)
class Step:
    key: str
    notebook: str
    per_member: bool = False
    part: str = ""  # "shards": 06's shard runs, a batch of their own before 06's merge


STEPS: tuple[Step, ...] = (
    Step("01", "01_eda.ipynb"),
    Step("02", "02_split.ipynb"),
    Step("04", "04_stage_up.ipynb", per_member=True),
    Step("05", "05_ensemble.ipynb"),
    Step("06", "06_submit.ipynb"),
)


@dataclass
class Job:
    step: Step
    output: Path
    parameters: dict[str, Any]
    label: str
    gpu: str | None = None


@dataclass
class JobResult:
    label: str
    ok: bool
    seconds: float
    error: str = ""
    output: str = ""


@dataclass
class Plan:
    run_dir: Path
    data_dir: str | None = None
    jobs: list[Job] = field(default_factory=list)

    def describe(self) -> str:
        lines = []
        for job in self.jobs:
            params = ", ".join(f"{k}={v!r}" for k, v in job.parameters.items())
            gpu = f" [CUDA_VISIBLE_DEVICES={job.gpu}]" if job.gpu is not None else ""
            lines.append(f"{job.label:<40} {job.step.notebook} -> {job.output}{gpu}\n    {params}")
        return "\n".join(lines)


def _select_steps(only: Sequence[str] | None, start: str | None) -> list[Step]:
    known = [s.key for s in STEPS]
    for key in [*(only or []), *([start] if start else [])]:
        if key not in known:
            raise SystemExit(f"unknown step {key!r}: choose from {', '.join(known)}")
    steps = [s for s in STEPS if (not only or s.key in only)]
    if start:
        steps = [s for s in steps if s.key >= start]
    return steps


def gpu_count() -> int:
    """GPUs visible to this process (0 without CUDA); imported lazily so --dry-run stays fast."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0


def _shard_jobs(
    step: Step, executed: Path, params: dict[str, Any], n_shards: int, n_gpus: int
) -> list[Job]:
    """06 once per shard (``n_shards`` in the ensemble file): a step of their own, so they run
    ``--jobs`` at a time and 06's merge (shard=None) runs after them all."""
    from dataclasses import replace

    shard_step = replace(step, part="shards")
    stem = Path(step.notebook).stem
    return [
        Job(
            shard_step,
            executed / f"{stem}__shard{i}of{n_shards}.ipynb",
            {**params, "shard": i, "n_shards": n_shards},
            f"{stem}:shard{i}of{n_shards}",
            str(i % n_gpus) if n_gpus > 1 else None,
        )
        for i in range(n_shards)
    ]


def build_plan(
    ensemble_file: str | os.PathLike,
    *,
    data_dir: str | None = None,
    run_dir: str | None = None,
    only: Sequence[str] | None = None,
    start: str | None = None,
    device: str | None = None,
    n_gpus: int = 0,
    notebook_dir: Path = NOTEBOOK_DIR,
) -> Plan:
    """Every notebook run, in order, with the parameters papermill will inject."""
    from kaggle_utils.config import load_ensemble

    ensemble_path = Path(ensemble_file).resolve()
    ens = load_ensemble(ensemble_path)
    data = data_dir if data_dir is not None else ens.data_dir
    data = str(Path(data).resolve()) if data else None
    run = Path(run_dir or ens.run_dir or f"runs/{ens.name}").resolve()
    executed = run / "executed"
    common: dict[str, Any] = {"data_dir": data, "run_dir": str(run)}
    plan = Plan(run, data)
    slot = 0
    for step in _select_steps(only, start):
        nb = notebook_dir / step.notebook
        stem = Path(step.notebook).stem
        if step.key == "01":
            plan.jobs.append(Job(step, executed / nb.name, {"data_dir": data}, stem))
        elif step.key == "02":
            params = {**common, "n_folds": ens.n_folds, "stratify": ens.stratify, "seed": ens.seed}
            plan.jobs.append(Job(step, executed / nb.name, params, stem))
        elif step.per_member:
            for member in ens.member_paths(ensemble_path):
                for fold in ens.folds:
                    params = {**common, "member_file": str(member), "fold": fold}
                    if device:
                        params["device"] = device
                    gpu = str(slot % n_gpus) if n_gpus > 1 else None
                    slot += 1
                    label = f"{stem}:{member.stem}:fold{fold}"
                    out = executed / f"{stem}__{member.stem}__fold{fold}.ipynb"
                    plan.jobs.append(Job(step, out, params, label, gpu))
        else:
            params = {**common, "ensemble_file": str(ensemble_path)}
            if device and step.key == "06":
                params["device"] = device
            if step.key == "06" and ens.n_shards:
                plan.jobs += _shard_jobs(step, executed, params, ens.n_shards, n_gpus)
                params = {**params, "shard": None, "n_shards": ens.n_shards}  # the merge
                stem = f"{stem}:merge"
            plan.jobs.append(Job(step, executed / nb.name, params, stem))
    return plan
