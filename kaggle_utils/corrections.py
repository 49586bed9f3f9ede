"""Corrected masks: replacement masks for a few train images, applied over the competition's.

Some of Carvana's masks are wrong (a missing antenna, a wheel cut off); the forum published fixed
ones and the 3rd-place team trained on 31 of them. A corrections source is either a folder (or a
.zip) of ``<id>_mask.gif`` files, as in ``train_masks/``, or a CSV of ``img,rle_mask`` rows in
Carvana's row-major RLE (``.csv``, ``.csv.gz``, ``.csv.zip``, or one CSV inside a .zip).

`load_corrections` reads and checks the whole source against the data before any work (every id a
train image, every mask decodable at the image's size) and fails in one line naming the file and
row or id. `apply_corrections` returns a copy of the data whose ``load_mask`` gives the corrected
mask for exactly those ids (train and validation masks alike, from GIFs or train_masks.csv).
The source's digest (`corrections_digest`, its content, not its path) enters a member's
params_hash, so a changed correction retrains the stages it touched.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_utils import environment
from kaggle_utils.constants import MASK_SHAPE
from kaggle_utils.imageio import ImageDecodeError, decode_mask_gif
from kaggle_utils.layout import CompetitionData, FileStore
from kaggle_utils.layout import _stem as _stem  # the image id without .jpg, as layout names it
from kaggle_utils.rle import rle_decode

__all__ = [
    "Corrections",
    "CorrectionsError",
    "apply_corrections",
    "corrections_digest",
    "corrections_record",
    "corrections_report",
    "load_corrections",
    "resolve_source",
]

GIF_NAME = re.compile(r"^(?P<id>.+)_mask\.gif$", re.IGNORECASE)


class CorrectionsError(ValueError):
    """A corrections source that cannot be applied; the message names the file, row or id."""


@dataclass(frozen=True)
class Corrections:
    """Replacement masks by image id: GIF bytes (``kind="gif"``) or RLE strings (``"rle"``),
    kept as read, decoded on demand (a few dozen masks: cheap), picklable for loader workers."""

    source: Path
    kind: str
    payload: dict[str, bytes | str]
    shapes: dict[str, tuple[int, int]]
    digest: str

    @property
    def ids(self) -> list[str]:
        return sorted(self.payload)

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and _stem(image_id) in self.payload

    def __len__(self) -> int:
        return len(self.payload)

    def mask(self, image_id: str) -> np.ndarray:
        """The corrected uint8 {0, 1} mask at the image's full size."""
        image_id = _stem(image_id)
        value = self.payload[image_id]
        if self.kind == "gif":
            return decode_mask_gif(value, name=f"{self.source}/{image_id}_mask.gif")
        return rle_decode(value, self.shapes[image_id], image_id=image_id)


def resolve_source(path: str | os.PathLike) -> Path:
    """The corrections file or folder: absolute as given; relative under the project root, then
    the cwd (as ``data_dir``), and on Kaggle also in the input mounts (an attached dataset)."""
    tried = environment.path_candidates(path)
    if environment.on_kaggle():
        tried.append(environment.find_input(path))
    for cand in tried:
        if cand.exists():
            return cand
    raise FileNotFoundError(
        f"corrected_masks: {path} not found (tried {' and '.join(map(str, tried))}); give a folder "
        "of <id>_mask.gif files or a CSV of img,rle_mask rows, absolute or relative to the project "
        "root"
    )


def _is_csv(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in (".csv", ".csv.gz", ".csv.zip", ".gz"))


def _read_source(path: Path) -> tuple[str, dict[str, bytes | str], dict[str, str]]:
    """(kind, id -> GIF bytes or RLE string, id -> where it is for messages), checked for its
    own form (names, columns, one entry per id)."""
    if _is_csv(path):
        return ("rle", *_read_csv(path, str(path)))
    store = FileStore(path)  # a folder or a .zip read in place
    names = store.names()
    gifs = [n for n in names if n.lower().endswith(".gif")]
    csvs = [n for n in names if n.lower().endswith(".csv")]
    if not gifs and len(csvs) == 1:
        return ("rle", *_read_csv(io.BytesIO(store.read_bytes(csvs[0])), store.describe(csvs[0])))
    if not gifs:
        raise CorrectionsError(
            f"corrected_masks {store.location}: no <id>_mask.gif files (found {len(names)} other "
            "files); put the replacement GIFs there, named as in train_masks/, or give a CSV of "
            "img,rle_mask rows"
        )
    payload: dict[str, bytes | str] = {}
    labels: dict[str, str] = {}
    for name in gifs:
        m = GIF_NAME.match(name)
        if m is None:
            raise CorrectionsError(
                f"corrected_masks {store.describe(name)}: not named <id>_mask.gif; rename it as "
                "in train_masks/ (e.g. 00087a6bd4dc_01_mask.gif)"
            )
        payload[m["id"]] = store.read_bytes(name)
        labels[m["id"]] = store.describe(name)
    return "gif", payload, labels


def _read_csv(src: Path | io.BytesIO, where: str) -> tuple[dict, dict[str, str]]:
    """A CSV of img,rle_mask rows: (id -> RLE, id -> "<file>, line N (<id>.jpg)")."""
    try:
        frame = pd.read_csv(src, dtype=str, keep_default_na=False)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pandas' parser errors are ValueError
        detail = " ".join(str(err).split())
        raise CorrectionsError(
            f"corrected_masks {where}: not a readable CSV ({type(err).__name__}: {detail}); "
            "write img,rle_mask rows as in train_masks.csv"
        ) from None
    missing = {"img", "rle_mask"} - set(frame.columns)
    if missing:
        raise CorrectionsError(
            f"corrected_masks {where}: lacks columns {sorted(missing)} (has "
            f"{list(frame.columns)}); write a header img,rle_mask as in train_masks.csv"
        )
    payload: dict[str, bytes | str] = {}
    labels: dict[str, str] = {}
    for row, (img, rle) in enumerate(zip(frame["img"], frame["rle_mask"], strict=True), start=2):
        image_id = _stem(img.strip())
        if not image_id:
            raise CorrectionsError(
                f"corrected_masks {where}, line {row}: empty img; name the image"
            )
        if image_id in payload:
            raise CorrectionsError(
                f"corrected_masks {where}, line {row}: {img!r} appears twice; keep one row per image"
            )
        payload[image_id] = rle.strip()
        labels[image_id] = f"{where}, line {row} ({image_id}.jpg)"
    return payload, labels


def _digest(kind: str, payload: dict[str, bytes | str]) -> str:
    h = hashlib.sha256(kind.encode())
    for image_id in sorted(payload):
        value = payload[image_id]
        h.update(b"\0" + image_id.encode() + b"\0")
        h.update(value if isinstance(value, bytes) else value.encode())
    return h.hexdigest()[:16]


def corrections_digest(path: str | os.PathLike) -> str:
    """16 hex digits of the source's content (ids and their masks as stored; not its path, file
    order or file times): what a member's params_hash holds for ``corrected_masks``."""
    kind, payload, _ = _read_source(resolve_source(path))
    return _digest(kind, payload)


def load_corrections(path: str | os.PathLike, data: CompetitionData) -> Corrections:
    """Read the source and check every entry against ``data`` before any work: each id is a
    train image, each mask decodes at that image's size. CorrectionsError in one line otherwise."""
    source = resolve_source(path)
    kind, payload, labels = _read_source(source)
    train_ids = _train_ids(data)
    shapes: dict[str, tuple[int, int]] = {}
    for image_id, value in payload.items():
        label = labels[image_id]
        if image_id not in train_ids:
            raise CorrectionsError(
                f"corrected_masks {label}: {image_id!r} is not a train image of {data.root}; fix "
                "the id (<car>_<angle>, e.g. 00087a6bd4dc_01) or remove the entry"
            )
        shapes[image_id] = _image_shape(data, image_id)
        _check_mask(kind, value, shapes[image_id], image_id, label)
    return Corrections(source, kind, payload, shapes, _digest(kind, payload))


def _train_ids(data: CompetitionData) -> set[str]:
    store = data.train if data.train is not None else data.image_store("train", hq=True)
    return {_stem(n) for n in store.names() if n.lower().endswith(".jpg")}


def _image_shape(data: CompetitionData, image_id: str) -> tuple[int, int]:
    """The image's (H, W) from its JPEG header; the competition's mask shape with train_hq only
    (its photos are larger than the masks)."""
    if data.train is None:
        return MASK_SHAPE
    return data.image_shape(image_id)


def _check_mask(kind: str, value: bytes | str, shape: tuple[int, int], image_id: str, label: str):
    try:
        if kind == "rle":
            rle_decode(value, shape, image_id=image_id)
            return
        mask = decode_mask_gif(value, name=label)
    except (ValueError, ImageDecodeError) as err:
        fix = "write the image's mask in Carvana's row-major RLE" if kind == "rle" else ""
        raise CorrectionsError(
            f"corrected_masks {label}: {err}{'; ' + fix if fix else ''}"
        ) from None
    if mask.shape != shape:
        raise CorrectionsError(
            f"corrected_masks {label}: mask is {mask.shape[0]}x{mask.shape[1]}, its image "
            f"{shape[0]}x{shape[1]}; save the mask at the image's full size"
        )


def apply_corrections(data: CompetitionData, corrections: Corrections | None) -> CompetitionData:
    """A copy of ``data`` whose masks of ``corrections``' ids are the corrected ones (the given
    data is left as it is, so the report can compare old with new)."""
    out = copy.copy(data)
    out.corrections = corrections
    return out


def corrections_record(corrections: Corrections | None, train_ids, val_ids) -> dict | None:
    """What metrics.json says about a stage's corrections (None without any)."""
    if corrections is None:
        return None
    ids = set(corrections.ids)
    return {
        "source": str(corrections.source),
        "sha256": corrections.digest,
        "count": len(ids),
        "ids": corrections.ids,
        "train_ids": sorted(ids & {str(i) for i in train_ids}),
        "val_ids": sorted(ids & {str(i) for i in val_ids}),
    }


def with_stage_corrections(data: CompetitionData, records: list[dict | None]) -> CompetitionData:
    """The data 05 scores an ensemble on: the masks its stages trained and validated against.

    records: each stage's metrics.json ``corrected_masks`` (None: the competition's masks). One
    set of corrections is applied to all; stages trained on different corrections (or some on
    none) are refused, naming the sources, since their OOF Dice would each mean another truth."""
    kinds = {None if r is None else r["sha256"]: r for r in records}
    if len(kinds) > 1:
        named = sorted(str(r["source"]) if r else "the competition's masks" for r in kinds.values())
        raise CorrectionsError(
            f"the stages to ensemble were validated on different masks ({', '.join(named)}): "
            "train every member with the same corrected_masks (or none) to compare their OOF"
        )
    record = next(iter(kinds.values()), None)
    if record is None:
        return data
    corrections = load_corrections(record["source"], data)
    if corrections.digest != record["sha256"]:
        raise CorrectionsError(
            f"{record['source']} changed since the stages trained on it (content hash "
            f"{corrections.digest} vs {record['sha256']}): retrain them, or restore the file"
        )
    return apply_corrections(data, corrections)


def corrections_report(data: CompetitionData, corrections: Corrections) -> pd.DataFrame:
    """Per corrected id: car pixels of the competition's mask and the corrected one, pixels added
    and removed, and the Dice between the two (NaN old values where the competition has none)."""
    original = apply_corrections(data, None)
    rows = []
    for image_id in corrections.ids:
        new = corrections.mask(image_id).astype(bool)
        try:
            old = original.load_mask(image_id).astype(bool)
        except FileNotFoundError:
            old = None
        row = {"id": image_id, "pixels_new": int(new.sum())}
        if old is None:
            row.update(pixels_old=np.nan, added=np.nan, removed=np.nan, dice_old_new=np.nan)
        else:
            both = int(np.count_nonzero(old & new))
            total = int(old.sum()) + int(new.sum())
            row.update(
                pixels_old=int(old.sum()),
                added=int(np.count_nonzero(new & ~old)),
                removed=int(np.count_nonzero(old & ~new)),
                dice_old_new=2 * both / total if total else 1.0,
            )
        rows.append(row)
    cols = ["id", "pixels_old", "pixels_new", "added", "removed", "dice_old_new"]
    return pd.DataFrame(rows, columns=cols)
