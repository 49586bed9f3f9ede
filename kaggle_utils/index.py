"""Sample index: one row per image (id, car, angle, store names) with the car's metadata joined.

Folds are split by car (16 views of one car must not straddle train and validation), and EDA groups
by make/year, so the index carries both.
"""

from __future__ import annotations

import re

import pandas as pd

from kaggle_utils.layout import CompetitionData, FileStore

_NAME = re.compile(r"^(?P<car>.+)_(?P<angle>\d+)\.jpg$", re.IGNORECASE)
META_COLUMNS = ("make", "year", "model")


def _images(store: FileStore) -> pd.DataFrame:
    rows = []
    for name in store.names():
        if not name.lower().endswith(".jpg"):
            continue
        m = _NAME.match(name)
        if m is None:
            raise ValueError(
                f"unexpected image name {store.describe(name)}: expected <car>_<NN>.jpg"
            )
        rows.append((name[:-4], m["car"], int(m["angle"]), name))
    df = pd.DataFrame(rows, columns=["id", "car", "angle", "image"])
    if df.empty:
        raise ValueError(f"no <car>_<NN>.jpg images in {store.path}")
    return df.sort_values("id", kind="stable").reset_index(drop=True)


def _join_metadata(data: CompetitionData, df: pd.DataFrame) -> pd.DataFrame:
    if data.has_csv("metadata"):
        meta = data.read_csv("metadata")
        if "id" not in meta.columns:
            raise ValueError(f"{data.csv_path('metadata')} has no 'id' column")
        keep = [c for c in META_COLUMNS if c in meta.columns]
        meta = meta[["id", *keep]].drop_duplicates("id").rename(columns={"id": "car"})
        meta["car"] = meta["car"].astype(str)
        df = df.merge(meta, on="car", how="left")
    for col in META_COLUMNS:
        if col not in df.columns:
            df[col] = pd.NA
    return df


def train_index(data: CompetitionData, hq: bool = False) -> pd.DataFrame:
    """Columns: id, car, angle, image, mask (GIF name or None), make, year, model.

    ``mask`` is None where the GIF is absent; ``data.load_mask`` then falls back to
    train_masks.csv.
    """
    store = data.image_store("train", hq)
    df = _images(store)
    masks = data.train_masks
    if masks is not None:
        have = set(masks.names())
        names = [data.mask_name(i) for i in df["id"]]
        df["mask"] = [n if n in have else None for n in names]
    else:
        df["mask"] = None
    df = _join_metadata(data, df)
    return df[["id", "car", "angle", "image", "mask", *META_COLUMNS]]


def test_index(data: CompetitionData, hq: bool = False) -> pd.DataFrame:
    """Columns: id, car, angle, image, make, year, model."""
    df = _join_metadata(data, _images(data.image_store("test", hq)))
    return df[["id", "car", "angle", "image", *META_COLUMNS]]


test_index.__test__ = False  # not a pytest test when imported into a test module
