"""JPEG decode to a training size: full decode + resize (baseline) vs reduced DCT decode.

    python bench/bench_decode.py [--quick]

Reads the real sample JPEGs (../shared/carvana_sample/train) or, where absent, full-resolution
synthetic ones. Both paths run in this process on one OpenCV thread and are timed in thread CPU
time (per-core figures, as a DataLoader worker sees them, and stable on a shared machine); the
ratio is against the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kaggle_utils.imageio import (  # noqa: E402
    decode_jpeg,
    decode_jpeg_full,
    jpeg_size,
    reduction_factor,
)

SAMPLE = Path(os.environ.get("CARVANA_SAMPLE", REPO.parent / "shared" / "carvana_sample")) / "train"
TARGETS = [(1024, 1024), (512, 768)]


def load_jpegs(n: int) -> tuple[list[bytes], str]:
    files = sorted(SAMPLE.glob("*.jpg"))[:n] if SAMPLE.is_dir() else []
    if files:
        return [f.read_bytes() for f in files], f"{len(files)} real sample JPEGs"
    from kaggle_utils.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        out = generate(Path(tmp) / "synthetic", n_train_cars=1, n_test_cars=0, seed=0)
        blobs = [f.read_bytes() for f in sorted((out / "train").glob("*.jpg"))[:n]]
    return blobs, f"{len(blobs)} synthetic full-res JPEGs (no sample)"


def ms_per_image(fns: dict, blobs: list[bytes], size: tuple[int, int], rounds: int) -> dict:
    """Median CPU ms/image per function (this thread's CPU time: OpenCV runs on one thread here,
    so this is the per-core cost, robust to other load); functions alternate within rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.thread_time()
            for b in blobs:
                fn(b, size)
            times[name].append((time.thread_time() - t) / len(blobs) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few images, one round")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    blobs, what = load_jpegs(8 if args.quick else 48)
    rounds = 1 if args.quick else 5
    src = jpeg_size(blobs[0])
    print(
        f"bench_decode: {what}, {src[1]}x{src[0]}, median of {rounds} round(s), 1 cv2 thread, CPU time"
    )
    for size in TARGETS:
        r = reduction_factor(src, size)
        ms = ms_per_image({"full": decode_jpeg_full, "reduced": decode_jpeg}, blobs, size, rounds)
        note = f"libjpeg 1/{r}" if r > 1 else "no reduction possible without upsampling"
        print(
            f"decode to {size[0]}x{size[1]}: full+resize {ms['full']:.1f} ms/img, "
            f"reduced {ms['reduced']:.1f} ms/img ({note}) -> "
            f"{ms['full'] / ms['reduced']:.2f}x faster"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
