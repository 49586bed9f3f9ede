"""Pseudo-labels: test images labelled by an ensemble's confident predictions, trained on.

The 4th-place Carvana team pretrained on the predicted test set; the seed tried pseudo-labels and
found them unhelpful, so they are a stage switch (`pseudo_labels:` in a stage), never a default.

Two halves, one concern (what a pseudo-label folder is):

- `write_pseudo_labels`: predict the test images with an ensemble's members (the forward pass
  of 05/06: `inference.ensemble_probs` on `testset.TestImages`, mean blend, hflip TTA), score each
  image's confidence, and write the confident ones' probability maps (uint8 PNG, 0..255 =
  probability, at a stated size) plus `pseudo_labels.csv` (id, uncertain_fraction, kept) and
  `pseudo_labels.json` (how they were made) into a folder, atomically (a temporary folder renamed
  into place: a killed run leaves the old folder or the new one, never a mix).
- `load_pseudo_labels` + `PseudoLabelDataset`: what a stage with `pseudo_labels:` adds to its
  training set (never to validation): the kept test images from the TEST store with their soft
  maps as targets, augmented by the training set's own transform; `with_pseudo_labels`
  concatenates them with the training images.

The confidence statistic is the fraction of an image's pixels whose probability lies in the open
band (0.1, 0.9). A good prediction is near 0 or 1 everywhere but on a one-or-two-pixel boundary
ring, so its fraction is small (the ring's area over the frame's); a confused region (shadow,
window, wheel arch) or a blurred boundary widens the band and the fraction grows. Below the
threshold (e.g. 0.01 of the frame) the image's label is almost all confident pixels, and the soft
map keeps the boundary's uncertainty as the target's own. The fraction is measured on the map as
written (the stated size), so the CSV describes exactly what a stage trains on.

Where folders live: a relative `dir` (stage key) or `--out` (CLI) is under the run folder.
A stage's params_hash holds the key as written, not the folder's content: write each round of
pseudo-labels to a new folder, or a finished stage is not retrained on the new labels.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from kaggle_utils.atomic import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from kaggle_utils.config.member import PseudoLabelsConfig
    from kaggle_utils.inference import Member

__all__ = [
    "CSV_NAME",
    "UNCERTAIN_BAND",
    "PseudoLabelDataset",
    "PseudoLabels",
    "load_pseudo_labels",
    "pseudo_dir",
    "uncertain_fraction",
    "with_pseudo_labels",
    "write_from_probs",
    "write_pseudo_labels",
]

UNCERTAIN_BAND = (0.1, 0.9)  # open band: a probability strictly inside it is "uncertain"
CSV_NAME = "pseudo_labels.csv"
META_NAME = "pseudo_labels.json"
COLUMNS = ("id", "uncertain_fraction", "kept")


def pseudo_dir(folder: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """A pseudo-label folder as the stage key or CLI names it: relative paths under run_dir."""
    path = Path(folder)
    return path if path.is_absolute() else Path(run_dir) / path


# --------------------------------------------------------------------------------------------------
# the confidence rule


def uncertain_fraction(prob: np.ndarray | torch.Tensor) -> float:
    """Fraction of pixels with probability strictly inside UNCERTAIN_BAND (float in [0, 1])
    or uint8 0..255 maps (divided by 255 first). See the module docstring for why."""
    p = prob.detach().cpu().numpy() if isinstance(prob, torch.Tensor) else np.asarray(prob)
    if p.size == 0:
        raise ValueError("uncertain_fraction of an empty probability map")
    if p.dtype == np.uint8:
        p = p.astype(np.float32) / 255.0
    lo, hi = UNCERTAIN_BAND
    return float(np.count_nonzero((p > lo) & (p < hi)) / p.size)


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


# --------------------------------------------------------------------------------------------------
# predicting the test set


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


# --------------------------------------------------------------------------------------------------
# reading a folder for a stage


@dataclass
class PseudoLabels:
    """The pseudo-labelled test images one stage trains on (most confident first)."""

    folder: Path
    ids: list[str]
    fractions: list[float]

    def record(self) -> dict[str, Any]:
        """What metrics.json keeps of them."""
        worst = max(self.fractions) if self.fractions else None
        return {
            "dir": str(self.folder),
            "n": len(self.ids),
            "ids": list(self.ids),
            "max_uncertain_fraction": worst,
        }


def _read_table(folder: Path, where: str) -> pd.DataFrame:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{where}: pseudo-label folder {folder} not found; write it first with "
            f"`python -m kaggle_utils.pseudo --run-dir RUN --out {folder.name}`"
        )
    csv = folder / CSV_NAME
    if not csv.is_file():
        raise FileNotFoundError(
            f"{where}: {folder} has no {CSV_NAME} (an unfinished or foreign folder); write it "
            "again with `python -m kaggle_utils.pseudo`"
        )
    table = pd.read_csv(csv, dtype={"id": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{csv}: columns {missing} missing; expected {', '.join(COLUMNS)}")
    table["kept"] = table["kept"].astype(str).str.lower().isin(("true", "1"))
    table["uncertain_fraction"] = pd.to_numeric(table["uncertain_fraction"], errors="raise")
    return table


def _check_ids(table: pd.DataFrame, csv: Path, data: Any, val_cars: set[str]) -> None:
    """Every row a test image, none a training one, none of a validation car; kept maps exist."""
    from kaggle_utils.index import test_index, train_index

    train_ids = set(train_index(data)["id"])
    tests = test_index(data).set_index("id")["car"]
    for row, (image_id, kept) in enumerate(zip(table["id"], table["kept"], strict=True)):
        line = f"{csv}: row {row + 1} (line {row + 2}), id {image_id}"
        if image_id in train_ids:
            raise ValueError(
                f"{line} is a training image: pseudo-labels are test images only; remove the "
                "row or write the folder again with `python -m kaggle_utils.pseudo`"
            )
        if image_id not in tests.index:
            raise ValueError(f"{line} is not a test image of {data.root}; write the folder again")
        if tests[image_id] in val_cars:
            raise ValueError(f"{line}: its car {tests[image_id]} is a validation car; remove it")
        if kept and not (csv.parent / f"{image_id}.png").is_file():
            raise FileNotFoundError(f"{line} is kept but {image_id}.png is missing; write again")


def load_pseudo_labels(
    cfg: PseudoLabelsConfig,
    run_dir: str | os.PathLike,
    data: Any,
    val_index: pd.DataFrame,
    where: str = "pseudo_labels",
) -> PseudoLabels:
    """The stage key's pseudo-labels, validated against the data: the folder and its CSV exist,
    every id is a test image (a training id is refused naming the CSV's row), no validation car;
    then the kept rows below `max_uncertain`, most confident first, at most `max_images`."""
    folder = pseudo_dir(cfg.dir, run_dir)
    table = _read_table(folder, where)
    _check_ids(table, folder / CSV_NAME, data, set(map(str, val_index["car"])))
    chosen = table[table["kept"]]
    if cfg.max_uncertain is not None:
        chosen = chosen[chosen["uncertain_fraction"] < cfg.max_uncertain]
    chosen = chosen.sort_values(["uncertain_fraction", "id"], kind="stable").head(
        cfg.max_images or len(chosen)
    )
    if chosen.empty:
        raise ValueError(
            f"{where}: no image of {folder / CSV_NAME} is kept below max_uncertain="
            f"{cfg.max_uncertain}; raise it, or write the folder with a higher --max-uncertain"
        )
    return PseudoLabels(folder, list(chosen["id"]), [float(f) for f in chosen.uncertain_fraction])


# --------------------------------------------------------------------------------------------------
# the training set


class PseudoLabelDataset(Dataset):
    """``{"image", "mask", "id"}`` like the training sets: test images (TEST store) at `size`
    with their pseudo-label maps as targets, soft (0..1) or thresholded at one half.

    `transform` is the training set's own (same augmentations; `SeededDataset` seeds it)."""

    def __init__(
        self,
        data: Any,
        labels: PseudoLabels,
        size: tuple[int, int],
        transform: Any = None,
        soft_masks: bool = True,
        hq: bool = False,
    ):
        self.data, self.labels, self.ids = data, labels, list(labels.ids)
        self.size = (int(size[0]), int(size[1]))
        self.transform, self.soft_masks, self.hq = transform, soft_masks, hq

    def __len__(self) -> int:
        return len(self.ids)

    def target(self, image_id: str) -> np.ndarray:
        """The map at the training size: uint8 0..255 (soft) or {0, 1}, as `resize_mask` gives."""
        path = self.labels.folder / f"{image_id}.png"
        prob = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if prob is None:
            raise FileNotFoundError(f"cannot read pseudo-label map {path}")
        h, w = self.size
        if prob.shape != (h, w):
            shrink = prob.shape[0] > h
            prob = cv2.resize(
                prob, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            )
        return prob if self.soft_masks else (prob >= 128).astype(np.uint8)

    def __getitem__(self, i: int) -> dict:
        from kaggle_utils.dataset import mask_tensor, normalize_image

        image_id = self.ids[i]
        image = self.data.load_image(image_id, "test", self.size, hq=self.hq)
        mask = self.target(image_id)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": normalize_image(image),
            "mask": mask_tensor(mask, self.soft_masks),
            "id": image_id,
        }


class _TrainAndPseudo(ConcatDataset):
    """The training images then the pseudo-labelled ones; passes `SeededDataset`'s per-worker
    seeding mark on to the parts that keep one (`CarvanaDataset`)."""

    @property
    def _seeded_pid(self) -> int | None:
        return getattr(self.datasets[0], "_seeded_pid", None)

    @_seeded_pid.setter
    def _seeded_pid(self, pid: int | None) -> None:
        for part in self.datasets:
            if hasattr(part, "_seeded_pid"):
                part._seeded_pid = pid


def with_pseudo_labels(train_ds: Any, pseudo: PseudoLabelDataset) -> Any:
    """`build_datasets`' training set (a `SeededDataset`) with the pseudo-labelled images
    appended: one set, one seed rule, one sampler over both."""
    train_ds.base = _TrainAndPseudo([train_ds.base, pseudo])
    return train_ds


def add_to_stage(
    train_ds: Any,
    cfg: PseudoLabelsConfig,
    run_dir: str | os.PathLike,
    data: Any,
    val_index: pd.DataFrame,
    size: tuple[int, int],
    soft_masks: bool,
    where: str,
    hq: bool = False,
) -> PseudoLabels:
    """Load and check the stage key's pseudo-labels and append them to its training set (the
    test_hq photos when the member trains on hq)."""
    labels = load_pseudo_labels(cfg, run_dir, data, val_index, where)
    pseudo = PseudoLabelDataset(data, labels, size, train_ds.transform, soft_masks, hq)
    with_pseudo_labels(train_ds, pseudo)
    return labels


# --------------------------------------------------------------------------------------------------
# CLI


def _members(args: argparse.Namespace, run_dir: Path, device: Any) -> list[Member]:
    from kaggle_utils.inference import load_members, members_from_ensemble

    if args.checkpoint:
        return load_members(args.checkpoint, device=device)
    if args.ensemble:
        from kaggle_utils.ensemble.spec import read_ensemble

        return members_from_ensemble(read_ensemble(args.ensemble), run_dir, device=device)
    from kaggle_utils.ensemble.spec import submit_ensemble

    spec, base = submit_ensemble(run_dir)  # 05's ensemble.yaml, else each member's best stage
    return members_from_ensemble(spec, base, device=device)


def main(argv: list[str] | None = None) -> int:
    """`python -m kaggle_utils.pseudo --run-dir RUN --out pseudo/r1 --size 256x384`."""
    from kaggle_utils.config.member import parse_size
    from kaggle_utils.environment import resolve_run_dir
    from kaggle_utils.inference import pick_device
    from kaggle_utils.layout import find_data

    ap = argparse.ArgumentParser(prog="python -m kaggle_utils.pseudo", description=__doc__)
    ap.add_argument("--run-dir", required=True, help="the run folder (members, ensemble.yaml)")
    ap.add_argument("--out", required=True, help="the folder to write; relative: under --run-dir")
    ap.add_argument("--size", required=True, help="HxW of the maps, e.g. the stage's size")
    ap.add_argument("--max-uncertain", type=float, default=0.01)
    ap.add_argument("--ensemble", help="an ensemble.yaml (default: the run's, as 06 picks it)")
    ap.add_argument("--checkpoint", action="append", help="member best.pt (repeatable)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=None, help="the first N test images only")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    run_dir = resolve_run_dir(args.run_dir)
    device = pick_device(args.device)
    members = _members(args, run_dir, device)
    write_pseudo_labels(
        members, find_data(args.data_dir), pseudo_dir(args.out, run_dir), parse_size(args.size),
        args.max_uncertain, limit=args.limit, tta=not args.no_tta,
        batch_size=args.batch_size, device=device,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
