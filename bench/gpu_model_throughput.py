"""GPU training throughput of one member model: fp32 against AMP (bf16) + channels_last.

One train step = forward + combo loss (boundary BCE + Dice) + backward + AdamW step, on random
images at the curriculum's first size (refinenet_v4 / resnet34 at 1024x1024). Both settings are
measured in the same run, so the printed ratio is a like-for-like speed-up on this card.

    python bench/gpu_model_throughput.py [--quick] [--arch refinenet_v4 --encoder resnet34]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from kaggle_utils.losses import build_loss
from kaggle_utils.models import build_model


def train_throughput(
    arch: str,
    encoder: str,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    amp: bool,
    channels_last: bool,
    tf32: bool,
) -> tuple[float, float]:
    """(images per second, peak GiB) of train steps under one precision / layout setting."""
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = build_model({"arch": arch, "encoder": encoder, "encoder_weights": None}).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    loss_fn = build_loss({"bce": 1.0, "dice": 1.0})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = (torch.rand(batch, 1, size // 8, size // 8, device=device) > 0.5).float()
    y = torch.nn.functional.interpolate(y, size=(size, size), mode="nearest")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30
    return steps * batch / elapsed, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke run)")
    parser.add_argument("--arch", default="refinenet_v4")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_model_throughput: skipped (no CUDA device; run this on a GPU machine)")
        return 0
    steps = args.steps or (5 if args.quick else 30)
    warmup = 2 if args.quick else 5
    torch.backends.cudnn.benchmark = True
    print(
        f"gpu_model_throughput: {args.arch}/{args.encoder} train step at {args.size}x{args.size}, "
        f"batch {args.batch}, {steps} steps on {torch.cuda.get_device_name()}"
    )
    settings = {
        "fp32 (TF32 off)": dict(amp=False, channels_last=False, tf32=False),
        "fp32 (TF32 on)": dict(amp=False, channels_last=False, tf32=True),
        "amp bf16 + channels_last": dict(amp=True, channels_last=True, tf32=True),
    }
    results = {}
    for name, kw in settings.items():
        ips, peak = train_throughput(
            args.arch, args.encoder, args.size, args.batch, steps, warmup, **kw
        )
        results[name] = ips
        torch.cuda.empty_cache()  # the model of the previous setting is gone with its frame
        print(f"  {name:<26} {ips:8.1f} images/s   peak {peak:5.1f} GiB")
    base = results["fp32 (TF32 off)"]
    fast = results["amp bf16 + channels_last"]
    print(
        f"gpu_model_throughput: amp bf16 + channels_last is {fast / base:.2f}x fp32 (TF32 off), "
        f"{fast / results['fp32 (TF32 on)']:.2f}x fp32 (TF32 on)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
