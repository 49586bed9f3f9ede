"""The real-sample CPU config (issues 4, 17): Dice reached on 12 held-out cars and the time it took.

Trains `params/cpu_sample` (its one member, from scratch, 64x96 -> 128x192 -> 192x288 crops of
288x432 frames; 36 train /
12 validation cars by car) through the real path -- `kaggle_utils.pipeline --only 04`, which runs
04_stage_up and 03 per stage with papermill -- and prints each stage's full-resolution Dice and
time, the wall time of the whole run and the target (Dice >= 0.990 in <= 15 min on 2 cores
without AMX, no pretrained weights).

Finished stages are skipped, so a second run only reports; `--fresh` retrains from scratch.
`--quick` (make bench-quick) only reports a finished run and never trains.

    python bench/bench_cpu_sample.py [--quick] [--fresh] [--run-dir runs/cpu_sample]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENSEMBLE = REPO / "params/cpu_sample/ensemble.yaml"
TARGET_DICE, TARGET_S = 0.990, 15 * 60


def member_name() -> str:
    from kaggle_utils.config import load_ensemble, load_member

    return load_member(load_ensemble(ENSEMBLE).member_paths(ENSEMBLE)[0]).name


def report(run_dir: Path) -> int:
    member = member_name()
    stages = sorted((run_dir / member).glob("s*_*/metrics.json"))
    timing = run_dir / member / "bench_wall.json"
    wall_s = json.loads(timing.read_text())["wall_s"] if timing.is_file() else None
    if not stages:
        print(f"no finished stage under {run_dir / member}: run without --quick to train it")
        return 0
    total = 0.0
    for path in stages:
        m = json.loads(path.read_text())
        total += m["time_s"]
        print(
            f"{m['stage_name']:<12} Dice {m['best_dice']:.5f} at {m['dice_resolution']} "
            f"(epoch {m['best_epoch']}), {m['time_s']:.0f} s training, "
            f"{m['images_per_s']:.1f} img/s, {m['amp']}"
            + (", guided upsampling" if m.get("guided_filter") else "")
        )
    final = json.loads(stages[-1].read_text())["best_dice"]
    wall = f"{wall_s:.0f} s wall for all stages" if wall_s else "wall time not recorded"
    ok = final >= TARGET_DICE and (wall_s is None or wall_s <= TARGET_S)
    print(
        f"cpu_sample: final Dice {final:.5f} (target >= {TARGET_DICE}), {total:.0f} s of training, "
        f"{wall} (target <= {TARGET_S} s): {'met' if ok else 'NOT met'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="report a finished run, never train")
    ap.add_argument("--fresh", action="store_true", help="delete the run folder and retrain")
    ap.add_argument("--run-dir", default=str(REPO / "runs/cpu_sample"))
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    member_dir = run_dir / member_name()
    if args.quick:
        return report(run_dir)
    if args.fresh and member_dir.exists():
        shutil.rmtree(member_dir)
    cmd = [sys.executable, "-m", "kaggle_utils.pipeline", str(ENSEMBLE), "--only", "04"]
    cmd += ["--run-dir", str(run_dir), "--device", "cpu"]
    print(">>", " ".join(cmd), flush=True)
    finished_before = len(list(member_dir.glob("s*_*/metrics.json")))
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode:
        print(f"the cpu_sample run failed (exit {done.returncode})")
        return done.returncode
    if finished_before == 0:  # a whole run from scratch: its wall time is the one to report
        timing = {"wall_s": round(wall, 1), "command": " ".join(cmd)}
        (member_dir / "bench_wall.json").write_text(json.dumps(timing))
    return report(run_dir)


if __name__ == "__main__":
    raise SystemExit(main())
