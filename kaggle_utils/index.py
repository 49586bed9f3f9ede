"""Sample index: one row per image (id, car, angle, store names) with the car's metadata joined.

Folds are split by car (16 views of one car must not straddle train and validation), and EDA groups
by make/year, so the index carries both.
"""

from __future__ import annotations

import re

import pandas as pd

from kaggle_utils.layout import CSV_MASKS, CompetitionData, FileStore

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


def report(line: str) -> None:
    """Print one line about a dropped or substituted input (no input changes silently)."""
    print(line, flush=True)


def _examples(items: list[str], k: int = 3) -> str:
    return ", ".join(items[:k]) + (", ..." if len(items) > k else "")


def _join_metadata(data: CompetitionData, df: pd.DataFrame, what: str) -> pd.DataFrame:
    if data.has_csv("metadata"):
        path = data.csv_path("metadata")
        meta = data.read_csv("metadata")
        if "id" not in meta.columns:
            raise ValueError(
                f"{path} has no 'id' column (columns: {list(meta.columns)}); it must list one "
                "row per car: id,year,make,model,... as Kaggle ships it"
            )
        keep = [c for c in META_COLUMNS if c in meta.columns]
        lacking = [c for c in META_COLUMNS if c not in meta.columns]
        if lacking:
            names = ", ".join(repr(c) for c in lacking)
            report(f"{path.name} has no {names} column: {what} have no {', '.join(lacking)}")
        meta = meta[["id", *keep]].drop_duplicates("id").rename(columns={"id": "car"})
        meta["car"] = meta["car"].astype(str)
        unknown = sorted(set(df["car"]) - set(meta["car"]))
        if unknown:
            report(
                f"{len(unknown)} cars of the {what} are not in {path.name} (e.g. "
                f"{_examples(unknown)}): their make, year and model are empty"
            )
        df = df.merge(meta, on="car", how="left")
    else:
        report(f"no metadata.csv in {data.root}: the {what} have no make, year or model")
    for col in META_COLUMNS:
        if col not in df.columns:
            df[col] = pd.NA
    return df


def _mask_column(data: CompetitionData, df: pd.DataFrame) -> list[str | None]:
    sources = data.mask_sources(df["id"].tolist())
    if data.train_masks is not None and data.mask_source == "auto":
        from_csv = [i for i, s in zip(df["id"], sources, strict=True) if s == CSV_MASKS]
        if from_csv:
            report(
                f"{len(from_csv)} images have no GIF in {data.train_masks.path} (e.g. "
                f"{_examples(from_csv)}): their masks come from their {CSV_MASKS} rows"
            )
    return sources


def train_index(data: CompetitionData, hq: bool = False) -> pd.DataFrame:
    """Columns: id, car, angle, image, mask, make, year, model.

    ``mask`` says what holds the image's mask (``CompetitionData.mask_sources``): the GIF's
    name, ``"train_masks.csv"`` where only the CSV's row does, None where neither (training
    drops those rows through ``with_masks``, saying how many). A missing metadata file, column
    or car is reported in one line each, never silently.
    """
    store = data.image_store("train", hq)
    df = _images(store)
    df["mask"] = _mask_column(data, df)
    df = _join_metadata(data, df, "training images")
    return df[["id", "car", "angle", "image", "mask", *META_COLUMNS]]


def with_masks(index: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``train_index`` that have a mask; the dropped ones are counted in one line."""
    if "mask" not in index.columns:
        return index
    missing = index["mask"].isna()
    if len(index) and missing.all():
        raise FileNotFoundError(
            f"none of the {len(index)} training images has a mask (no GIF, no {CSV_MASKS} row): "
            f"put train_masks/ (or train_masks.zip) or a {CSV_MASKS} covering them beside train/"
        )
    if missing.any():
        ids = index.loc[missing, "id"].astype(str).tolist()
        report(
            f"{len(ids)} of {len(index)} images have no mask (no GIF, no {CSV_MASKS} row; e.g. "
            f"{_examples(ids)}): dropped from training"
        )
    return index[~missing].reset_index(drop=True)


def test_index(data: CompetitionData, hq: bool = False) -> pd.DataFrame:
    """Columns: id, car, angle, image, make, year, model."""
    df = _join_metadata(data, _images(data.image_store("test", hq)), "test images")
    return df[["id", "car", "angle", "image", *META_COLUMNS]]


test_index.__test__ = False  # not a pytest test when imported into a test module
