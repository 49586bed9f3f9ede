"""Train one stage of one ensemble member: the entry points 03, scripts and torchrun call.

    run = prepare_stage(member_file, stage, ...)   validated, split by car, nothing written yet
    metrics = fit_stage(run)                       in-process on one device; through torchrun
                                                   as a subprocess on several
    python -m kaggle_utils.train MEMBER.yaml --stage N [--devices 2] [--num-nodes 2 ...]

The engine itself (Lightning Fabric under our loop with callbacks) lives in `kaggle_utils.engine`.
A NaN/inf loss raises `NonFiniteLossError` at once and keeps the last good last.pt; a kill at any
moment leaves whole files only, and re-running continues from last.pt.
"""

from __future__ import annotations

import os

# CPU training on a few shared cores: OpenMP threads that spin while waiting collapse throughput
# when other processes compete for the cores (measured here: 0.7 -> 3.4 images/s). Only effective
# when set before torch is first imported; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from kaggle_utils.config import load_member  # noqa: E402
from kaggle_utils.engine import (  # noqa: E402
    LossHook,
    NonFiniteLossError,
    StageRun,
    build_stage_model,
    prepare_stage,
    train_stage,
)
from kaggle_utils.engine.launch import run_stage_ddp  # noqa: E402
from kaggle_utils.engine.training import distributed_env  # noqa: E402
from kaggle_utils.runs import restore_stage, stage_dir_for  # noqa: E402

__all__ = [
    "NonFiniteLossError",
    "StageRun",
    "build_stage_model",
    "fit_stage",
    "prepare_stage",
    "previous_stage_checkpoint",
    "run_stage",
    "train_stage",
]


def fit_stage(
    run: StageRun,
    model: torch.nn.Module | None = None,
    *,
    progress: bool = True,
    loss_hook: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train the prepared stage: in this process on one device, under torchrun on several.

    Args:
        run: from `prepare_stage`.
        model: the network (one device only; default `build_stage_model(run)`).
        progress: a tqdm bar per epoch.
        loss_hook: `fn(loss, epoch, step)` replacing the loss (tests inject NaN with it).
    """
    _, world = distributed_env()
    if world == 1:  # the next Kaggle session: last session's stage from the attached output
        restore_stage(run.stage_dir)
    if run.world_size > 1 and world == 1:  # not launched by torchrun yet: launch it
        return run_stage_ddp(
            run.member_file,
            run.stage,
            devices=run.devices,
            num_nodes=run.num_nodes,
            stage_dir=run.stage_dir,
            fold=run.fold,
            data_dir=getattr(run.data, "root", None),
            run_dir=run.run_dir,
            init_checkpoint=run.init_checkpoint,
            device=run.device.type,
            overrides=run.overrides,
            progress=progress,
            time_budget_s=run.time_budget_s,
        )
    extra = [LossHook(loss_hook)] if loss_hook is not None else []
    return train_stage(run, model, progress=progress, extra_callbacks=extra)


def run_stage(member_file: str | os.PathLike, stage: int = 0, **kwargs: Any) -> dict[str, Any]:
    """prepare_stage + fit_stage in one call (scripts and tests)."""
    progress = kwargs.pop("progress", True)
    loss_hook = kwargs.pop("loss_hook", None)
    run = prepare_stage(member_file, stage, **kwargs)
    if distributed_env()[0] == 0:
        print(run.describe(), flush=True)
    return fit_stage(run, progress=progress, loss_hook=loss_hook)


def previous_stage_checkpoint(
    member_file: str | os.PathLike,
    stage: int,
    fold: int | None = None,
    run_dir: str | os.PathLike = "runs/demo",
    overrides: dict[str, Any] | None = None,
) -> Path:
    """best.pt of stage ``stage - 1`` under run_dir: where the curriculum's next stage starts."""
    from kaggle_utils.environment import resolve_run_dir

    member = load_member(member_file, overrides)
    fold = member.fold if fold is None else int(fold)
    prev = stage_dir_for(resolve_run_dir(run_dir), member, stage - 1, fold) / "best.pt"
    if not prev.is_file():
        raise FileNotFoundError(
            f"stage {stage} of {member_file} starts from stage {stage - 1}'s weights, but "
            f"{prev.resolve()} does not exist: run that stage first, or pass --init-checkpoint "
            "PATH (or 'none')"
        )
    return prev


def _parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m kaggle_utils.train",
        description="Train one stage of one member without a notebook (torchrun runs this too).",
    )
    parser.add_argument("member_file")
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--fold", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument(
        "--init-checkpoint",
        help="weights to start from; default for --stage N > 0: stage N-1's best.pt "
        "(as 04_stage_up does); 'none' starts from scratch",
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:K (default: CUDA when present)")
    parser.add_argument("--devices", type=int, help="processes (GPUs) on this machine")
    parser.add_argument("--num-nodes", type=int, help="machines in the job")
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's index")
    parser.add_argument("--master-addr", default="127.0.0.1", help="node 0's address")
    parser.add_argument("--master-port", type=int, help="node 0's port (every node the same)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set optimizer.lr=1e-3 --set stages.0.epochs=2",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="stop cleanly (paused.json, to be continued) when the next epoch would pass this "
        "many seconds of the session; default 11 h 30 min on Kaggle, none elsewhere",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m kaggle_utils.train MEMBER.yaml [--stage N ...]`: one stage without a notebook.

    A user's error (a bad member file, a missing input, a stage folder another run holds) is one
    line on stderr and exit code 2; anything else keeps its traceback."""
    import sys

    from kaggle_utils.config import ConfigError
    from kaggle_utils.locks import LockHeldError

    try:
        return _main(argv)
    except (ConfigError, FileNotFoundError, LockHeldError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    init = args.init_checkpoint
    if init is None and args.stage > 0:
        try:
            init = previous_stage_checkpoint(
                args.member_file, args.stage, args.fold, args.run_dir, overrides
            )
        except FileNotFoundError as exc:
            parser.error(str(exc))
    elif init is not None and init.lower() == "none":
        init = None
    options = {
        "fold": args.fold,
        "data_dir": args.data_dir,
        "run_dir": args.run_dir,
        "init_checkpoint": init,
        "device": args.device,
        "overrides": overrides,
        "progress": not args.no_progress,
        "time_budget_s": args.time_budget,
    }
    world = (args.devices or 1) * (args.num_nodes or 1)
    if world > 1 and distributed_env()[1] == 1 and (args.num_nodes or 1) > 1:
        run_stage_ddp(  # one machine of several: torchrun with this node's rank
            args.member_file,
            args.stage,
            devices=args.devices or 1,
            num_nodes=args.num_nodes,
            node_rank=args.node_rank,
            master_addr=args.master_addr,
            master_port=args.master_port,
            **options,
        )
        return 0
    metrics = run_stage(
        args.member_file, args.stage, devices=args.devices, num_nodes=args.num_nodes, **options
    )
    if distributed_env()[0] == 0 and not metrics.get("paused"):
        print(f"best Dice {metrics['best_dice']:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
