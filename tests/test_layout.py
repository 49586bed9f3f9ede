"""Competition files as folders and as Kaggle's zips, read in place; masks from GIFs or the CSV."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaggle_utils import environment
from kaggle_utils.layout import MASK_SHAPE, CompetitionData, FileStore, find_data
from kaggle_utils.rle import rle_decode, rle_encode

CARS = ["02159e548029", "0ed6904e1004"]
SOME = ["02159e548029_01", "02159e548029_07", "0ed6904e1004_04", "0ed6904e1004_13"]


def zip_folder(src: Path, dst: Path, names: list[str]) -> Path:
    """Kaggle style: one top-level folder inside (train.zip -> train/<name>)."""
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{src.name}/", "")
        for name in names:
            zf.write(src / name, f"{src.name}/{name}")
    return dst


def zip_csv(df: pd.DataFrame, dst: Path) -> Path:
    """Kaggle's <name>.csv.zip holding <name>.csv."""
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(dst.name[: -len(".zip")], df.to_csv(index=False))
    return dst


@pytest.fixture
def zipped_sample(real_sample, tmp_path) -> Path:
    """Two real train cars (32 images + GIFs) and a few test images, as Kaggle's zips."""
    root = tmp_path / "kaggle"
    root.mkdir()
    train = sorted(p.name for p in (real_sample / "train").glob("*.jpg") if p.name[:12] in CARS)
    zip_folder(real_sample / "train", root / "train.zip", train)
    gifs = [n.replace(".jpg", "_mask.gif") for n in train]
    zip_folder(real_sample / "train_masks", root / "train_masks.zip", gifs)
    test = sorted(p.name for p in (real_sample / "test").glob("*.jpg"))[:3]
    zip_folder(real_sample / "test", root / "test.zip", test)
    rle = pd.read_csv(real_sample / "train_masks.csv")
    zip_csv(rle[rle["img"].isin(train)], root / "train_masks.csv.zip")
    zip_csv(pd.read_csv(real_sample / "metadata.csv"), root / "metadata.csv.zip")
    sub = pd.read_csv(real_sample / "sample_submission.csv")
    zip_csv(sub[sub["img"].isin(test)], root / "sample_submission.csv.zip")
    return root


def test_real_folder_layout(real_sample):
    data = find_data(real_sample)
    assert data.root == real_sample
    assert len(data.train.names()) == 768 and len(data.test.names()) == 33
    assert data.train_hq is None and data.test_hq is None
    assert len(data.train_masks.names()) == 768
    assert data.has_csv("train_masks") and data.has_csv("metadata")
    assert list(data.read_csv("sample_submission").columns) == ["img", "rle_mask"]
    assert data.train.describe("x.jpg") == str(real_sample / "train" / "x.jpg")
    img = data.load_image(SOME[0])
    assert img.shape == (1280, 1918, 3) and img.dtype == np.uint8
    assert data.load_image(SOME[0], size=(320, 480)).shape == (320, 480, 3)
    mask = data.load_mask(SOME[0])
    assert mask.shape == MASK_SHAPE and set(np.unique(mask)) == {0, 1}


def test_real_csv_rows_equal_gif_rle(real_sample):
    """train_masks.csv is Kaggle's row-major RLE of the GIFs: both directions, several images."""
    data = find_data(real_sample, mask_source="gif")
    table = data.read_csv("train_masks").set_index("img")["rle_mask"]
    for image_id in SOME:
        gif = data.load_mask(image_id)
        row = table[f"{image_id}.jpg"]
        assert rle_encode(gif) == row
        np.testing.assert_array_equal(rle_decode(row, MASK_SHAPE, image_id), gif)


def test_zipped_layout_reads_in_place(real_sample, zipped_sample):
    folder, zipped = find_data(real_sample), find_data(zipped_sample)
    assert zipped.train.is_zip and zipped.train_masks.is_zip and zipped.test.is_zip
    assert len(zipped.train) == 32 and len(zipped.test) == 3
    assert zipped.train.describe(f"{SOME[0]}.jpg").endswith(f"train.zip:train/{SOME[0]}.jpg")
    assert not any(p.is_dir() for p in zipped_sample.iterdir())  # nothing was extracted
    for image_id in SOME:
        np.testing.assert_array_equal(zipped.load_image(image_id), folder.load_image(image_id))
        np.testing.assert_array_equal(
            zipped.load_image(image_id, size=(256, 384)),
            folder.load_image(image_id, size=(256, 384)),
        )
        np.testing.assert_array_equal(zipped.load_mask(image_id), folder.load_mask(image_id))
    test_id = zipped.test.names()[0][:-4]
    np.testing.assert_array_equal(
        zipped.load_image(test_id, split="test"), folder.load_image(test_id, split="test")
    )
    assert len(zipped.read_csv("metadata")) == len(folder.read_csv("metadata"))
    assert len(zipped.read_csv("train_masks")) == 32


def test_masks_from_csv_when_gifs_are_absent(real_sample, zipped_sample):
    (zipped_sample / "train_masks.zip").unlink()
    data = find_data(zipped_sample)
    assert data.train_masks is None
    folder = find_data(real_sample)
    for image_id in SOME:
        np.testing.assert_array_equal(data.load_mask(image_id), folder.load_mask(image_id))


def test_missing_mask_names_the_file_and_store(real_sample, tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    image_id = SOME[0]
    (root / "train" / f"{image_id}.jpg").write_bytes(
        (real_sample / "train" / f"{image_id}.jpg").read_bytes()
    )
    data = find_data(root)
    with pytest.raises(FileNotFoundError, match=f"{image_id}_mask.gif") as err:
        data.load_mask(image_id)
    assert str(root / "train_masks") in str(err.value)
    # A CSV without the row: the error names both places looked in.
    pd.DataFrame({"img": ["other_01.jpg"], "rle_mask": ["1 1"]}).to_csv(
        root / "train_masks.csv", index=False
    )
    data = find_data(root)
    with pytest.raises(FileNotFoundError, match="train_masks.csv") as err:
        data.load_mask(image_id)
    assert f"{image_id}_mask.gif" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope_01.jpg"):
        data.load_image("nope_01")
    with pytest.raises(FileNotFoundError, match="train_hq"):
        data.load_image(image_id, hq=True)
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        data.read_csv("metadata")


def test_zip_store_missing_member_and_pickling(zipped_sample):
    store = FileStore(zipped_sample / "train.zip")
    name = f"{SOME[0]}.jpg"
    assert name in store and "nope.jpg" not in store
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg.*train\.zip"):
        store.read_bytes("nope.jpg")
    before = store.read_bytes(name)  # opens the handle
    clone = pickle.loads(pickle.dumps(store))  # what a spawned worker receives
    assert clone._zf is None
    assert clone.read_bytes(name) == before


def test_zip_store_reopens_after_fork(zipped_sample):
    """A forked child must not reuse the parent's ZipFile handle (shared file offset)."""
    import multiprocessing as mp

    store = FileStore(zipped_sample / "train.zip")
    names = store.names()[:6]
    expected = [len(store.read_bytes(n)) for n in names]
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        got = pool.map(_read_len, [(store, n) for n in names])
    assert got == expected


def _read_len(args) -> int:
    store, name = args
    return len(store.read_bytes(name))


def test_find_data_env_and_kaggle_mounts(zipped_sample, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_UTILS_DATA", str(zipped_sample))
    assert find_data().root == zipped_sample
    monkeypatch.delenv("KAGGLE_UTILS_DATA")

    kaggle_input = tmp_path / "input"
    kaggle_input.mkdir()
    monkeypatch.setattr(environment, "KAGGLE_INPUT", kaggle_input)
    with pytest.raises(FileNotFoundError, match="KAGGLE_UTILS_DATA"):
        find_data()
    # Another mount (e.g. a user's dataset) holding the files one level down.
    other = kaggle_input / "my-carvana-copy" / "data"
    other.parent.mkdir()
    zipped_sample.rename(other)
    assert find_data().root == other
    # The competition mount wins over other mounts.
    comp = kaggle_input / "carvana-image-masking-challenge"
    comp.mkdir()
    for p in other.iterdir():
        (comp / p.name).write_bytes(p.read_bytes())
    assert find_data().root == comp
    # Given a parent folder, the data one level below is found too.
    assert find_data(kaggle_input / "my-carvana-copy").root == other


def test_find_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        find_data(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train.zip"):
        find_data(tmp_path / "empty")


def test_csv_zip_with_mask_shape_from_images(tmp_path):
    """Masks decoded from the CSV take the competition's image size (synthetic sets are smaller)."""
    from kaggle_utils.imageio import encode_jpeg

    root = tmp_path / "small"
    (root / "train").mkdir(parents=True)
    (root / "train" / "abc_01.jpg").write_bytes(encode_jpeg(np.zeros((40, 60, 3), np.uint8)))
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 5:50] = 1
    zip_csv(
        pd.DataFrame({"img": ["abc_01.jpg"], "rle_mask": [rle_encode(mask)]}),
        root / "train_masks.csv.zip",
    )
    data = CompetitionData(root)
    np.testing.assert_array_equal(data.load_mask("abc_01"), mask)
    np.testing.assert_array_equal(data.load_mask("abc_01.jpg"), mask)


def test_mask_source_picks_csv_or_gif(real_sample, tmp_path):
    """auto: the CSV row (fast to decode) where there is one, the GIF for images the CSV lacks."""
    root = tmp_path / "data"
    (root / "train_masks").mkdir(parents=True)
    for image_id in SOME:
        name = f"{image_id}_mask.gif"
        (root / "train_masks" / name).write_bytes((real_sample / "train_masks" / name).read_bytes())
    (root / "train").mkdir()
    (root / "train" / f"{SOME[0]}.jpg").write_bytes(
        (real_sample / "train" / f"{SOME[0]}.jpg").read_bytes()
    )
    gif = {i: find_data(real_sample, mask_source="gif").load_mask(i) for i in SOME}
    other = np.zeros(MASK_SHAPE, np.uint8)
    other[100:200, 300:400] = 1  # a CSV row that differs from the GIF shows which was read
    pd.DataFrame({"img": [f"{SOME[0]}.jpg"], "rle_mask": [rle_encode(other)]}).to_csv(
        root / "train_masks.csv", index=False
    )
    auto = find_data(root)
    np.testing.assert_array_equal(auto.load_mask(SOME[0]), other)
    np.testing.assert_array_equal(auto.load_mask(SOME[1]), gif[SOME[1]])  # no row: the GIF
    np.testing.assert_array_equal(
        find_data(root, mask_source="gif").load_mask(SOME[0]), gif[SOME[0]]
    )
    only_csv = find_data(root, mask_source="csv")
    np.testing.assert_array_equal(only_csv.load_mask(SOME[0]), other)
    assert not only_csv.has_mask(SOME[1])
    with pytest.raises(FileNotFoundError, match=f"{SOME[1]}_mask.gif"):
        only_csv.load_mask(SOME[1])
    with pytest.raises(ValueError, match="mask_source"):
        find_data(root, mask_source="png")
    assert pickle.loads(pickle.dumps(auto)).load_mask(SOME[0]).sum() == other.sum()


def test_bad_csv_row_names_the_file_and_row(real_sample, tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "train" / f"{SOME[0]}.jpg").write_bytes(
        (real_sample / "train" / f"{SOME[0]}.jpg").read_bytes()
    )
    pd.DataFrame({"img": [f"{SOME[0]}.jpg"], "rle_mask": ["5 3 2"]}).to_csv(
        root / "train_masks.csv", index=False
    )
    with pytest.raises(ValueError, match="train_masks.csv, row .*odd") as err:
        find_data(root).load_mask(SOME[0])
    assert f"{SOME[0]}.jpg" in str(err.value)
