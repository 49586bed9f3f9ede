"""GPU training throughput through the engine's own step: fp32 against AMP + channels_last.

Each setting runs `engine.loop.Engine.train_loop` (Fabric's precision plugin and autocast, the
member's loss on float32 logits, `fabric.backward`, clipping, the fused AdamW step, the LR
schedule) on one device-resident batch of random images, so the figure is the step the engine
trains with, without the data loader. The batch fills the card: two small probes give the memory
per image, and the largest multiple of 8 that keeps the peak under `fill` of the card's memory is
timed (stepping down on an out-of-memory). fp32 is the engine's `amp: false` on CUDA (PyTorch's
defaults: cuDNN convolutions in TF32); AMP is `precision_for` (bf16-mixed, or 16-mixed with a
scaler on cards without bf16) with channels_last, as `amp: true` trains. bench/gpu_suite.py records
the figures per GPU in bench/gpu_figures.json. Without CUDA it says so and exits 0.

    python bench/gpu_train_throughput.py [--quick] [--size 1024 1024] [--batch N]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MEMBER = REPO / "params" / "gpu_suite" / "refinenet_v4_resnet34.yaml"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class _Sampler:
    def set_epoch(self, epoch: int) -> None:
        """The loop re-seeds its sampler each epoch; one resident batch has nothing to shuffle."""


class ResidentBatches:
    """The same device-resident batch `n` times: what `Engine.train_loop` iterates, minus the
    loader (so the figure is the device's, not the JPEG decoder's)."""

    def __init__(self, image: Any, mask: Any, n: int):
        self.batch, self.n = {"image": image, "mask": mask}, n
        self.batch_sampler, self.dataset = _Sampler(), SimpleNamespace(epoch=0)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


def random_batch(batch: int, size: tuple[int, int], device: Any) -> tuple[Any, Any]:
    """Normalised-looking images and blocky soft-edged masks (the loss sees real boundaries)."""
    import torch
    import torch.nn.functional as F

    h, w = size
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, h, w, generator=gen).to(device)
    coarse = (torch.rand(batch, 1, max(1, h // 32), max(1, w // 32), generator=gen) > 0.5).float()
    y = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).to(device)
    return x, y


def engine_throughput(
    size: tuple[int, int],
    batch: int,
    precision: str,
    channels_last: bool,
    steps: int = 8,
    warmup: int = 2,
    device: str = "cuda",
    member_file: Path = MEMBER,
) -> dict[str, Any]:
    """images/s and peak memory of `steps` engine train steps after `warmup` (cuDNN autotune)."""
    import torch
    from lightning_fabric import Fabric

    from kaggle_utils.config import load_member
    from kaggle_utils.engine.loop import Engine, FitPlan, seed_everything
    from kaggle_utils.engine.state import TrainState
    from kaggle_utils.losses import build_loss
    from kaggle_utils.models import build_model
    from kaggle_utils.optim import build_optimizer, build_scheduler

    member = load_member(member_file)
    cuda = torch.device(device).type == "cuda"
    fabric = Fabric(accelerator="cuda" if cuda else "cpu", devices=1, precision=precision)
    fabric.launch()
    seed_everything(member.seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(member.model.spec()).to(fabric.device, memory_format=fmt)
    optimizer = build_optimizer(model, member, member.stage_lr(0))
    scheduler = build_scheduler(optimizer, member, 0, warmup + steps)
    module, fabric_optimizer = fabric.setup(model, optimizer)
    state = TrainState(model, optimizer, scheduler, None, fabric.strategy.precision)
    loss_fn = build_loss(member.loss.spec()).to(fabric.device)
    plan = FitPlan(epochs=2, grad_clip=member.optimizer.grad_clip, channels_last=channels_last)
    x, y = random_batch(batch, size, fabric.device)
    engine = Engine(fabric, state, module, fabric_optimizer, None, None, loss_fn, plan)
    engine.train_loader = ResidentBatches(x, y, warmup)
    engine.train_loop(0)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    engine.train_loader = ResidentBatches(x, y, steps)
    row = engine.train_loop(1)
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    return {
        "images_per_s": round(row["images_per_s"], 2),
        "peak_gib": peak,
        "batch": batch,
        "precision": precision,
        "channels_last": channels_last,
        "loss": round(row["train_loss"], 5),
        "steps": steps,
    }


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fill_batch(
    size: tuple[int, int],
    precision: str,
    channels_last: bool,
    fill: float = 0.85,
    max_batch: int = 256,
    device: str = "cuda",
) -> tuple[int, dict[str, float]]:
    """The largest multiple of 8 (at most max_batch) whose predicted peak is under `fill` of the
    card: peaks at batch 2 and 4 give the memory per image and the fixed part."""
    import torch

    peaks = {}
    for b in (2, 4):
        peaks[b] = engine_throughput(size, b, precision, channels_last, 1, 1, device)["peak_gib"]
        free_memory()
    per_image = max((peaks[4] - peaks[2]) / 2, 1e-3)
    fixed = peaks[2] - 2 * per_image
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    batch = int((fill * total - fixed) / per_image)
    batch = max(8, min(max_batch, batch // 8 * 8)) if batch >= 8 else max(1, batch)
    return batch, {"per_image_gib": round(per_image, 3), "fixed_gib": round(fixed, 2)}


def measure_filled(
    size: tuple[int, int], precision: str, channels_last: bool, steps: int, batch: int | None
) -> dict[str, Any]:
    """engine_throughput at the card-filling batch (or `batch`), stepping down on OOM."""
    import torch

    probe: dict[str, float] = {}
    if batch is None:
        batch, probe = fill_batch(size, precision, channels_last)
    while True:
        try:
            result = engine_throughput(size, batch, precision, channels_last, steps)
            break
        except torch.cuda.OutOfMemoryError:
            free_memory()
            if batch <= 1:
                raise
            smaller = batch * 3 // 4
            smaller = smaller // 8 * 8 if smaller >= 8 else max(1, smaller)
            print(f"  batch {batch} ran out of memory; trying {smaller}", flush=True)
            batch = smaller
    free_memory()
    return {**result, **probe}


def compare(
    size: tuple[int, int] = (1024, 1024), steps: int = 8, batch: int | None = None
) -> dict[str, Any]:
    """fp32 against AMP + channels_last at the card-filling batch of each, and their ratio."""
    import torch

    from kaggle_utils.precision import precision_for

    torch.backends.cudnn.benchmark = True  # as the engine sets on CUDA
    mixed = precision_for("cuda")
    label = f"refinenet_v4/resnet34 {size[0]}x{size[1]}"
    started = time.perf_counter()
    fp32 = measure_filled(size, "32-true", False, steps, batch)
    print(
        f"  {label} fp32 (cuDNN TF32 {torch.backends.cudnn.allow_tf32}): "
        f"{fp32['images_per_s']:.1f} img/s at batch {fp32['batch']}, peak {fp32['peak_gib']} GiB",
        flush=True,
    )
    amp = measure_filled(size, mixed, True, steps, batch)
    ratio = amp["images_per_s"] / fp32["images_per_s"]
    print(
        f"  {label} {mixed} + channels_last: {amp['images_per_s']:.1f} img/s at batch "
        f"{amp['batch']}, peak {amp['peak_gib']} GiB | {ratio:.2f}x fp32",
        flush=True,
    )
    return {
        "size": list(size),
        "fp32": fp32,
        "amp": amp,
        "ratio": round(ratio, 3),
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timed steps")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, help="fixed batch (default: fill the card)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_train_throughput: no CUDA device here; skipped (run it on a GPU machine)")
        return 0
    print(f"gpu_train_throughput on {torch.cuda.get_device_name()} (torch {torch.__version__})")
    compare(tuple(args.size), 3 if args.quick else 8, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
