"""Sample index: ids, cars, angles, store names and metadata, on real, zipped and synthetic data."""

from __future__ import annotations

import shutil
import zipfile

import pandas as pd
import pytest

from kaggle_utils.index import test_index, train_index
from kaggle_utils.layout import find_data

TRAIN_COLUMNS = ["id", "car", "angle", "image", "mask", "make", "year", "model"]
TEST_COLUMNS = ["id", "car", "angle", "image", "make", "year", "model"]


def test_real_train_index(real_sample):
    df = train_index(find_data(real_sample))
    assert list(df.columns) == TRAIN_COLUMNS
    assert len(df) == 768 and df["id"].is_unique
    assert df["car"].nunique() == 48
    per_car = df.groupby("car")["angle"].apply(sorted)
    assert all(angles == list(range(1, 17)) for angles in per_car)
    assert df["angle"].dtype.kind == "i"
    row = df.iloc[0]
    assert row["id"] == f"{row['car']}_{row['angle']:02d}"
    assert row["image"] == f"{row['id']}.jpg" and row["mask"] == f"{row['id']}_mask.gif"
    assert df["car"].str.fullmatch(r"[0-9a-f]{12}").all()
    # metadata.csv covers every car of the competition
    assert df["make"].notna().all() and df["year"].notna().all()
    meta = pd.read_csv(real_sample / "metadata.csv").set_index("id")
    assert row["make"] == meta.loc[row["car"], "make"]


def test_real_test_index(real_sample):
    df = test_index(find_data(real_sample))
    assert list(df.columns) == TEST_COLUMNS
    assert len(df) == 33 and df["car"].nunique() == 3
    assert df["make"].notna().all()


def test_synthetic_index(small_synthetic):
    data = find_data(small_synthetic)
    tr, te = train_index(data), test_index(data)
    assert len(tr) == 64 and tr["car"].nunique() == 4 and tr["mask"].notna().all()
    assert len(te) == 16 and te["car"].nunique() == 1
    assert set(tr["car"]).isdisjoint(te["car"])
    assert tr["make"].notna().all() and te["model"].notna().all()


def test_zipped_index_equals_folder_index(small_synthetic, tmp_path):
    root = tmp_path / "zipped"
    root.mkdir()
    for sub in ("train", "train_masks", "test"):
        with zipfile.ZipFile(root / f"{sub}.zip", "w") as zf:
            for p in sorted((small_synthetic / sub).iterdir()):
                zf.write(p, f"{sub}/{p.name}")
    for name in ("metadata.csv", "train_masks.csv"):
        with zipfile.ZipFile(root / f"{name}.zip", "w") as zf:
            zf.write(small_synthetic / name, name)
    folder, zipped = find_data(small_synthetic), find_data(root)
    pd.testing.assert_frame_equal(train_index(zipped), train_index(folder))
    pd.testing.assert_frame_equal(test_index(zipped), test_index(folder))


def test_index_without_gifs_or_metadata(small_synthetic, tmp_path, capsys):
    root = tmp_path / "csv_only"
    shutil.copytree(small_synthetic / "train", root / "train")
    shutil.copy(small_synthetic / "train_masks.csv", root)
    data = find_data(root)
    df = train_index(data)
    assert len(df) == 64 and (df["mask"] == "train_masks.csv").all()  # the rows hold the masks
    assert df["make"].isna().all()
    assert data.load_mask(df["id"].iloc[0]).shape == (160, 240)  # the CSV fallback
    assert "no metadata.csv in" in capsys.readouterr().out  # said, not silent


def test_bad_image_name_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "oops.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="oops.jpg"):
        train_index(find_data(tmp_path))
