"""The `kaggle-utils-pipeline` / `python -m kaggle_utils.pipeline` command line."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaggle_utils.pipeline.plan import NOTEBOOK_DIR, STEPS, Plan, build_plan, gpu_count
from kaggle_utils.pipeline.report import stage_report, summarize
from kaggle_utils.pipeline.run import Executor, run_plan


def ensure_synthetic(data_dir: str | os.PathLike, **options: Any) -> Path:
    """Generate the embedded default dataset (the generator skips a complete, identical set)."""
    from kaggle_utils.synthetic import generate

    print(f">> synthetic Carvana data in {data_dir}", flush=True)
    return generate(data_dir, verbose=True, **options)


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
  # on a Ray cluster (pip install "kaggle-utils[ray]"; the run folder on a shared filesystem)
  kaggle-utils-pipeline params/carvana/ensemble.yaml --data-dir /shared/carvana \\
      --run-dir /shared/runs/carvana --executor ray --address 10.0.0.1:6379
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
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where jobs run: local processes (default), or a Ray cluster, one task per job "
        "(members, shards; a GPU each for 04, 05 and 06 when the cluster has GPUs). The run folder, "
        "data and notebooks must be on a filesystem every Ray node shares (or one machine)",
    )
    parser.add_argument(
        "--address",
        help="the Ray cluster's head, e.g. 10.0.0.1:6379 (default: RAY_ADDRESS, else a running "
        "local cluster, else a new one on this machine)",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=2,
        help="with --executor ray: reruns of a job whose worker or node died (default 2)",
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
        n_gpus=n_gpus if args.jobs > 1 and args.executor == "local" else 0,  # Ray assigns GPUs
    )
    data_line = _check_data_dir(plan, args.ensemble, args.data_dir, args.make_synthetic)
    if args.dry_run:
        print(plan.describe())
        print(data_line)
        if any(job.step.per_member for job in plan.jobs):
            print(stage_report(args.ensemble, plan.run_dir))
        return 0
    executor = _executor(args, plan)  # Ray: connected and checked before anything is written
    if args.make_synthetic:
        from kaggle_utils.config import load_ensemble

        ens = load_ensemble(args.ensemble)
        if not plan.data_dir:
            parser.error("--make-synthetic needs --data-dir (or data_dir in the ensemble file)")
        ensure_synthetic(plan.data_dir, **(ens.synthetic or {}))
    started, since = time.perf_counter(), time.time()
    try:
        results = run_plan(plan, executor=executor)
    finally:
        executor.close()
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


def _executor(args: argparse.Namespace, plan: Plan) -> Executor:
    """The executor, started and checked (Ray: reachable, the run folder shared) before any work."""
    from kaggle_utils.pipeline.executors import ExecutorError, RayExecutor, make_executor

    if args.executor != "ray" and (args.address or args.max_retries != 2):
        raise UsageError("--address and --max-retries go with --executor ray")
    try:
        executor = make_executor(
            args.executor,
            jobs=max(1, args.jobs),
            address=args.address,
            max_retries=args.max_retries,
        )
        if isinstance(executor, RayExecutor):
            data = plan.data_dir if plan.data_dir and Path(plan.data_dir).exists() else None
            try:
                executor.check_shared(plan.run_dir, NOTEBOOK_DIR, data)
            except BaseException:
                executor.close()
                raise
    except ExecutorError as exc:
        raise UsageError(str(exc)) from exc
    return executor
