"""Batch runner: executes the numbered notebooks with papermill for one ensemble file.

01 (EDA) and 02 (split) once, 04 (stage-up, which runs 03 per stage) for every member and fold, then 05
(ensemble) and 06 (submit). A failed member is reported and the others go on; the exit status says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


@dataclass(frozen=True)
class Step:
    key: str
    notebook: str
    per_member: bool = False


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
            plan.jobs.append(Job(step, executed / nb.name, params, stem))
    return plan


def run_job(job: Job, notebook_dir: str | os.PathLike = NOTEBOOK_DIR) -> JobResult:
    """Execute one notebook; a failure comes back as a result naming the cell, never as a crash."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from kaggle_utils.notebook import ipc_engine_kwargs

    if job.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.gpu
    job.output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        pm.execute_notebook(
            str(Path(notebook_dir) / job.step.notebook),
            str(job.output),
            parameters=job.parameters,
            kernel_name="python3",
            progress_bar=False,
            cwd=str(Path(notebook_dir).parent),
            **ipc_engine_kwargs(),  # no "Kernel is running over TCP without encryption" per run
        )
    except PapermillExecutionError as exc:
        error = f"cell {exc.cell_index} (execution {exc.exec_count}): {exc.ename}: {exc.evalue}"
        return JobResult(job.label, False, time.perf_counter() - started, error, str(job.output))
    except Exception as exc:  # kernel died, notebook missing, ...: report it, keep the others
        error = f"{type(exc).__name__}: {exc}"
        return JobResult(job.label, False, time.perf_counter() - started, error, str(job.output))
    return JobResult(job.label, True, time.perf_counter() - started, output=str(job.output))


def _report(result: JobResult) -> None:
    status = "ok    " if result.ok else "FAILED"
    print(f"[{status}] {result.label} ({result.seconds:.0f} s) -> {result.output}", flush=True)
    if not result.ok:
        print(f"         {result.error}", flush=True)


def run_plan(plan: Plan, jobs: int = 1, notebook_dir: Path = NOTEBOOK_DIR) -> list[JobResult]:
    """Run in order; member jobs of one step run `jobs` at a time in separate processes."""
    results: list[JobResult] = []
    i = 0
    while i < len(plan.jobs):
        step = plan.jobs[i].step
        batch = [j for j in plan.jobs[i:] if j.step == step]
        i += len(batch)
        if step.key in ("05", "06") and any(not r.ok for r in results):
            print(f"[skip  ] {step.notebook}: earlier steps failed (rerun after fixing)")
            results.append(JobResult(Path(step.notebook).stem, False, 0.0, "skipped"))
            continue
        print(f">> {step.notebook}: {len(batch)} run(s)", flush=True)
        if jobs > 1 and len(batch) > 1:
            with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(run_job, job, notebook_dir) for job in batch]
                for future in as_completed(futures):
                    results.append(future.result())
                    _report(results[-1])
        else:
            for job in batch:
                results.append(run_job(job, notebook_dir))
                _report(results[-1])
        if step.key in ("01", "02") and not results[-1].ok:
            print(f"[stop  ] {step.notebook} failed: later steps need it", flush=True)
            break
    return results


def summarize(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    since: float | None = None,
) -> str:
    """What the run reached: best Dice per member stage, the ensemble's OOF Dice, and the
    submission's score where the test truth is known (the synthetic data ships it).

    ``since``: the run's start (``time.time()``). An output older than that was not written by
    this run (its step failed or was skipped): it is named as stale, never reported as a result.
    """
    import pandas as pd
    import yaml

    run = Path(run_dir)
    lines: list[str] = []
    stale: list[Path] = []

    def fresh(path: Path) -> bool:
        ok = since is None or path.stat().st_mtime >= since - 1.0  # coarse file clocks
        if not ok:
            stale.append(path)
        return ok

    tables = [pd.read_csv(p) for p in sorted(run.glob("**/stages.csv")) if fresh(p)]
    if tables:
        stages = pd.concat(tables)[["member", "stage_name", "best_dice", "time_s"]]
        lines.append("validation Dice (held-out cars, full resolution):")
        lines.append(stages.to_string(index=False))
    if (run / "ensemble.yaml").is_file() and fresh(run / "ensemble.yaml"):
        spec = yaml.safe_load((run / "ensemble.yaml").read_text())
        submitted = (spec.get("scores") or {}).get("oof_dice_submitted")
        extra = f" (as 06 submits it: {submitted})" if submitted is not None else ""
        lines.append(f"ensemble OOF Dice: {spec.get('oof_dice')}{extra}")
    truth = Path(data_dir) / "test_masks.csv" if data_dir else None
    sub = run / "submission.csv.gz"
    if sub.is_file() and fresh(sub) and truth is not None and truth.is_file():
        from kaggle_utils.predict import score_submission

        scores = score_submission(sub, truth, shape=_image_shape(Path(data_dir)))
        lines.append(f"submission score on the synthetic test masks: {scores['dice'].mean():.5f}")
    for path in stale:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
        lines.append(f"not written by this run (left from {when}, not reported): {path}")
    return "\n".join(lines)


def _image_shape(data_dir: Path) -> tuple[int, int]:
    from kaggle_utils.layout import find_data
    from kaggle_utils.testset import image_shape

    data = find_data(data_dir)
    return image_shape(data.test, data.test.names()[0])


def ensure_synthetic(data_dir: str | os.PathLike, **options: Any) -> Path:
    """Generate the embedded default dataset (the generator skips a complete, identical set)."""
    from kaggle_utils.synthetic import generate

    print(f">> synthetic Carvana data in {data_dir}", flush=True)
    return generate(data_dir, verbose=True, **options)


def stage_up(
    member_file: str | os.PathLike,
    *,
    fold: int | None = None,
    data_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike = "runs/demo",
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    notebook: str = "03_train_member.ipynb",
) -> Any:
    """Run 03 through papermill for each stage of a member, in order, each stage initialised from
    the previous stage's best.pt; finished stages are skipped. Returns (and writes
    `<run_dir>/<member>/stages.csv` and `stages.png`) one row per stage.

    The executed 03 notebook of each stage is kept beside its outputs. A failing stage raises
    `notebook.NotebookExecutionError` naming the cell; later stages are not run.
    """
    import json

    import pandas as pd

    from kaggle_utils import plots
    from kaggle_utils.atomic import atomic_write_text
    from kaggle_utils.config import load_member
    from kaggle_utils.environment import project_path, resolve_run_dir
    from kaggle_utils.notebook import REPO_NOTEBOOKS, execute_notebook
    from kaggle_utils.runs import stage_dir_for, stage_hash, stage_status

    member_path = project_path(member_file).resolve()
    member = load_member(member_path, overrides)
    fold = member.fold if fold is None else int(fold)
    run_path = resolve_run_dir(run_dir).resolve()
    rows: list[dict[str, Any]] = []
    init: Path | None = None
    for i in range(len(member.stages)):
        stage_dir = stage_dir_for(run_path, member, i, fold)
        status = stage_status(stage_dir, stage_hash(member, i, fold))
        started = time.perf_counter()
        if status == "finished":
            print(f"[skip] {member.name} {member.stage_name(i)}: finished", flush=True)
        else:
            print(
                f"[run ] {member.name} {member.stage_name(i)} ({status}) -> {stage_dir}", flush=True
            )
            execute_notebook(
                notebook,
                stage_dir / Path(notebook).name,
                {
                    "member_file": str(member_path),
                    "stage": i,
                    "fold": fold,
                    "data_dir": str(project_path(data_dir).resolve()) if data_dir else None,
                    "run_dir": str(run_path),
                    "init_checkpoint": str(init) if init else None,
                    "device": device,
                    "overrides": dict(overrides or {}),
                },
                cwd=REPO_NOTEBOOKS.parent if REPO_NOTEBOOKS.is_dir() else None,
            )
        metrics = json.loads((stage_dir / "metrics.json").read_text())
        rows.append(
            {
                "member": member.name,
                "stage": i,
                "stage_name": member.stage_name(i),
                "size": "x".join(str(s) for s in member.stages[i].size),
                "epochs": member.stages[i].epochs,
                "best_dice": metrics["best_dice"],
                "best_epoch": metrics["best_epoch"],
                "time_s": metrics["time_s"],
                "images_per_s": metrics["images_per_s"],
                "status": "skipped" if status == "finished" else "trained",
                "wall_s": round(time.perf_counter() - started, 1),
                "checkpoint": str(stage_dir / "best.pt"),
            }
        )
        init = stage_dir / "best.pt"
    table = pd.DataFrame(rows)
    member_dir = stage_dir_for(run_path, member, 0, fold).parent
    atomic_write_text(member_dir / "stages.csv", table.to_csv(index=False))
    plots.save_figure(
        plots.stage_dice(table, title=f"{member.name}: Dice per stage"), member_dir / "stages.png"
    )
    return table


STEP_HELP = {
    "01": "EDA of the competition files (once)",
    "02": "folds grouped by car -> <run_dir>/folds.csv (once)",
    "04": "stage-up, per member and fold: 03_train_member once per stage, each from the "
    "previous stage's best.pt; finished stages are skipped",
    "05": "ensemble: OOF-tuned weights and threshold -> <run_dir>/ensemble.yaml",
    "06": "submit: test predictions -> <run_dir>/submission.csv.gz",
}

EXAMPLES = """\
examples:
  # what `make demo` runs: generate the synthetic data, then every step
  python -m kaggle_utils.pipeline params/demo/ensemble.yaml --data-dir data/synthetic \\
      --run-dir runs/demo --make-synthetic
  # the same plan, and which stages are finished / would resume / are new; writes nothing
  kaggle-utils-pipeline params/demo/ensemble.yaml --make-synthetic --dry-run
  # train the members only (step 04); the other steps are not run
  kaggle-utils-pipeline params/demo/ensemble.yaml --only 04
  # two members at a time (one GPU each when several are visible)
  kaggle-utils-pipeline params/carvana/ensemble.yaml --data-dir data/carvana --jobs 2
"""


class UsageError(Exception):
    """A mistake in the command line or the files it names: one line, exit status 2."""


def _help_epilog() -> str:
    """The steps, generated from STEPS so the help cannot drift from what runs."""
    lines = ["steps (in order; --only and --from select them):"]
    for step in STEPS:
        head = f"  {step.key}  {step.notebook:<19} "
        text = textwrap.wrap(STEP_HELP[step.key], 96 - len(head))
        lines += [head + text[0], *(" " * len(head) + t for t in text[1:])]
    lines.append("  (03_train_member has no step of its own: 04 runs it once per stage)")
    return "\n".join(lines) + "\n\n" + EXAMPLES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaggle-utils-pipeline",
        usage="%(prog)s params/<set>/ensemble.yaml [options]",
        description=(
            "Run the numbered notebooks with papermill for one ensemble parameter file "
            "(params/<set>/ensemble.yaml, which lists its member files beside it)."
        ),
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "ensemble", metavar="params/<set>/ensemble.yaml", help="the ensemble parameter file"
    )
    parser.add_argument(
        "--data-dir", help="competition files, a folder or Kaggle's zips (default: its data_dir)"
    )
    parser.add_argument("--run-dir", help="where results go (default: the ensemble's run_dir)")
    parser.add_argument(
        "--only", help=f"comma-separated steps to run, e.g. 04 or 01,02 ({', '.join(STEP_HELP)})"
    )
    parser.add_argument("--from", dest="start", help="start at this step, e.g. 04")
    parser.add_argument(
        "--jobs", type=int, default=1, help="members trained in parallel in step 04 (default 1)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the notebooks' own)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and each stage's state (finished, resume, new); run nothing",
    )
    parser.add_argument(
        "--make-synthetic",
        action="store_true",
        help="generate the synthetic dataset into --data-dir first when it is not there",
    )
    return parser


def _last_pt_state(last_pt: Path, params_hash: str, epochs: int) -> str:
    """What 03 will make of a last.pt: resume at its epoch, or start afresh (other parameters)."""
    import torch

    from kaggle_utils.engine.state import STATE_FORMAT

    try:
        ckpt = torch.load(last_pt, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # truncated or foreign file: 03 refuses it the same way
        return f"last.pt unreadable ({type(exc).__name__}): delete it to start afresh"
    state = ckpt.get("state") if isinstance(ckpt, dict) else None
    if ckpt.get("params_hash") != params_hash or not isinstance(state, dict):
        return "new (last.pt was written with other parameters: starts afresh)"
    if state.get("format") != STATE_FORMAT:
        return "new (last.pt holds no training state: starts afresh)"
    return f"resume from epoch {int(state['epoch'])}/{epochs}"


def _stage_state(stage_dir: Path, params_hash: str, epochs: int) -> str:
    from kaggle_utils.runs import stage_status

    status = stage_status(stage_dir, params_hash)
    if status == "finished":
        return "finished (skipped)"
    if status == "resume":
        return _last_pt_state(stage_dir / "last.pt", params_hash, epochs)
    if (stage_dir / "metrics.json").exists():
        return "new (finished with other parameters: trained again)"
    return "new"


def stage_report(ensemble_file: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """Every member, fold and stage of an ensemble with what 04 would do to it in `run_dir`:
    skip it (finished), resume it from last.pt, or train it from the start. Reads only."""
    from kaggle_utils.config import load_ensemble, load_member
    from kaggle_utils.runs import stage_dir_for, stage_hash

    ensemble_path = Path(ensemble_file).resolve()
    ens = load_ensemble(ensemble_path)
    lines = [f"stages in {run_dir}:"]
    for member_file in ens.member_paths(ensemble_path):
        member = load_member(member_file)
        for fold in ens.folds:
            for i, stage in enumerate(member.stages):
                stage_dir = stage_dir_for(run_dir, member, i, fold)
                state = _stage_state(stage_dir, stage_hash(member, i, fold), stage.epochs)
                where = f"{member.name} fold {fold} {member.stage_name(i)}"
                lines.append(f"    {where:<44} {state}")
    return "\n".join(lines)


def _check_data_dir(plan: Plan, ensemble_file: str, given: str | None, generate: bool) -> str:
    """The data folder must exist before anything runs, unless --make-synthetic will make it."""
    if plan.data_dir is None:
        return "data: the notebooks' default (the Kaggle competition mount)"
    if Path(plan.data_dir).exists():
        return f"data: {plan.data_dir}"
    if generate:
        return f"data: {plan.data_dir} (missing: --make-synthetic generates it first)"
    source = "--data-dir" if given else f"data_dir in {ensemble_file}"
    raise UsageError(
        f"data folder not found: {plan.data_dir} ({source}); pass --data-dir with the "
        "competition files, or --make-synthetic to generate the synthetic set there"
    )


def _one_line(message: str) -> str:
    """A config message of one problem ("file: invalid parameters:\\n  key ...") on one line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return " ".join(lines) if len(lines) <= 2 else message.strip()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a user's mistake (file, key, folder) prints one message and exits 2."""
    from kaggle_utils.config import ConfigError

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except (UsageError, ConfigError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr, flush=True)
        return 2


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    n_gpus = 0 if args.dry_run else gpu_count()
    plan = build_plan(
        args.ensemble,
        data_dir=args.data_dir,
        run_dir=args.run_dir,
        only=only,
        start=args.start,
        device=args.device,
        n_gpus=n_gpus if args.jobs > 1 else 0,
    )
    data_line = _check_data_dir(plan, args.ensemble, args.data_dir, args.make_synthetic)
    if args.dry_run:
        print(plan.describe())
        print(data_line)
        if any(job.step.per_member for job in plan.jobs):
            print(stage_report(args.ensemble, plan.run_dir))
        return 0
    if args.make_synthetic:
        from kaggle_utils.config import load_ensemble

        ens = load_ensemble(args.ensemble)
        if not plan.data_dir:
            parser.error("--make-synthetic needs --data-dir (or data_dir in the ensemble file)")
        ensure_synthetic(plan.data_dir, **(ens.synthetic or {}))
    started, since = time.perf_counter(), time.time()
    results = run_plan(plan, jobs=max(1, args.jobs))
    failed = [r for r in results if not r.ok]
    print(
        f">> {len(results) - len(failed)}/{len(results)} notebook runs succeeded "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    for r in failed:
        print(f"   FAILED {r.label}: {r.error}", flush=True)
    summary = summarize(plan.run_dir, plan.data_dir, since=since)
    if summary:
        from kaggle_utils.atomic import atomic_write_text

        print(summary, flush=True)
        atomic_write_text(plan.run_dir / "summary.txt", summary + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
