"""What a test shard should store: bytes per image of each candidate form, and the 100,064 total.

Sharded prediction (issue 15) needs each shard's result on disk, where a Kaggle kernel's output
is limited to about 20 GB. Two forms:

  * blended RLE rows (``img,rle_mask`` lines, deflated at the writer's level 1, as the
    submission's own part files are): the submission itself, already blended and thresholded;
  * per-member uint8 probability maps as PNG (what the 1st-place team kept): a later merge can
    re-weight members and re-threshold, at the cost of one map per member per image.

Measured on real data: the real sample's train masks (train_masks.csv RLE, 1280x1918 GIFs) for
the RLE rows and for a full-resolution probability stand-in (the true mask with a soft 1.5-pixel
edge, as a full-scale member's output looks); and a trained member's real probabilities on the
real test images at the member's own size, and upsampled to the full frame. The member is a
checkpoint (``--member``; default the CPU-sample run's RefineNet, copied to a temp folder first so
nothing is written beside it); without one a random tiny network stands in, labelled as such.

    CARVANA_SAMPLE=/work/shared/carvana_sample python bench/bench_shards.py [--member best.pt]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kaggle_utils.rle import rle_decode, rle_encode  # noqa: E402

N_TEST = 100_064
KERNEL_OUTPUT_LIMIT = 20e9  # bytes: a Kaggle kernel's output, about 20 GB
_SIBLING = ROOT.parent / "shared/carvana_sample"  # the clone beside shared/, as in bench_rle
SAMPLE = Path(
    os.environ.get("CARVANA_SAMPLE")
    or (_SIBLING if _SIBLING.is_dir() else "/work/shared/carvana_sample")
)
DEFAULT_MEMBER = Path("/work/main/runs/cpu_sample/refinenet_v4_resnet18/s3_288x432/best.pt")


def rle_row_bytes(rows: list[str]) -> float:
    """Deflated bytes per row of ``img,rle\\n`` lines at level 1 (the submission parts' level)."""
    text = "".join(rows).encode()
    return len(zlib.compress(text, 1)) / len(rows)


def png_bytes(maps: list[np.ndarray], level: int) -> float:
    """Mean PNG size of uint8 maps at a zlib level (cv2 defaults to 1; 9 is the smallest)."""
    sizes = [len(cv2.imencode(".png", m, [cv2.IMWRITE_PNG_COMPRESSION, level])[1]) for m in maps]
    return float(np.mean(sizes))


def soft_edge(mask: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """A full-resolution member's probability stand-in: the true mask with a soft edge."""
    p = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    return (p * 255).round().astype(np.uint8)


def member_probs(checkpoint: Path | None, n: int) -> tuple[str, list[np.ndarray], tuple, list]:
    """(label, uint8 probability maps at the member's size, its size, full-frame probs) of a
    member (hflip TTA) on the real test images."""
    import torch

    from kaggle_utils.imageio import decode_jpeg, jpeg_size
    from kaggle_utils.inference import forward_probs, load_members, normalise

    tmp = Path(tempfile.mkdtemp(prefix="bench_shards_"))
    try:
        if checkpoint is not None and checkpoint.is_file():
            local = tmp / "best.pt"
            shutil.copy2(checkpoint, local)  # read a copy: never touch the run that trained it
            label = f"trained member {checkpoint.parent.parent.name}/{checkpoint.parent.name}"
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from _tiny_run import tiny_checkpoint

            local = tiny_checkpoint(tmp / "best.pt")
            label = "RANDOM tiny member (no trained checkpoint found: probabilities unrealistic)"
        member = load_members([local])[0]
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
        files = sorted((SAMPLE / "test").glob("*.jpg"))[:n]
        own, full = [], []
        for f in files:
            data = f.read_bytes()
            img = decode_jpeg(data, member.size, f.name)
            x = normalise(torch.from_numpy(img.transpose(2, 0, 1).copy())[None], "cpu")
            p = forward_probs(member.model, x, tta=True)
            own.append((p[0, 0].numpy() * 255).round().astype(np.uint8))
            h, w = jpeg_size(data, f.name)
            up = torch.nn.functional.interpolate(p, (h, w), mode="bilinear", align_corners=False)
            full.append((up[0, 0].numpy() * 255).round().astype(np.uint8))
        return label, own, member.size, full
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _line(name: str, per_image: float, note: str = "") -> str:
    total = per_image * N_TEST
    share = total / KERNEL_OUTPUT_LIMIT
    return f"  {name:<58} {per_image / 1e3:9.1f} kB/img {total / 1e9:8.2f} GB  ({share:6.1%} of 20 GB) {note}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--member", type=Path, default=DEFAULT_MEMBER, help="a member's best.pt")
    ap.add_argument("--masks", type=int, default=96, help="real train masks to measure")
    ap.add_argument("--test", type=int, default=33, help="real test images for the member")
    args = ap.parse_args()
    if not (SAMPLE / "train_masks.csv").is_file():
        raise SystemExit(
            f"no real sample at {SAMPLE}: set CARVANA_SAMPLE to the carvana_sample folder"
        )
    truth = pd.read_csv(SAMPLE / "train_masks.csv", keep_default_na=False)
    rows = [f"{i},{r}\n" for i, r in zip(truth["img"], truth["rle_mask"], strict=True)]
    shape = (1280, 1918)
    masks = [rle_decode(r, shape) for r in truth["rle_mask"][: args.masks]]
    soft = [soft_edge(m) for m in masks]
    label, own, size, full = member_probs(args.member, args.test)
    pred_rows = [
        f"t{k:05d}.jpg,{rle_encode((p > 127).astype(np.uint8))}\n" for k, p in enumerate(full)
    ]

    print(f"sample: {SAMPLE}; {len(rows)} real train masks, {len(full)} real test images")
    print(f"member: {label}, size {size[0]}x{size[1]}")
    print(f"{'form':<60} {'per image':>15} {'x 100,064':>11}")
    print("blended RLE rows (one per image, whatever the number of members):")
    print(_line("real train masks' RLE rows, deflate level 1", rle_row_bytes(rows)))
    print(_line("member's thresholded test masks, RLE rows, level 1", rle_row_bytes(pred_rows)))
    print("uint8 probability maps, PNG (one per member per image):")
    for level in (1, 9):
        print(
            _line(
                f"member's probs at its size {size[0]}x{size[1]}, PNG level {level}",
                png_bytes(own, level),
            )
        )
    for level in (1, 9):
        print(
            _line(
                f"member's probs upsampled to 1280x1918, PNG level {level}", png_bytes(full, level)
            )
        )
    for level in (1, 9):
        print(
            _line(
                f"full-res member stand-in (soft true edge), PNG level {level}",
                png_bytes(soft, level),
            )
        )
    print(
        "choice: shards store blended RLE rows (submission parts: the merge is a byte-level "
        "concatenation); probability maps are an option (keep_probs) for re-blending, per member"
    )


if __name__ == "__main__":
    main()
