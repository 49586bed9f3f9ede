"""The pipeline's executors by name: the local process pool, or a Ray cluster that runs each job
(member, shard, step) as a Ray task, so the same plan spreads over several GPU machines.

Ray is imported only here, and only when `--executor ray` is asked: the pipeline works without it.
The tasks write where the plan says (absolute paths under the run folder), so every node must see
the run folder, the data and the notebooks at the same paths: a shared filesystem, or one machine.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from kaggle_utils.pipeline.plan import Job, JobResult
from kaggle_utils.pipeline.run import Executor, LocalExecutor, run_job

EXECUTORS = ("local", "ray")
RAY_INSTALL = 'pip install "kaggle-utils[ray]" (or pip install "ray>=2.30")'
# training (04 runs 03 per stage), 05's re-prediction of validation images and 06's test prediction
# want a GPU; 01 (EDA) and 02 (split) do not
GPU_STEPS = ("04", "05", "06")


class ExecutorError(Exception):
    """The executor cannot start (Ray missing, cluster unreachable, run folder not shared)."""


def import_ray() -> Any:
    """Ray, or one line saying which extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(
            f"--executor ray needs Ray, which is not installed here: {RAY_INSTALL}"
        ) from exc
    return ray


def _ray_job(job: Job, notebook_dir: str) -> JobResult:
    """The Ray task: the same run_job as the pool's. Ray sets CUDA_VISIBLE_DEVICES to the GPU it
    gave the task; a task given none sees none (said here, as Ray's default is to change), so a CPU
    job never lands on a GPU that another task holds."""
    import ray

    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return run_job(job, notebook_dir)


def _sees(paths: list[str]) -> list[str]:
    """The paths this node cannot see (runs on each node before any job)."""
    return [p for p in paths if not Path(p).exists()]


def _one_line(exc: BaseException) -> str:
    """A task's error on one line: a RayTaskError's cause, else Ray's own message."""
    cause = getattr(exc, "cause", None) or exc
    text = " ".join(str(cause).split()) or "no message"
    if isinstance(cause, ModuleNotFoundError):
        text += " (install kaggle-utils into the Python that runs the Ray workers on every node)"
    return f"{type(cause).__name__}: {text}"


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A host:port address answers on TCP, or one line now: Ray itself waits on a head that is
    not there for ever, printing a warning every few seconds."""
    if not address or address == "auto":
        return  # Ray's own search for a local cluster fails fast with its message
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"--address {address!r} is not host:port, e.g. 10.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(
            f"no Ray head answers at {address} (--address): {exc.strerror or exc}; start one with "
            f"`ray start --head --port {port}` there, or pass the address it printed"
        ) from exc


class RayExecutor:
    """Each job a Ray task with `num_gpus` from its step and `max_retries` for a worker or node
    that dies; a job that still fails comes back as a failed result, and the others go on."""

    def __init__(self, address: str | None = None, max_retries: int = 2) -> None:
        ray = import_ray()
        self.ray, self.max_retries, self.address = ray, max_retries, address
        self._owns = not ray.is_initialized()
        if self._owns:
            _check_reachable(address)
            try:
                with warnings.catch_warnings():  # Ray's tip on that default, once per driver
                    warnings.filterwarnings("ignore", "Tip: In future versions of Ray")
                    ray.init(address=address, logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"at {address} (--address)" if address else "(no --address given)"
                raise ExecutorError(
                    f"cannot reach the Ray cluster {where}: {' '.join(str(exc).split())}; start "
                    "it with `ray start --head` and pass its address, e.g. --address 10.0.0.1:6379"
                ) from exc
        self.cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        self._task = ray.remote(_ray_job)

    def num_gpus(self, job: Job) -> float:
        """1 GPU for a training, ensemble or submit job when the cluster has GPUs (0 on a CPU
        cluster, or when the job is told --device cpu)."""
        wants = job.step.key in GPU_STEPS and job.parameters.get("device") != "cpu"
        return 1.0 if wants and self.cluster_gpus >= 1 else 0.0

    def check_shared(self, run_dir: Path, *paths: str | Path | None) -> None:
        """Every alive node sees `paths` and a probe file written in the run folder, or one line
        naming the node and the path: the run folder must be shared (or the cluster one machine)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".ray_probe_{uuid.uuid4().hex}"
        probe.write_text("the run folder, as a Ray node sees it\n")
        wanted = [str(probe), *(str(p) for p in paths if p)]
        sees = self.ray.remote(num_cpus=0)(_sees)
        try:
            nodes = [n for n in self.ray.nodes() if n.get("Alive")]
            refs = {
                sees.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                ).remote(wanted): n
                for n in nodes
            }
            for ref, node in refs.items():
                missing = self.ray.get(ref)
                if missing:
                    raise ExecutorError(
                        f"Ray node {node.get('NodeManagerAddress')} does not see {missing[0]}: "
                        "the run folder, data and notebooks must be on a filesystem every node "
                        "mounts at the same path (or run on one machine)"
                    )
        finally:
            probe.unlink(missing_ok=True)

    def run(self, batch: list[Job], notebook_dir: Path) -> Iterator[JobResult]:
        started: dict[Any, tuple[Job, float]] = {}
        for job in batch:
            ref = self._task.options(
                num_gpus=self.num_gpus(job),
                max_retries=self.max_retries,
                retry_exceptions=False,  # a failing notebook is a result, not worth a retry
                name=job.label,
            ).remote(replace(job, gpu=None), str(notebook_dir))  # Ray assigns the GPU
            started[ref] = (job, time.perf_counter())
        pending = list(started)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            job, t0 = started[done[0]]
            try:
                yield self.ray.get(done[0])
            except self.ray.exceptions.RayError as exc:  # worker or node died, retries used up
                error = f"Ray task failed after {self.max_retries} retries: {_one_line(exc)}"
                yield JobResult(job.label, False, time.perf_counter() - t0, error, str(job.output))

    def close(self) -> None:
        """Disconnect (and stop the local cluster Ray started for us, if it did)."""
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


def make_executor(
    name: str, *, jobs: int = 1, address: str | None = None, max_retries: int = 2
) -> Executor:
    """The executor the command line names: `local` (the process pool) or `ray`."""
    if name == "local":
        return LocalExecutor(jobs)
    if name == "ray":
        return RayExecutor(address, max_retries)
    raise ExecutorError(f"unknown executor {name!r}: choose from {', '.join(EXECUTORS)}")
