"""Several devices from a notebook or a script: the stage runs under torchrun as a subprocess.

Fork-based DDP inside a Jupyter kernel is fragile once CUDA is initialised (Lightning's
`ddp_notebook` fails on Kaggle's 2xT4), so with devices x num_nodes > 1 the caller (03 under
papermill, a JupyterLab cell, a Kaggle kernel) starts `torchrun ... -m kaggle_utils.train` and
streams its log into the cell; the stage's run folder is read afterwards. One device stays
in-process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["free_port", "run_stage_ddp", "torchrun_command"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a single machine's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_command(
    train_args: Sequence[str],
    devices: int,
    num_nodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
) -> list[str]:
    """`python -m torch.distributed.run ... -m kaggle_utils.train TRAIN_ARGS` for one machine.

    Args:
        train_args: the arguments of `python -m kaggle_utils.train` (member file, --stage, ...).
        devices: processes on this machine (one per GPU).
        num_nodes, node_rank: machines in the job and this one's index (0 holds the rendezvous).
        master_addr, master_port: where node 0 listens; every node passes the same.
    """
    port = master_port or free_port()
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={devices}",
        f"--nnodes={num_nodes}",
        f"--node-rank={node_rank}",
        f"--master-addr={master_addr}",
        f"--master-port={port}",
        "-m",
        "kaggle_utils.train",
        *train_args,
        f"--devices={devices}",
        f"--num-nodes={num_nodes}",
    ]


def run_stage_ddp(
    member_file: str | os.PathLike,
    stage: int = 0,
    *,
    devices: int,
    num_nodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    stage_dir: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run one stage under torchrun, streaming its output; returns its metrics.json (node 0).

    Args:
        member_file, stage: as `train.run_stage`.
        devices, num_nodes, node_rank, master_addr, master_port: as `torchrun_command`.
        stage_dir: where metrics.json is read after the run (node 0 writes it).
        env: extra environment variables for the processes.
        options: fold, data_dir, run_dir, init_checkpoint, device, overrides, progress,
            time_budget_s.
    """
    args = _train_args(member_file, stage, options)
    cmd = torchrun_command(args, devices, num_nodes, node_rank, master_addr, master_port)
    print("$ " + " ".join(cmd), flush=True)
    process = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    assert process.stdout is not None
    for line in process.stdout:  # into the notebook cell as it comes
        print(line, end="", flush=True)
    code = process.wait()
    if code != 0:
        raise RuntimeError(
            f"torchrun stage {stage} of {member_file} exited with {code}; its log is above"
        )
    if stage_dir is None or node_rank != 0:
        return {}
    paused = Path(stage_dir) / "paused.json"  # stopped at a time budget: to be continued
    done = Path(stage_dir) / "metrics.json"
    return json.loads((done if done.is_file() or not paused.is_file() else paused).read_text())


def _train_args(member_file: Any, stage: int, options: dict[str, Any]) -> list[str]:
    args = [str(member_file), f"--stage={stage}"]
    init = options.get("init_checkpoint")
    args.append(f"--init-checkpoint={init or 'none'}")
    for key in ("fold", "data_dir", "run_dir", "device"):
        if options.get(key) is not None:
            args.append(f"--{key.replace('_', '-')}={options[key]}")
    for key, value in (options.get("overrides") or {}).items():
        args.append(f"--set={key}={json.dumps(value) if not isinstance(value, str) else value}")
    if not options.get("progress", True):
        args.append("--no-progress")
    if options.get("time_budget_s") is not None:
        args.append(f"--time-budget={options['time_budget_s']}")
    return args
