"""GPU prediction throughput of 06's device work: hflip TTA and guided upsampling to 1280x1918.

Measures images/s of what `predict.predict_submission` does per batch on the device: normalise
uint8 input, forward + hflip TTA (`inference.ensemble_probs`), guided upsampling to the full frame
with the photo at 1/4 size as guide (`refine`), threshold, and the copy of the uint8 masks to the
host. fp32 against 06's mixed precision (`precision_for`: bf16, or fp16 on a GPU without bf16) +
channels_last, same run, ratio printed. JPEG decode and RLE run beside it on the CPU (DataLoader
workers, encode thread): bench/gpu_suite.py times the whole 06 path (predict_submission on real
JPEGs) and bench_submit_path.py the CPU side. Without CUDA it says so and exits 0.

    python bench/gpu_predict_throughput.py [--quick] [--batch 8] [--size 1024 1024]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def device_predict(
    model: Any,
    size: tuple[int, int],
    batch: int,
    n_batches: int,
    precision: str,
    channels_last: bool,
    guided: bool = True,
    device: str = "cuda",
    out_shape: tuple[int, int] | None = None,
) -> float:
    """images/s of 06's per-batch device work on random uint8 images (3 warm-up batches)."""
    import torch

    from kaggle_utils.config import GuidedFilterConfig
    from kaggle_utils.constants import MASK_SHAPE
    from kaggle_utils.imageio import guide_shape
    from kaggle_utils.inference import Member, ensemble_probs, normalise

    dev = torch.device(device)
    out_shape = tuple(out_shape or MASK_SHAPE)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    member = Member("bench", model.to(dev, memory_format=fmt).eval(), tuple(size))
    pin = dev.type == "cuda"
    x_u8 = torch.randint(0, 255, (batch, 3, *size), dtype=torch.uint8)
    x_u8 = x_u8.pin_memory() if pin else x_u8
    cfg = GuidedFilterConfig(scale=4, radius=2, eps=1e-4) if guided else None
    g_shape = guide_shape(out_shape, 4)
    g_u8 = torch.randint(0, 255, (batch, 1, *g_shape), dtype=torch.uint8)

    def step() -> None:
        x = normalise(x_u8, dev).contiguous(memory_format=fmt)
        guide = g_u8.to(dev).float() / 255.0 if guided else None
        probs = ensemble_probs(
            [member], [x], [0], out_shape, tta=True, precision=precision, guide=guide, guided=cfg
        )
        (probs[:, 0] > 0.5).to(torch.uint8).cpu()

    def sync() -> None:
        if pin:
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    started = time.perf_counter()
    for _ in range(n_batches):
        step()
    sync()
    return n_batches * batch / (time.perf_counter() - started)


def compare(
    size: tuple[int, int] = (1024, 1024), batch: int = 8, n_batches: int = 25, model: Any = None
) -> dict[str, Any]:
    """fp32 against 06's mixed precision + channels_last, both with TTA and guided upsampling."""
    import torch

    from kaggle_utils.models import build_model
    from kaggle_utils.precision import precision_for

    torch.backends.cudnn.benchmark = True
    if model is None:
        spec = {"arch": "refinenet_v4", "encoder": "resnet34", "encoder_weights": None}
        model = build_model(spec)
    mixed = precision_for("cuda")  # what 06 uses here: bf16-mixed, or 16-mixed (T4)
    fp32 = device_predict(model, size, batch, n_batches, "32-true", False)
    fast = device_predict(model, size, batch, n_batches, mixed, True)
    result = {
        "size": list(size),
        "batch": batch,
        "fp32_images_per_s": round(fp32, 2),
        "amp_images_per_s": round(fast, 2),
        "precision": mixed,
        "ratio": round(fast / fp32, 3),
        "hours_100064_device_only": round(100064 / fast / 3600, 3),
    }
    print(
        f"  06 device work at {size[0]}x{size[1]} -> 1280x1918, TTA + guided: fp32 {fp32:.1f} "
        f"img/s, {mixed} + channels_last {fast:.1f} img/s ({fast / fp32:.2f}x)",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"))
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_predict_throughput: no CUDA device here; nothing measured (run it on a GPU)")
        return 0
    print(f"gpu_predict_throughput on {torch.cuda.get_device_name(0)}")
    result = compare(tuple(args.size), args.batch, 5 if args.quick else 25)
    print(
        f"100,064 test images at that rate: {result['hours_100064_device_only'] * 60:.1f} min of "
        "GPU time (decode and encode overlap on the CPU)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
