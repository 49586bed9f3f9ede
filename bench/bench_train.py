"""Training throughput (images/s) of the demo member on this CPU: fp32 baseline vs channels_last,
and bf16 autocast + channels_last where the CPU has bf16 units (AMX / AVX512-BF16: `cpu_bf16`).

One optimizer step = forward, boundary-weighted BCE + Dice, backward, AdamW step -- the loop
`kaggle_utils.train` runs -- on synthetic batches at the member's stage sizes. Both variants are
measured in the same run, alternating, so the ratio is fair on a shared machine.

    python bench/bench_train.py [--quick] [--member params/demo/unet_resnet18.yaml]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see kaggle_utils.train

import torch  # noqa: E402

from kaggle_utils.config import load_member  # noqa: E402
from kaggle_utils.losses import build_loss  # noqa: E402
from kaggle_utils.models import build_model  # noqa: E402
from kaggle_utils.train import cpu_has_fast_bf16  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def images_per_s(
    member, size, channels_last: bool, steps: int, batch: int, bf16: bool = False
) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(dict(member.model)).to(memory_format=fmt).train()
    loss_fn = build_loss(dict(member.loss))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, *size).contiguous(memory_format=fmt)
    y = (torch.rand(batch, 1, *size) > 0.5).float()
    for i in range(steps + 1):
        if i == 1:  # first step warms allocators and kernels
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--member", default=str(REPO / "params/demo/unet_resnet18.yaml"))
    parser.add_argument("--quick", action="store_true", help="fewer steps, first stage only")
    args = parser.parse_args()
    member = load_member(args.member)
    steps = 3 if args.quick else 8
    sizes = [member.stages[0].size] if args.quick else sorted({s.size for s in member.stages})
    print(
        f"bench_train: {member.name} on CPU ({torch.get_num_threads()} threads), "
        f"batch {member.batch_size}, {steps} steps per measurement"
    )
    bf16 = cpu_has_fast_bf16()
    for size in sizes:
        base, cl, half = [], [], []
        for _ in range(1 if args.quick else 2):  # alternate to share the machine's noise
            base.append(images_per_s(member, size, False, steps, member.batch_size))
            cl.append(images_per_s(member, size, True, steps, member.batch_size))
            if bf16:
                half.append(images_per_s(member, size, True, steps, member.batch_size, True))
        b, c = max(base), max(cl)
        h, w = size
        line = (
            f"train {member.name} {h}x{w}: fp32 {b:.1f} img/s | fp32+channels_last {c:.1f} img/s "
            f"({c / b:.2f}x)"
        )
        if half:
            line += f" | bf16+channels_last {max(half):.1f} img/s ({max(half) / b:.2f}x)"
        else:
            line += " | bf16: this CPU has no bf16 units"
        print(line)


if __name__ == "__main__":
    main()
