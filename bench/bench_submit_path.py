"""Submit path end to end on the CPU: images/s and peak memory against the image count.

What `predict.predict_submission` does for a demo member (params/demo/unet_resnet18.yaml, final
stage, random weights: speed does not depend on them): read full-size 1918x1280 JPEGs from the test
folder (DataLoader workers, reduced DCT decode), forward with hflip TTA, upsample to 1280x1918,
threshold, RLE-encode in a thread, write the resumable gzip parts, join and validate. Baseline in
the same run: the Kaggle-kernel loop (full decode + resize, one image at a time, the pad/compare/
where/join RLE idiom, every row kept in a list, pandas to_csv at the end), the faster of torch's
default threads and one thread.

Peak memory: the same run at N and 4N images (test folders of symlinks to a few synthetic
full-size JPEGs, so any count costs no disk), each in a fresh process; flat peak RSS means the
100,064-image run needs the same memory.

    python bench/bench_submit_path.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_MEMBER = REPO / "params" / "demo" / "unet_resnet18.yaml"


def make_test_folder(root: Path, n: int, source_dir: Path) -> Path:
    """<root>/test_<n>/: test/ with n symlinked JPEGs and sample_submission.csv listing them."""
    out = root / f"test_{n}"
    if (out / "sample_submission.csv").exists():
        return out
    jpgs = sorted(source_dir.glob("*.jpg"))
    (out / "test").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{i // 16:012x}_{i % 16 + 1:02d}.jpg"
        link = out / "test" / name
        if not link.exists():
            link.symlink_to(jpgs[i % len(jpgs)])
        names.append(name)
    rows = "".join(f"{name},1 1\n" for name in names)
    (out / "sample_submission.csv").write_text("img,rle_mask\n" + rows)
    return out


def demo_checkpoint(path: Path) -> Path:
    """A random-weight checkpoint of the demo member's final stage."""
    import torch

    from kaggle_utils.checkpoint import save_checkpoint
    from kaggle_utils.config import load_member
    from kaggle_utils.models import build_model

    if path.exists():
        return path
    member = load_member(DEMO_MEMBER)
    torch.manual_seed(0)
    spec = member.model.spec()
    model = build_model(spec)
    last = len(member.stages) - 1
    size = member.stages[last].size
    stage = member.stage_name(last)
    extra = {"member": member.name, "stage": stage}
    return save_checkpoint(path, model, model_spec=spec, size=size, epoch=0, extra=extra)


def child(data_dir: str, ckpt: str, out: str) -> None:
    """One submit run in this fresh process; prints a JSON line with its numbers."""
    from kaggle_utils.inference import load_members
    from kaggle_utils.layout import find_data
    from kaggle_utils.predict import predict_submission

    members = load_members([ckpt])
    data = find_data(data_dir)
    t = time.perf_counter()
    result = predict_submission(
        members, data, out, batch_size=4, chunk_size=64, progress=False, device="cpu"
    )
    seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "n": result.n_images,
                "seconds": seconds,
                "images_per_s": result.n_images / seconds,
                "peak_rss_mb": rss,
                "peak_worker_rss_mb": workers,
            }
        )
    )


def run_child(data_dir: Path, ckpt: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(data_dir), str(ckpt), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if proc.returncode:
        raise SystemExit(f"child run failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kaggle_idiom_rle(img) -> str:
    import numpy as np

    pixels = np.concatenate([[0], img.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def baseline(data_dir: Path, ckpt: Path, n: int) -> float:
    """The Kaggle-kernel loop, one image at a time; images/s."""
    import cv2
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from kaggle_utils.checkpoint import load_member_model
    from kaggle_utils.dataset import IMAGENET_MEAN, IMAGENET_STD

    model, info = load_member_model(ckpt)
    h, w = info["size"]
    names = pd.read_csv(data_dir / "sample_submission.csv")["img"].tolist()[:n]
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    rows = []
    t = time.perf_counter()
    with torch.inference_mode():
        for name in names:
            bgr = cv2.imread(str(data_dir / "test" / name))
            rgb = cv2.cvtColor(cv2.resize(bgr, (w, h)), cv2.COLOR_BGR2RGB)
            x = torch.from_numpy(((rgb / 255.0 - mean) / std).astype(np.float32))
            x = x.permute(2, 0, 1)[None]
            p = (torch.sigmoid(model(x)) + torch.sigmoid(model(x.flip(-1))).flip(-1)) / 2
            p = F.interpolate(p, size=bgr.shape[:2], mode="bilinear", align_corners=False)
            mask = (p[0, 0] > 0.5).numpy().astype(np.uint8)
            rows.append((name, kaggle_idiom_rle(mask)))
        pd.DataFrame(rows, columns=["img", "rle_mask"]).to_csv(
            data_dir / "baseline.csv.gz", index=False
        )
    return len(names) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="16 vs 64 images instead of 256 vs 1024"
    )
    parser.add_argument("--child", nargs=3, metavar=("DATA", "CKPT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    from kaggle_utils.synthetic import generate

    n_small = 16 if args.quick else 256  # below ~256 images the allocator is still warming up
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_submit_"))
    gen = work / "synthetic"
    if not (gen / "test").is_dir():
        generate(gen, n_train_cars=1, n_test_cars=1, size=(1280, 1918), seed=3)
    source = gen / "test"
    ckpt = demo_checkpoint(work / "demo_member.pt")
    small = make_test_folder(work, n_small, source)
    large = make_test_folder(work, 4 * n_small, source)
    print(
        f"submit path, CPU ({os.cpu_count()} cores), demo member {DEMO_MEMBER.stem} "
        f"(random weights), hflip TTA, 1918x1280 JPEGs -> 1280x1918 masks"
    )
    r_small = run_child(small, ckpt, work / "sub_small.csv.gz")
    r_large = run_child(large, ckpt, work / "sub_large.csv.gz")
    import torch

    default_threads = torch.get_num_threads()
    base = baseline(small, ckpt, 8)
    torch.set_num_threads(1)  # on a busy 2-core machine one thread can be much faster: be fair
    base = max(base, baseline(small, ckpt, 8))
    torch.set_num_threads(default_threads)
    print(
        f"submit path          : {r_large['images_per_s']:6.2f} images/s ({r_large['n']} images)"
        f"  vs Kaggle-kernel loop {base:6.2f} images/s  ({r_large['images_per_s'] / base:.2f}x)"
    )
    print(
        f"peak RSS main process: {r_small['peak_rss_mb']:6.0f} MB at {r_small['n']} images, "
        f"{r_large['peak_rss_mb']:6.0f} MB at {r_large['n']} images "
        f"(x{r_large['peak_rss_mb'] / r_small['peak_rss_mb']:.2f} for x4 images; "
        f"largest decode worker {r_large['peak_worker_rss_mb']:.0f} MB)"
    )
    rate = r_large["images_per_s"]
    print(
        f"100,064 images at this rate on this CPU: {100064 / rate / 3600:.1f} h (GPU: see gpu_predict_throughput.py)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
