"""GPU prediction throughput: refinenet_v4/resnet34 at 1024x1024 with hflip TTA, full-frame output.

Measures images/s of what `predict.predict_submission` does per batch on the device: normalise uint8
input, forward + hflip TTA, sigmoid, bilinear upsample to 1280x1918, threshold, copy the uint8 masks
to the host (`inference.ensemble_probs`). fp32 against 06's mixed precision (`precision_for`: bf16,
or fp16 on a GPU without bf16) + channels_last, same run, ratio printed. JPEG decode and RLE
run beside it on the CPU (DataLoader workers, encode pool) and are benchmarked by
bench_submit_path.py. Without CUDA it says so and exits 0.

    python bench/gpu_predict_throughput.py [--quick] [--batch 8] [--size 1024 1024]
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"))
    parser.add_argument("--arch", default="refinenet_v4")
    parser.add_argument("--encoder", default="resnet34")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_predict_throughput: no CUDA device here; nothing measured (run it on a GPU)")
        return 0

    from kaggle_utils.constants import MASK_SHAPE
    from kaggle_utils.inference import Member, ensemble_probs, normalise
    from kaggle_utils.models import build_model
    from kaggle_utils.precision import precision_for

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    spec = {"arch": args.arch, "encoder": args.encoder, "encoder_weights": None, "classes": 1}
    model = build_model(spec).to(dev).eval()
    size = tuple(args.size)
    n_batches = 5 if args.quick else 25
    x_u8 = torch.randint(0, 255, (args.batch, 3, *size), dtype=torch.uint8).pin_memory()
    print(
        f"{args.arch}/{args.encoder} at {size[0]}x{size[1]}, batch {args.batch}, hflip TTA, "
        f"output {MASK_SHAPE[0]}x{MASK_SHAPE[1]} on {torch.cuda.get_device_name(0)}"
    )

    mixed = precision_for(dev)  # what 06 uses here: bf16-mixed, or 16-mixed without bf16 (T4)

    def run(fast: bool) -> float:
        fmt = torch.channels_last if fast else torch.contiguous_format
        precision = mixed if fast else "32-true"
        member = Member("bench", model.to(memory_format=fmt), size)

        def step() -> None:
            x = normalise(x_u8, dev).contiguous(memory_format=fmt)
            probs = ensemble_probs([member], [x], [0], MASK_SHAPE, tta=True, precision=precision)
            (probs[:, 0] > 0.5).to(torch.uint8).cpu()

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n_batches):
            step()
        torch.cuda.synchronize()
        return n_batches * args.batch / (time.perf_counter() - t)

    base = run(fast=False)
    fast = run(fast=True)
    print(f"fp32                       : {base:8.1f} images/s")
    label = f"{mixed} + channels_last"
    print(f"{label:<27}: {fast:8.1f} images/s  ({fast / base:.2f}x fp32)")
    print(
        f"100,064 test images at that rate: {100064 / fast / 60:.1f} min of GPU time "
        "(decode and encode overlap on the CPU)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
