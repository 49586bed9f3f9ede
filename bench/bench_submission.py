"""Post-model submission path at full scale: encode + write 100,064 1280x1918 masks to csv.gz.

Masks are car silhouettes (the real sample's GIF masks when ../shared/carvana_sample exists, else
synthetic ones) shifted by a different offset per image — zero-copy views, so generating them
costs nothing and every encode is real work on a distinct mask.

Printed, all measured in this run:
  * baseline: the Kaggle idiom, single thread, on a timed subset (encode + pandas gzip to_csv),
    extrapolated to the full count;
  * kaggle_utils, ``SubmissionWriter.write_from`` with a process pool on every core (the target:
    100,064 masks under 60 s), at 10k and full count, with peak memory of the main process and
    its workers sampled every 0.5 s (it must not grow with the count);
  * kaggle_utils, ``SubmissionWriter.add`` inline in one thread (+ background compression);
  * gzip level, and ``validate_submission`` time on the full file.

    python bench/bench_submission.py [--quick] [--n N] [--level L] [--keep]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rle import SAMPLE, kaggle_idiom, real_masks, synthetic_car_masks  # noqa: E402

from kaggle_utils.constants import MASK_SHAPE  # noqa: E402
from kaggle_utils.submission import SubmissionWriter, validate_submission  # noqa: E402

N_TEST = 100_064


class ShiftedMasks:
    """``image_id -> mask``: base car masks shifted by a per-image offset (views, no copies)."""

    def __init__(self, bases: list[np.ndarray], max_rows: int = 48) -> None:
        h, w = bases[0].shape
        self.shape, self.n = (h, w), h * w
        self.pad = max_rows * w + 37
        z = np.zeros(self.pad, np.uint8)
        self.canvases = [np.concatenate([z, b.reshape(-1).astype(np.uint8), z]) for b in bases]

    def mask(self, i: int) -> np.ndarray:
        c = self.canvases[i % len(self.canvases)]
        o = (i * 7919) % (2 * self.pad) // 8 * 8  # 8-byte aligned, like a fresh array
        return c[o : o + self.n].reshape(self.shape)

    def __call__(self, image_id: str) -> np.ndarray:
        return self.mask(int(image_id.split("_")[1]))


def bench_ids(n: int) -> list[str]:
    return [f"bench_{i:06d}_{i % 16 + 1:02d}.jpg" for i in range(n)]


def _rss_kib(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return kids


class PeakMemory:
    """Peak RSS of this process and of this process + its children, sampled in a thread."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.main, self.total = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            main = _rss_kib(me)
            self.main = max(self.main, main)
            self.total = max(self.total, main + sum(_rss_kib(k) for k in _children(me)))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def __str__(self) -> str:
        return f"peak RSS main {self.main / 1024:.0f} MiB, main+workers {self.total / 1024:.0f} MiB"


def baseline(source: ShiftedMasks, n: int, tmp: Path, full: int) -> float:
    """The Kaggle way: idiom per mask into a list, then DataFrame.to_csv(gzip). Extrapolated s."""
    ids = bench_ids(n)
    t0, cpu0 = time.perf_counter(), time.process_time()
    rles = [kaggle_idiom(source.mask(i)) for i in range(n)]
    t_enc, cpu_enc = time.perf_counter() - t0, time.process_time() - cpu0
    t0 = time.perf_counter()
    pd.DataFrame({"img": ids, "rle_mask": rles}).to_csv(tmp / "baseline.csv.gz", index=False)
    t_write = time.perf_counter() - t0
    per = (t_enc + t_write) / n
    print(f"  baseline encode cpu {n / cpu_enc:.0f} masks/s (wall/cpu {t_enc / cpu_enc:.2f})")
    print(
        f"baseline Kaggle idiom, 1 thread: {n / t_enc:7.0f} masks/s encode, "
        f"{n / t_write:7.0f} rows/s to_csv(gzip) on {n} masks -> {per * full:7.1f} s "
        f"extrapolated to {full:,} masks"
    )
    return per * full


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool's workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_processes(source, n, tmp, level, processes, chunk) -> tuple[float, Path]:
    out = tmp / f"proc_{n}.csv.gz"
    with PeakMemory() as mem:
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        w = SubmissionWriter(out, bench_ids(n), chunk_size=chunk, compresslevel=level)
        w.write_from(source, processes=processes)
        w.close()
        dt, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    size = out.stat().st_size / 2**20
    print(
        f"kaggle_utils write_from, {processes} processes: {n:7,} masks in {dt:6.1f} s "
        f"({n / dt:5.0f} masks/s), {size:.0f} MiB gz; {mem}"
    )
    print(
        f"  cpu {cpu:.1f} s over main+workers = {cpu / processes:.1f} s per core; wall/cpu-per-core "
        f"{dt / (cpu / processes):.2f} (1.0 = the cores were ours alone; > 1: shared machine)"
    )
    return dt, out


def run_inline(source, n, tmp, level, chunk) -> float:
    out = tmp / f"inline_{n}.csv.gz"
    ids = bench_ids(n)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        with SubmissionWriter(out, ids, chunk_size=chunk, compresslevel=level, workers=2) as w:
            for i, image_id in enumerate(ids):
                w.add(image_id, source.mask(i))
        dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(
        f"kaggle_utils add() inline + 2 gzip threads: {n:7,} masks in {dt:6.1f} s "
        f"({n / dt:5.0f} masks/s; cpu {cpu:.1f} s); {mem}"
    )
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5,000 masks instead of 100,064")
    ap.add_argument("--n", type=int, default=None, help="number of masks for the full run")
    ap.add_argument("--level", type=int, default=1, help="gzip compresslevel (default 1)")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--keep", action="store_true", help="keep the written files")
    args = ap.parse_args(argv)
    n = args.n or (5_000 if args.quick else N_TEST)
    small = min(n, 10_000) if not args.quick else min(n, 1_000)

    if (SAMPLE / "train_masks").is_dir():
        bases, what = real_masks(8), "real sample GIF masks"
    else:
        bases, what = synthetic_car_masks(8), "synthetic car masks"
    source = ShiftedMasks(bases)
    assert source.shape == MASK_SHAPE
    runs = np.mean([len(kaggle_idiom(source.mask(i)).split()) // 2 for i in range(8)])
    print(
        f"masks: {what} shifted per image, {MASK_SHAPE[0]}x{MASK_SHAPE[1]}, ~{runs:.0f} runs; "
        f"{os.cpu_count()} cores; gzip level {args.level}; chunk {args.chunk}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_submission_"))
    try:
        base = baseline(source, 200 if args.quick else 500, tmp, n)
        run_processes(source, small, tmp, args.level, args.processes, args.chunk)
        dt, out = run_processes(source, n, tmp, args.level, args.processes, args.chunk)
        print(
            f"speed-up vs the extrapolated baseline: {base / dt:5.1f}x; target < 60 s for "
            f"100,064 masks: {dt * N_TEST / n:.1f} s scaled"
        )
        run_inline(source, small, tmp, args.level, args.chunk)
        t0 = time.perf_counter()
        report = validate_submission(out, bench_ids(n))
        dv = time.perf_counter() - t0
        print(
            f"validate_submission: {report.rows:,} rows in {dv:.1f} s ({report.rows / dv:.0f} "
            f"rows/s), all valid"
        )
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"process max RSS over the whole bench (incl. baseline lists): {ru:.0f} MiB")
    finally:
        if args.keep:
            print(f"files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
