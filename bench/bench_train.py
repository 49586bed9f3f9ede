"""Training throughput (images/s) of the demo member on this CPU: fp32 baseline vs channels_last,
and bf16 autocast + channels_last where the CPU has bf16 units (AMX / AVX512-BF16: `cpu_bf16`).

Then the Fabric engine (kaggle_utils.engine) against the previous hand-written loop (commit
BASELINE_REV, unpacked into a temp dir): the cpu_sample member trains one 128x192 stage with each, in
fresh processes, alternating, on the real sample when it is beside the repo (else synthetic cars);
the ratio of their training images/s (validation excluded) must stay >= 0.97.

One optimizer step = forward, boundary-weighted BCE + Dice, backward, AdamW step -- the loop
`kaggle_utils.train` runs -- on synthetic batches at the member's stage sizes. Both variants are
measured in the same run, alternating, so the ratio is fair on a shared machine.

    python bench/bench_train.py [--quick] [--member params/demo/unet_resnet18.yaml] [--no-engine]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see kaggle_utils.train

import torch  # noqa: E402

from kaggle_utils.config import load_member  # noqa: E402
from kaggle_utils.losses import build_loss  # noqa: E402
from kaggle_utils.models import build_model  # noqa: E402
from kaggle_utils.precision import cpu_has_fast_bf16  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = Path(os.environ.get("CARVANA_SAMPLE", REPO.parent / "shared" / "carvana_sample"))


def images_per_s(
    member, size, channels_last: bool, steps: int, batch: int, bf16: bool = False
) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(member.model.spec()).to(memory_format=fmt).train()
    loss_fn = build_loss(member.loss.spec())
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
    parser.add_argument("--no-engine", action="store_true", help="skip engine vs previous loop")
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
    if not args.no_engine:
        engine_vs_previous(rounds=1 if args.quick else 2, epochs=2 if args.quick else 4)


# ---------------------------------------------------------------- engine vs the previous loop

BASELINE_REV = "24563da"  # the last commit with the hand-written loop (before the Fabric engine)
ENGINE_MEMBER = REPO / "params/cpu_sample/refinenet_v4_resnet18.yaml"


def _checkout(rev: str, dest: Path) -> Path:
    """`kaggle_utils` of commit `rev` unpacked into dest (git archive: no worktree left behind)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "kaggle_utils"], check=True, capture_output=True
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _stage_images_per_s(
    code: Path | None, data: Path, run_dir: Path, size: str, epochs: int
) -> float:
    """Train one stage of the cpu_sample member at `size` with the package at `code` (None: this
    checkout) in a fresh process; its metrics.json's training images/s (validation excluded)."""
    env = {**os.environ, "PYTHONPATH": str(code) if code else str(REPO)}
    overrides = [f"stages.0.size={size}", f"stages.0.epochs={epochs}", "max_train_images=64"]
    overrides += ["max_val_images=16", "val_full_res=false", "val_tta=false", "guided_filter=null"]
    cmd = [sys.executable, "-m", "kaggle_utils.train", str(ENGINE_MEMBER), "--stage", "0"]
    cmd += ["--init-checkpoint", "none", "--data-dir", str(data), "--run-dir", str(run_dir)]
    cmd += ["--device", "cpu", "--no-progress"] + [a for o in overrides for a in ("--set", o)]
    subprocess.run(cmd, check=True, env=env, cwd=run_dir.parent, capture_output=True)
    metrics = next(run_dir.glob("*/s1_*/metrics.json"))
    return float(json.loads(metrics.read_text())["images_per_s"])


def engine_vs_previous(rounds: int, epochs: int, size: str = "128x192") -> None:
    """The Fabric engine's training images/s against the previous loop's (BASELINE_REV), same
    member, same data, alternating in one run: the ratio must stay >= 0.97."""
    data = REAL_SAMPLE if (REAL_SAMPLE / "train_masks.csv").is_file() else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if data is None:
            from kaggle_utils.synthetic import generate

            data = generate(tmp_path / "data", n_train_cars=8, n_test_cars=1, seed=0)
        try:
            old_code = _checkout(BASELINE_REV, tmp_path / "old")
        except subprocess.CalledProcessError:
            print(f"engine: commit {BASELINE_REV} is not in this clone (shallow?): skipped")
            return
        new, old = [], []
        for r in range(rounds):
            for label, code, out in (("old", old_code, old), ("new", None, new)):
                run_dir = tmp_path / f"{label}{r}" / "runs"
                run_dir.parent.mkdir()
                out.append(_stage_images_per_s(code, data, run_dir, size, epochs))
        ratio = max(new) / max(old)
        print(
            f"engine {ENGINE_MEMBER.stem} {size}: Fabric engine {max(new):.1f} img/s vs previous "
            f"loop ({BASELINE_REV}) {max(old):.1f} img/s = {ratio:.3f}x (target >= 0.97: "
            f"{'met' if ratio >= 0.97 else 'NOT met'}); rounds new {[round(v, 1) for v in new]}, "
            f"old {[round(v, 1) for v in old]}"
        )


if __name__ == "__main__":
    main()
