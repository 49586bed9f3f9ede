"""`train_stage`: build the Fabric, data, model, optimizer and callbacks of a stage, then fit.

What every stage leaves in `<run_dir>/<member>/<stage>/` (the run-folder contract 04, 05, 06 and
the Kaggle kernels read): params.json, history.csv, last.pt, best.pt, oof/, oof.csv, curves.png,
worst.png, metrics.json, logs/ (Fabric's CSV logger; TensorBoard when installed); snapshots/ and
swa.pt when the member asks for them (engine.snapshots, engine.swa).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from kaggle_utils.atomic import atomic_write_json
from kaggle_utils.corrections import corrections_record
from kaggle_utils.engine import artefacts, callbacks, snapshots, swa
from kaggle_utils.engine.loop import Engine, FitPlan, seed_everything
from kaggle_utils.engine.sampler import GlobalBatchSampler
from kaggle_utils.engine.stage import StageRun, build_stage_model
from kaggle_utils.engine.state import STATE_FORMAT, TrainState
from kaggle_utils.engine.timelimit import TimeLimit, session_deadline
from kaggle_utils.engine.validation import Validator
from kaggle_utils.locks import stage_lock

__all__ = ["distributed_env", "train_stage", "with_sync_batchnorm"]


def distributed_env() -> tuple[int, int]:
    """(rank, world size) as torchrun set them for this process; (0, 1) when not launched so."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def train_stage(
    run: StageRun,
    model: torch.nn.Module | None = None,
    *,
    progress: bool = True,
    extra_callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train (or resume, or skip) the stage and return its metrics.json content.

    Args:
        run: from `prepare_stage`.
        model: the network to train (default: `build_stage_model(run)`).
        progress: a tqdm bar per epoch.
        extra_callbacks: run before the built-in ones at every hook (e.g. `callbacks.LossHook`).
    """
    rank, world = distributed_env()
    _check_launch(run, world)
    # One writer per stage folder: a second run fails here, before any write, naming the first
    # (rank 0 holds the lock for the whole fit; the other ranks write nothing there). A finished
    # stage is judged under the lock too: a run holding it may be overwriting its checkpoints.
    with stage_lock(run.stage_dir) if rank == 0 else contextlib.nullcontext():
        if run.status() == "finished":
            metrics = json.loads((run.stage_dir / "metrics.json").read_text())
            print(
                f"stage {run.stage_name} already finished (best Dice "
                f"{metrics['best_dice']:.5f}); skipped"
            )
            return {**metrics, "skipped": True}
        return _fit_stage(run, rank, world, model, progress, extra_callbacks)


def _fit_stage(
    run: StageRun,
    rank: int,
    world: int,
    model: torch.nn.Module | None,
    progress: bool,
    extra_callbacks: Sequence[Any],
) -> dict[str, Any]:
    """Write params.json, build the stage and fit it (the caller holds the stage's lock)."""
    if rank == 0:
        atomic_write_json(run.stage_dir / "params.json", _params_record(run))
    if run.device.type == "cpu":
        from kaggle_utils.allocator import keep_freed_memory

        keep_freed_memory()  # no page faults through every activation each step
    setup = _StageSetup(run, rank, world)
    seed_everything(run.member.seed)
    model = model if model is not None else build_stage_model(run)
    engine = setup.engine(model, progress, extra_callbacks)
    engine.fit()
    if rank == 0 and engine.metrics.get("paused"):
        print(
            f"{run.member.name} {run.stage_name}: paused after epoch {engine.state.epoch}/"
            f"{engine.plan.epochs} ({engine.stop_reason}); last.pt and paused.json are in "
            f"{run.stage_dir}: run the stage again (the next session) to continue",
            flush=True,
        )
    elif rank == 0:
        print(
            f"{run.member.name} {run.stage_name}: best val Dice {engine.metrics['best_dice']:.5f} "
            f"(epoch {engine.state.best_epoch}, {setup.masks.label}) in "
            f"{engine.state.elapsed_s:.0f} s -> {run.stage_dir}",
            flush=True,
        )
    return engine.metrics


def _check_launch(run: StageRun, world: int) -> None:
    if world != run.world_size:
        raise RuntimeError(
            f"{run.member_file}: {run.devices} device(s) x {run.num_nodes} node(s) asked for, but "
            f"this process was launched as 1 of {world}. Several devices run through torchrun: "
            "`python -m kaggle_utils.train MEMBER --devices N` (or engine.launch.run_stage_ddp "
            "from a notebook) starts it."
        )


def _params_record(run: StageRun) -> dict[str, Any]:
    return {
        "member_file": str(run.member_file),
        "member": run.member.model_dump(mode="json"),
        "stage": run.stage,
        "stage_name": run.stage_name,
        "fold": run.fold,
        "overrides": run.overrides,
        "init_checkpoint": str(run.init_checkpoint) if run.init_checkpoint else None,
        "split": run.split_source,
        "params_hash": run.params_hash,
        "val_ids": list(run.val_index["id"]),
        "devices": run.devices,
        "num_nodes": run.num_nodes,
        "time_budget_s": run.time_budget_s,
    }


class _StageSetup:
    """The pieces of one stage, built in order: precision, data, loaders, callbacks, engine."""

    def __init__(self, run: StageRun, rank: int, world: int):
        from kaggle_utils.precision import precision_for

        self.run, self.rank, self.world = run, rank, world
        member = run.member
        self.precision = precision_for(run.device, member.amp, member.cpu_bf16)
        if run.device.type == "cpu" and member.cpu_bf16 and self.precision == "32-true":
            print("cpu_bf16: this CPU has no bf16 units (AMX / AVX512-BF16): fp32", flush=True)
        # channels_last pays with AMP (CUDA tensor cores, CPU AMX), and costs in fp32 on the CPU
        auto_cl = run.device.type == "cuda" or self.precision != "32-true"
        cl = member.channels_last
        self.channels_last = auto_cl if cl == "auto" else bool(cl)
        if run.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self._build_data()

    def _build_data(self) -> None:
        from kaggle_utils.dataset import ValidationMasks, build_datasets

        run, member = self.run, self.run.member
        started = time.perf_counter()
        self.val_ids = [str(i) for i in run.val_index["id"]]
        my_val = run.val_index.iloc[self.rank :: self.world]
        self.train_ds, self.val_ds = build_datasets(
            run.data, member, run.train_index, my_val, run.size, member.stages[run.stage].crop
        )
        self.pseudo = None  # test images labelled by an ensemble: training set only
        pseudo_cfg = member.stages[run.stage].pseudo_labels
        if pseudo_cfg is not None:
            from kaggle_utils.pseudo import add_to_stage

            where = f"{run.member_file} stages[{run.stage}].pseudo_labels"
            self.pseudo = add_to_stage(
                self.train_ds, pseudo_cfg, run.run_dir, run.data, run.val_index, run.size,
                member.soft_masks, where, member.hq,
            )  # fmt: skip
        gf = member.guided_filter
        ids = self.val_ids if self.rank == 0 else [str(i) for i in my_val["id"]]
        self.masks = ValidationMasks(
            run.data, ids, member.val_full_res, run.size, gf.scale if gf else None, member.hq
        )
        if self.rank == 0:
            print(
                f"data ready in {time.perf_counter() - started:.1f} s (cache={member.cache}, "
                f"Dice at {self.masks.label})"
                + (f"; {len(self.pseudo.ids)} pseudo-labelled test images" if self.pseudo else ""),
                flush=True,
            )

    def loaders(self) -> tuple[DataLoader, DataLoader]:
        run, member = self.run, self.run.member
        batch = member.stage_batch_size(run.stage)
        sampler = GlobalBatchSampler(
            len(self.train_ds),
            batch,
            self.rank,
            self.world,
            member.seed,
            len(self.train_ds) > batch,
        )
        pin = run.device.type == "cuda"
        workers = member.num_workers
        train = DataLoader(
            self.train_ds, batch_sampler=sampler, num_workers=workers, pin_memory=pin
        )
        val = DataLoader(
            self.val_ds, batch_size=batch // self.world, num_workers=workers, pin_memory=pin
        )
        return train, val

    def meta(self) -> dict[str, Any]:
        run, member = self.run, self.run.member
        gf = member.guided_filter
        return {
            "member": member.name,
            "stage": run.stage,
            "stage_name": run.stage_name,
            "fold": run.fold,
            "params_hash": run.params_hash,
            "threshold": member.threshold,
            "largest_component": member.largest_component,
            "val_tta": member.val_tta,
            "guided_filter": gf.model_dump() if gf else None,
            "hq": member.hq,  # 05 and 06 read train_hq / test_hq for this checkpoint
        }

    def metrics_fields(self) -> dict[str, Any]:
        run, member = self.run, self.run.member
        amp = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}.get(self.precision, "fp32")
        return {
            **self.meta(),
            "size": list(run.size),
            "crop": list(crop) if (crop := member.stages[run.stage].crop) else None,
            "dice_resolution": self.masks.label,
            "epochs": member.stages[run.stage].epochs,
            "n_train": len(run.train_index),
            "n_val": len(run.val_index),
            "val_cars": int(run.val_index["car"].nunique()),
            "device": str(run.device),
            "precision": self.precision,
            "amp": amp,
            "channels_last": self.channels_last,
            "devices": run.devices,
            "num_nodes": run.num_nodes,
            "global_batch": member.stage_batch_size(run.stage) * member.accumulate,
            "best_checkpoint": str(run.stage_dir / "best.pt"),
            "split": run.split_source,
            "pseudo_labels": self.pseudo.record() if self.pseudo is not None else None,
            "corrected_masks": corrections_record(
                getattr(run.data, "corrections", None), run.train_index["id"], run.val_index["id"]
            ),
        }

    def callbacks(self, progress: bool, extra: Sequence[Any]) -> list[Any]:
        run, member = self.run, self.run.member
        stage_dir, best_pt = run.stage_dir, run.stage_dir / "best.pt"
        where = f"{run.member_file} stage {run.stage_name}"
        return [
            *extra,
            callbacks.NonFiniteLossGuard(where, stage_dir / "last.pt"),
            callbacks.EMAUpdate(),
            callbacks.ProgressBar(progress),
            artefacts.BestCheckpoint(best_pt, member.model.spec(), run.size, self.meta()),
            *self.averaging_callbacks(),  # before last.pt: a kill there redoes their epoch
            artefacts.LastCheckpoint(stage_dir, self.meta()),
            TimeLimit(session_deadline(run.time_budget_s)),  # after last.pt: it may stop here
            artefacts.PausedMarker(stage_dir, self.meta()),
            callbacks.EpochPrinter(),
            callbacks.FabricLoggers(),
            artefacts.OOFWriter(stage_dir, best_pt, run.val_index),
            artefacts.Figures(
                stage_dir, run.data, self.masks, member.threshold, f"{member.name} {run.stage_name}"
            ),
            artefacts.MetricsJson(stage_dir, self.metrics_fields()),
        ]

    def averaging_callbacks(self) -> list[Any]:
        """Snapshot checkpoints and SWA, when the member asks for them (engine.snapshots, .swa)."""
        from kaggle_utils.optim import cycle_end_epochs

        run, member = self.run, self.run.member
        spec, out = member.model.spec(), []
        epochs = member.stages[run.stage].epochs
        if member.snapshots is True:
            snaps = cycle_end_epochs(member, run.stage)
        else:
            snaps = [e for e in member.snapshots or [] if e <= epochs]
        if snaps:
            out.append(
                snapshots.SnapshotCheckpoints(
                    run.stage_dir, snaps, spec, run.size, self.meta(), run.val_index
                )
            )
        if member.swa is not None:
            cfg = member.swa
            out.append(
                swa.SWA(run.stage_dir, cfg.start_epoch, cfg.bn_batches, spec, run.size, self.meta())
            )
        return out

    def fabric(self, callback_list: list[Any]) -> Any:
        from lightning_fabric import Fabric

        run = self.run
        cuda = run.device.type == "cuda"
        devices: Any = run.devices
        if cuda and run.device.index is not None and run.world_size == 1:
            devices = [run.device.index]
        fabric = Fabric(
            accelerator="cuda" if cuda else "cpu",
            devices=devices,
            num_nodes=run.num_nodes,
            strategy=_strategy(run.world_size),
            precision=self.precision,
            callbacks=callback_list,
            loggers=callbacks.make_loggers(run.stage_dir) if self.rank == 0 else [],
        )
        fabric.launch()
        return fabric

    def engine(self, model: torch.nn.Module, progress: bool, extra: Sequence[Any]) -> Engine:
        from kaggle_utils.losses import build_loss
        from kaggle_utils.optim import ModelEMA, build_optimizer, build_scheduler

        run, member = self.run, self.run.member
        fabric = self.fabric(self.callbacks(progress, extra))
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        model = with_sync_batchnorm(model, fabric.device, self.world, member.sync_batchnorm)
        model = model.to(fabric.device, memory_format=fmt)
        train_loader, val_loader = self.loaders()
        optimizer = build_optimizer(model, member, member.stage_lr(run.stage))
        steps = math.ceil(len(train_loader) / member.accumulate)
        scheduler = build_scheduler(optimizer, member, run.stage, steps)
        ema = ModelEMA(model, member.ema.decay, member.ema.warmup_steps) if member.ema else None
        mean = swa.averaged_model(model) if member.swa is not None else None
        module, fabric_optimizer = fabric.setup(model, optimizer)
        state = TrainState(model, optimizer, scheduler, ema, fabric.strategy.precision, swa=mean)
        _resume(fabric, state, run)
        loss_spec = member.loss.spec()
        loss_fn = build_loss(loss_spec).to(fabric.device)
        val_loss = build_loss({k: v for k, v in loss_spec.items() if k != "aux_weight"})
        validator = Validator(
            val_loader,
            val_loss.to(fabric.device),
            self.masks,
            fabric.device,
            self.val_ids,
            precision=self.precision,
            channels_last=self.channels_last,
            threshold=member.threshold,
            largest_component=member.largest_component,
            tta=member.val_tta,
            guided=member.guided_filter,
        )
        plan = FitPlan(
            epochs=member.stages[run.stage].epochs,
            accumulate=member.accumulate,
            val_every=member.val_every,
            grad_clip=member.optimizer.grad_clip,
            seed=member.seed,
            channels_last=self.channels_last,
            label=run.stage_name,
        )
        return Engine(
            fabric, state, module, fabric_optimizer, train_loader, validator, loss_fn, plan, run
        )


def _strategy(world: int) -> Any:
    """DDP for several processes. find_unused_parameters: smp encoders built with a smaller
    encoder_depth keep their deeper layers, which then get no gradient, and plain DDP stops at the
    second step ("Expected to have finished reduction in the prior iteration")."""
    if world == 1:
        return "auto"
    from lightning_fabric.strategies import DDPStrategy

    return DDPStrategy(find_unused_parameters=True)


def with_sync_batchnorm(
    model: torch.nn.Module, device: torch.device, world: int, enabled: bool = True
) -> torch.nn.Module:
    """BatchNorm over the global batch when several CUDA devices share it (a T4 x2 at full
    resolution holds 2 images per card: per-card statistics of 2 images are noise). torch's
    SyncBatchNorm runs on CUDA only, so CPU (gloo) runs keep per-process statistics."""
    if not enabled or world == 1 or device.type != "cuda":
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _resume(fabric: Any, state: TrainState, run: StageRun) -> None:
    """Continue from last.pt when it holds this stage's state with the same parameters."""
    last_pt = run.stage_dir / "last.pt"
    if not last_pt.is_file():
        return
    try:
        ckpt = fabric.load(last_pt)
    except Exception as exc:  # torch raises several kinds for truncated files
        raise RuntimeError(
            f"{last_pt} cannot be read ({type(exc).__name__}: {exc}); delete it to start the "
            "stage afresh"
        ) from exc
    saved = ckpt.get("state") if isinstance(ckpt, dict) else None
    why = None
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        why = f"holds no {STATE_FORMAT} (written by an older kaggle_utils)"
    elif ckpt.get("params_hash") != run.params_hash:
        why = "was written with other parameters"
    if why:
        if fabric.is_global_zero:
            print(f"{last_pt} {why}; starting the stage afresh", flush=True)
        return
    state.load_state_dict(saved)
    epochs = run.member.stages[run.stage].epochs
    if fabric.is_global_zero:
        print(
            f"resuming {run.stage_name} from {last_pt} at epoch {state.epoch}/{epochs}", flush=True
        )
