"""RLE encode speed: kaggle_utils.rle.rle_encode against the common Kaggle idiom, same run.

Masks: the real Carvana GIF masks from ../shared/carvana_sample when present, else synthetic
car-like silhouettes (1280x1918, ~1,000-1,500 runs). Single thread; every string is checked to be
identical to the idiom's. Target (issue 2): >= 5,000 masks/s and >= 18x the idiom.

Two regimes, each against the idiom and a plain read of the mask in the same regime:
- submission path: each mask is encoded right after it was written (the writer thresholds or
  decodes a mask, then encodes it), so it sits in the CPU cache; this is where the target applies
  (the issue's "a memory copy bounds it near ~10,000/s" is a cache-resident copy);
- streaming: the 48 distinct masks (112 MB) are encoded in turn, none in cache, so main-memory
  bandwidth bounds every encoder; on this shared VM that bound moves between ~3,400 and ~11,000/s.

    python bench/bench_rle.py [--quick] [--masks N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_utils.rle import MASK_SHAPE, rle_decode, rle_encode  # noqa: E402

SAMPLE = Path(
    os.environ.get("CARVANA_SAMPLE", Path(__file__).resolve().parents[2] / "shared/carvana_sample")
)


def kaggle_idiom(img: np.ndarray) -> str:
    """The encoder most Carvana kernels used (pad, compare, where, join)."""
    pixels = img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def one_read(img: np.ndarray) -> int:
    """The floor: read every byte of the mask once (a vectorised OR over 64-bit words)."""
    flat = img.reshape(-1)
    return int(np.bitwise_or.reduce(flat[: flat.size // 8 * 8].view(np.uint64)))


def synthetic_car_masks(n: int, shape: tuple[int, int] = MASK_SHAPE, seed: int = 0) -> list:
    """Car-like silhouettes: a body ellipse, a cabin, wheels, a ragged outline (anti-aliased edge)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    masks = []
    for _ in range(n):
        cx, cy = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.5, 0.6)
        ax, ay = w * rng.uniform(0.3, 0.42), h * rng.uniform(0.15, 0.22)
        body = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1
        cab = ((xx - cx) / (ax * 0.55)) ** 2 + ((yy - cy + ay * 0.9) / (ay * 0.8)) ** 2 < 1
        m = body | cab
        for side in (-1, 1):
            wx, wy, r = cx + side * ax * 0.6, cy + ay * 0.8, ay * 0.45
            m |= (xx - wx) ** 2 + (yy - wy) ** 2 < r**2
        m &= rng.random(shape) > 0.002  # a few holes: realistic run counts
        masks.append(m.astype(np.uint8))
    return masks


def real_masks(n: int) -> list:
    from PIL import Image

    files = sorted((SAMPLE / "train_masks").glob("*_mask.gif"))[:n]
    return [np.array(Image.open(f)) for f in files]


def _round(fn, masks, min_time: float, hot: bool) -> float:
    """Masks/s of fn over the list, repeated until fn has used min_time of this process's CPU time.

    hot: each mask is first copied into a scratch buffer (as the writer's threshold writes its
    output) and fn timed on that buffer alone."""
    scratch = np.empty_like(masks[0])
    done, spent = 0, 0.0
    while spent < min_time:
        for m in masks:
            if hot:
                np.copyto(scratch, m)
                m = scratch
            t0 = time.process_time()
            fn(m)
            spent += time.process_time() - t0
        done += len(masks)
    return done / spent


def per_second(
    fns: dict, masks: dict, min_time: float, rounds: int, hot: bool = False
) -> dict[str, float]:
    """Best masks/s of each fn; rounds interleave the fns so a busy machine hits them alike.

    CPU time, single thread: 'per core' throughput, not wall time (this machine is shared)."""
    best = dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = max(best[name], _round(fn, masks[name], min_time, hot))
    return best


def report(title: str, rate: dict[str, float], target: bool) -> None:
    base, ours, ours_bool = rate["idiom"], rate["uint8"], rate["bool"]
    goal = "  (target >= 18x, >= 5,000/s)" if target else ""
    print(title)
    print(f"  Kaggle idiom (baseline)      : {base:7.0f} masks/s per core")
    print(
        f"  kaggle_utils rle_encode uint8: {ours:7.0f} masks/s per core  {ours / base:5.1f}x{goal}"
    )
    print(
        f"  kaggle_utils rle_encode bool : {ours_bool:7.0f} masks/s per core  {ours_bool / base:5.1f}x"
    )
    print(
        f"  one read of each mask        : {rate['read']:7.0f} masks/s per core  (the bound for any "
        f"encoder; rle_encode reaches {ours / rate['read']:.0%} of it)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer masks, shorter timing")
    ap.add_argument("--masks", type=int, default=None, help="number of distinct masks")
    args = ap.parse_args(argv)
    n = args.masks or (8 if args.quick else 48)
    min_time = 0.3 if args.quick else 0.6

    if (SAMPLE / "train_masks").is_dir():
        masks, source = real_masks(n), f"real Carvana GIF masks ({SAMPLE})"
    else:
        masks, source = synthetic_car_masks(n), "synthetic car-like masks"
    runs = [len(kaggle_idiom(m).split()) // 2 for m in masks[:8]]
    print(
        f"masks: {len(masks)} x {masks[0].shape} {masks[0].dtype}, {source}; "
        f"runs/mask ~{int(np.mean(runs))}"
    )

    bools = [m.astype(bool) for m in masks]
    ref = [kaggle_idiom(m) for m in masks]
    got, got_bool = [rle_encode(m) for m in masks], [rle_encode(m) for m in bools]
    same = ref == got == got_bool
    fns = {"idiom": kaggle_idiom, "uint8": rle_encode, "bool": rle_encode, "read": one_read}
    inputs = {"idiom": masks, "uint8": masks, "bool": bools, "read": masks}
    rounds = 3 if args.quick else 5
    hot = per_second(fns, inputs, min_time, rounds, hot=True)
    cold = per_second(fns, inputs, min_time, rounds)
    for s, m in zip(got[:4], masks[:4], strict=True):
        same &= bool((rle_decode(s, m.shape) == (m != 0)).all())
    report("submission path (each mask encoded right after it is written, in cache):", hot, True)
    mb = sum(m.nbytes for m in masks) / 2**20
    report(
        f"streaming ({len(masks)} distinct masks, {mb:.0f} MB, in turn; 48 exceed the cache):",
        cold,
        False,
    )
    print(f"rle_encode output identical to the idiom: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
