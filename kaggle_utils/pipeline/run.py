"""Running a plan: each notebook through papermill, a step's member jobs on an executor (the local
process pool here; a Ray cluster in `executors`)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Protocol

from kaggle_utils.pipeline.plan import NOTEBOOK_DIR, Job, JobResult, Plan


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


class Executor(Protocol):
    """Where a step's jobs run: `run` yields each job's result as it finishes, a failure included
    (a crashed job is a failed result, never an exception that stops the others)."""

    def run(self, batch: list[Job], notebook_dir: Path) -> Iterator[JobResult]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """The default: this machine, `jobs` notebooks at a time in spawned processes."""

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, jobs)

    def run(self, batch: list[Job], notebook_dir: Path) -> Iterator[JobResult]:
        if self.jobs == 1 or len(batch) == 1:
            for job in batch:
                yield run_job(job, notebook_dir)
            return
        with ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_job, job, notebook_dir): job for job in batch}
            for future in as_completed(futures):
                try:
                    yield future.result()
                except Exception as exc:  # the worker process died (killed, out of memory)
                    job = futures[future]
                    yield JobResult(job.label, False, 0.0, _crash(exc), str(job.output))

    def close(self) -> None:
        """Nothing to release: each step's pool is closed when the step ends."""


def _crash(exc: BaseException) -> str:
    """A job that never returned a result: what happened, on one line."""
    text = " ".join(str(exc).split()) or "no message"
    return f"the process running it died: {type(exc).__name__}: {text}"


def run_plan(
    plan: Plan,
    jobs: int = 1,
    notebook_dir: Path = NOTEBOOK_DIR,
    executor: Executor | None = None,
) -> list[JobResult]:
    """Run in order; a step's member jobs go to `executor` together (default: the local process
    pool, `jobs` at a time), so a step starts only once the one before it has finished."""
    executor = executor or LocalExecutor(jobs)
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
        for result in executor.run(batch, notebook_dir):
            results.append(result)
            _report(result)
        if step.key in ("01", "02") and not results[-1].ok:
            print(f"[stop  ] {step.notebook} failed: later steps need it", flush=True)
            break
    return results
