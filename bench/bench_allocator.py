"""CPU training step with and without ``allocator.keep_freed_memory`` (glibc mmap/trim thresholds).

Each variant runs in its own child process (the setting is process-wide and one-way), alternating
so both see the same machine noise; prints ms per step, minor page faults per step and the ratio.
The step is the one ``kaggle_utils.train`` runs: bf16 autocast where the CPU has AMX (as
``cpu_bf16``), forward, loss, backward, fused AdamW, EMA update.

    python bench/bench_allocator.py [--quick] [--member params/cpu_sample/refinenet_v4_resnet18.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(member_file: str, size: tuple[int, int], steps: int, keep: bool) -> dict:
    """Run in the child: time `steps` training steps after two warm-up steps."""
    import resource
    import time

    if keep:
        from kaggle_utils.allocator import keep_freed_memory

        assert keep_freed_memory()
    import torch

    from kaggle_utils.config import load_member
    from kaggle_utils.losses import build_loss
    from kaggle_utils.models import build_model
    from kaggle_utils.optim import ModelEMA, build_optimizer
    from kaggle_utils.precision import cpu_has_fast_bf16

    member = load_member(member_file)
    torch.manual_seed(0)
    bf16 = cpu_has_fast_bf16()
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    model = build_model(member.model.spec()).to(memory_format=fmt).train()
    loss_fn = build_loss(member.loss.spec())
    opt = build_optimizer(model, member, 1e-3)
    ema = ModelEMA(model, 0.99)
    x = torch.randn(member.batch_size, 3, *size).contiguous(memory_format=fmt)
    y = (torch.rand(member.batch_size, 1, *size) > 0.5).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = loss_fn(out if isinstance(out, torch.Tensor) else out[0], y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)

    for _ in range(2):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(steps):
        step()
    ms = (time.perf_counter() - start) / steps * 1e3
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    return {"ms": ms, "faults": faults}


def run_child(member: str, size: tuple[int, int], steps: int, keep: bool) -> dict:
    call = f"child({member!r}, {size!r}, {steps}, {keep!r})"
    code = (
        f"import json, sys; sys.path.insert(0, {str(REPO / 'bench')!r}); "
        f"from bench_allocator import child; print(json.dumps({call}))"
    )
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--member", default=str(REPO / "params/cpu_sample/refinenet_v4_resnet18.yaml"))
    ap.add_argument("--quick", action="store_true", help="one size, fewer steps and rounds")
    args = ap.parse_args(argv)
    from kaggle_utils.config import load_member

    member = load_member(args.member)
    sizes = sorted({s.size for s in member.stages})[: 1 if args.quick else None]
    steps, rounds = (4, 1) if args.quick else (8, 3)
    print(
        f"bench_allocator: {member.name}, batch {member.batch_size}, {steps} steps, best of {rounds}"
    )
    for size in sizes:
        best: dict[bool, dict] = {}
        for _ in range(rounds):  # alternate: a shared machine's noise hits both alike
            for keep in (False, True):
                r = run_child(args.member, size, steps, keep)
                if keep not in best or r["ms"] < best[keep]["ms"]:
                    best[keep] = r
        base, kept = best[False], best[True]
        print(
            f"  {size[0]}x{size[1]}: glibc defaults {base['ms']:.0f} ms/step "
            f"({base['faults']:.0f} page faults/step) | keep_freed_memory {kept['ms']:.0f} ms/step "
            f"({kept['faults']:.0f} page faults/step): {base['ms'] / kept['ms']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
