"""Reading random JPEGs from Kaggle's download: folder, zip, zip STORED in the outer zip, zip
DEFLATED in the outer zip.

    python bench/bench_outer_zip.py [--images 1024] [--reads 40] [--quick]

Writes full-size synthetic images (kaggle_utils.synthetic.generate, 1280x1918), repeated under new
names up to ``--images`` (size, not content, is what matters here), then reads ``--reads`` random
members each way and prints ms per image. The stored case goes through layout.FileStore (the
file window); the deflated case through zipfile's seekable member stream, the only way to seek in
a compressed member: each backward seek re-inflates from the member's start, so its cost grows
with the archive; the line below extrapolates to Kaggle's 5,088 train / 100,064 test images.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kaggle_utils.layout import OUTER_ZIP, FileStore  # noqa: E402
from kaggle_utils.synthetic import generate  # noqa: E402

KAGGLE_TRAIN, KAGGLE_TEST = 5_088, 100_064


def build(tmp: Path, n_images: int) -> tuple[Path, list[str]]:
    """tmp/train/ (n JPEGs), tmp/train.zip, tmp/stored/OUTER, tmp/deflated/OUTER."""
    src = generate(tmp / "synthetic", n_train_cars=1, n_test_cars=0)
    jpegs = sorted((src / "train").glob("*.jpg"))
    folder = tmp / "train"
    folder.mkdir()
    names = [f"{i:06d}_{j % 16 + 1:02d}.jpg" for i, j in enumerate(range(n_images))]
    for i, name in enumerate(names):
        shutil.copyfile(jpegs[i % len(jpegs)], folder / name)
    with zipfile.ZipFile(tmp / "train.zip", "w", zipfile.ZIP_STORED) as zf:
        for name in names:
            zf.write(folder / name, f"train/{name}")
    for kind, how in (("stored", zipfile.ZIP_STORED), ("deflated", zipfile.ZIP_DEFLATED)):
        (tmp / kind).mkdir()
        with zipfile.ZipFile(tmp / kind / OUTER_ZIP, "w", how, allowZip64=True) as zf:
            zf.write(tmp / "train.zip", "train.zip")
    return tmp, names


def time_reads(read, names: list[str]) -> float:
    """ms per image, opening included (what a fresh DataLoader worker pays)."""
    start = time.perf_counter()
    for name in names:
        assert read(name)[:2] == b"\xff\xd8"
    return (time.perf_counter() - start) * 1e3 / len(names)


def deflated_reader(outer: Path):
    """The inner zip read through zipfile's seekable stream of the compressed member."""
    stream = zipfile.ZipFile(outer).open("train.zip")  # noqa: SIM115 (open while reading)
    inner = zipfile.ZipFile(stream)
    return lambda name: inner.read(f"train/{name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--reads", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="256 images, 12 reads")
    args = ap.parse_args(argv)
    n_images, n_reads = (256, 12) if args.quick else (args.images, args.reads)
    with tempfile.TemporaryDirectory(prefix="bench_outer_zip_") as d:
        tmp, names = build(Path(d), n_images)
        picks = random.Random(0).sample(names, min(n_reads, len(names)))
        size_mb = (tmp / "train.zip").stat().st_size / 1e6
        print(f"{n_images} full-size JPEGs, train.zip {size_mb:.0f} MB, {len(picks)} random reads")
        rows = {
            "folder": lambda: lambda n: (tmp / "train" / n).read_bytes(),
            "inner zip (loose train.zip)": lambda: FileStore(tmp / "train.zip").read_bytes,
            "stored in outer (read in place)": lambda: (
                FileStore(tmp / "stored" / OUTER_ZIP, inner="train.zip").read_bytes
            ),
            "deflated in outer (seek re-inflates)": lambda: deflated_reader(
                tmp / "deflated" / OUTER_ZIP
            ),
        }
        for label, make in rows.items():
            start = time.perf_counter()
            read = make()
            open_ms = (time.perf_counter() - start) * 1e3
            ms = time_reads(read, picks)
            print(f"  {label:38s} open {open_ms:8.1f} ms   {ms:9.2f} ms/image")
            if label.startswith("deflated"):
                for what, n in (("train", KAGGLE_TRAIN), ("test", KAGGLE_TEST)):
                    est = ms * n / n_images
                    print(f"  {'':38s} ~{est / 1e3:7.1f} s/image at Kaggle's {n:,} {what} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
