"""Writing a pseudo-label folder: predict the test images, score each, keep the confident ones."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from kaggle_utils.atomic import atomic_write_json, atomic_write_text
from kaggle_utils.pseudo.folder import (
    COLUMNS,
    CSV_NAME,
    META_NAME,
    UNCERTAIN_BAND,
    uncertain_fraction,
)

if TYPE_CHECKING:
    from kaggle_utils.inference import Member


def _to_uint8(prob: np.ndarray) -> np.ndarray:
    if prob.dtype == np.uint8:
        return prob
    return np.clip(np.rint(np.asarray(prob, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _to_png(u8: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", u8)
    if not ok:
        raise RuntimeError("cv2.imencode failed on a probability map")
    return png.tobytes()


def write_from_probs(
    probs: Iterable[tuple[str, np.ndarray]],
    out_dir: str | os.PathLike,
    max_uncertain: float,
    meta: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Write (id, probability map) pairs as a pseudo-label folder; returns its CSV's rows.

    An image is kept when its `uncertain_fraction` is below `max_uncertain`; only kept maps are
    written. The folder is built beside `out_dir` and renamed into place (an old one replaced)."""
    if not 0 < max_uncertain <= 1:
        raise ValueError(f"max_uncertain={max_uncertain!r}: use a fraction in (0, 1]")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        rows, shape = [], None
        for image_id, prob in probs:
            prob = _to_uint8(prob)  # scored as written: the CSV describes what a stage reads
            fraction = uncertain_fraction(prob)
            kept = fraction < max_uncertain
            shape = shape or tuple(int(s) for s in prob.shape[:2])
            if kept:
                (tmp / f"{image_id}.png").write_bytes(_to_png(prob))
            rows.append((str(image_id), fraction, kept))
        table = pd.DataFrame(rows, columns=list(COLUMNS)).sort_values("id", kind="stable")
        info = {**(meta or {}), "max_uncertain": max_uncertain, "band": list(UNCERTAIN_BAND)}
        info |= {"size": list(shape or ()), "n_images": len(table), "n_kept": int(table.kept.sum())}
        atomic_write_json(tmp / META_NAME, info)
        atomic_write_text(tmp / CSV_NAME, table.to_csv(index=False))  # last: the folder's done
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return table.reset_index(drop=True)


def _replace_folder(new: Path, target: Path) -> None:
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def predict_test_probs(
    members: Sequence[Member],
    data: Any,
    ids: Sequence[str],
    size: tuple[int, int],
    *,
    tta: bool = True,
    batch_size: int = 4,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """(id, float32 (H, W) probability at `size`) per test image: each member at its own size,
    the weighted mean blended at `size` (`inference.ensemble_probs`, the forward 05/06 run);
    from test_hq when every member trained on hq photos, as 06 predicts."""
    from kaggle_utils.inference import ensemble_probs, normalise, pick_device
    from kaggle_utils.precision import precision_for
    from kaggle_utils.testset import TestImages

    dev = pick_device(device)
    precision = precision_for(dev, amp=True)  # mixed on CUDA, fp32 on the CPU, as 06 predicts
    sizes = sorted({m.size for m in members})
    size_index = [sizes.index(m.size) for m in members]
    for m in members:
        m.model.to(dev).eval()
    names = [f"{i}.jpg" for i in ids]
    loader = DataLoader(
        TestImages(data.image_store("test", all(m.info.get("hq") for m in members)), names, sizes),
        batch_size=batch_size,
        num_workers=num_workers,
    )
    for batch in loader:
        images = [normalise(batch[f"image{k}"], dev) for k in range(len(sizes))]
        probs = ensemble_probs(members, images, size_index, size, tta=tta, precision=precision)
        for i, p in zip(batch["index"].tolist(), probs[:, 0].float().cpu().numpy(), strict=True):
            yield str(ids[i]), p


def write_pseudo_labels(
    members: Sequence[Member],
    data: Any,
    out_dir: str | os.PathLike,
    size: tuple[int, int],
    max_uncertain: float = 0.01,
    *,
    limit: int | None = None,
    tta: bool = True,
    batch_size: int = 4,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """Predict the data's test images (the first `limit` in id order, or all) with `members`
    and write the confident ones as a pseudo-label folder at `size` (H, W); returns the CSV's rows.
    """
    from kaggle_utils.index import test_index

    ids = list(test_index(data)["id"])[: limit or None]
    if not ids:
        raise FileNotFoundError(f"no test images under {data.root}: nothing to pseudo-label")
    started = time.perf_counter()
    probs = predict_test_probs(
        members, data, ids, tuple(size), tta=tta, batch_size=batch_size,
        num_workers=num_workers, device=device,
    )  # fmt: skip
    meta = {
        "members": [
            {"name": m.name, "checkpoint": m.checkpoint, "weight": m.weight} for m in members
        ],
        "tta": tta,
        "data": str(data.root),
    }
    table = write_from_probs(probs, out_dir, max_uncertain, meta)
    print(
        f"pseudo-labels: {int(table.kept.sum())} of {len(table)} test images kept (uncertain "
        f"fraction < {max_uncertain:g}) at {size[0]}x{size[1]} in "
        f"{time.perf_counter() - started:.1f} s -> {out_dir}",
        flush=True,
    )
    return table
