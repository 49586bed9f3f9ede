"""GPU training throughput at 1024x1024 for refinenet_v4/resnet34: fp32 vs AMP + channels_last.

Same run, same model and batch: the fp32 contiguous baseline first, then autocast (bf16 where the
GPU supports it, else fp16 with a GradScaler) with channels_last tensors, as kaggle_utils.train does
on CUDA. Prints images/s of each and the ratio. Without CUDA it says so and exits 0.

    python bench/gpu_train_throughput.py [--quick] [--batch 8] [--size 1024]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def measure(model, batch: int, size: int, amp: bool, steps: int, warmup: int) -> float:
    from kaggle_utils.losses import build_loss

    device = torch.device("cuda")
    fmt = torch.channels_last if amp else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    loss_fn = build_loss({"bce": 1.0, "dice": 1.0, "boundary_weight": 2.0}).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--encoder-weights", default=None, help="null: random init (no download)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_train_throughput: no CUDA device here; skipped (run it on a GPU machine)")
        return 0
    from kaggle_utils.models import build_model

    torch.backends.cudnn.benchmark = True
    steps, warmup = (5, 3) if args.quick else (20, 5)
    spec = {"arch": "refinenet_v4", "encoder": "resnet34", "encoder_weights": args.encoder_weights}
    name = torch.cuda.get_device_name()
    print(
        f"gpu_train_throughput: refinenet_v4/resnet34 {args.size}x{args.size} batch {args.batch} "
        f"on {name}, {steps} timed steps"
    )
    torch.manual_seed(0)
    fp32 = measure(build_model(spec), args.batch, args.size, False, steps, warmup)
    print(f"fp32: {fp32:.1f} img/s", flush=True)
    torch.manual_seed(0)
    amp = measure(build_model(spec), args.batch, args.size, True, steps, warmup)
    dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    print(f"AMP ({dtype}) + channels_last: {amp:.1f} img/s | ratio {amp / fp32:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
