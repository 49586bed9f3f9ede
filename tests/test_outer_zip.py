"""Kaggle's download, one carvana-image-masking-challenge.zip holding train.zip, ..., the CSVs:
read in place when the inner zips are STORED in it, else one line with the command that unpacks."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.layout import OUTER_ZIP, CompetitionData, FileStore, find_data

STORES = ("train", "train_masks", "test")
CSVS = ("train_masks", "metadata", "sample_submission")


def kaggle_zips(src: Path, dst: Path) -> Path:
    """Kaggle's competition files: <store>.zip holding <store>/<name>, <name>.csv.zip."""
    dst.mkdir()
    for stem in STORES:
        with zipfile.ZipFile(dst / f"{stem}.zip", "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(f"{stem}/", "")
            for path in sorted((src / stem).iterdir()):
                zf.write(path, f"{stem}/{path.name}")
    for stem in CSVS:
        with zipfile.ZipFile(dst / f"{stem}.csv.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(src / f"{stem}.csv", f"{stem}.csv")
    return dst


def outer_zip(unpacked: Path, dst_dir: Path, inner: int) -> Path:
    """The download: every file of ``unpacked`` in one outer zip; inner zips STORED or DEFLATED
    (``inner``), CSV zips always deflated (read once, start to end: either works)."""
    dst_dir.mkdir()
    with zipfile.ZipFile(dst_dir / OUTER_ZIP, "w", allowZip64=True) as zf:
        for path in sorted(unpacked.iterdir()):
            how = zipfile.ZIP_DEFLATED if path.name.endswith(".csv.zip") else inner
            zf.write(path, path.name, compress_type=how)
    return dst_dir


@pytest.fixture(scope="module")
def unpacked(small_synthetic, tmp_path_factory) -> Path:
    return kaggle_zips(small_synthetic, tmp_path_factory.mktemp("outer") / "unpacked")


def assert_same_data(got: CompetitionData, want: CompetitionData) -> None:
    for stem in STORES:
        assert getattr(got, stem).names() == getattr(want, stem).names()
    ids = [n[:-4] for n in want.train.names()]
    for image_id in ids[:: max(1, len(ids) // 6)]:
        np.testing.assert_array_equal(got.load_image(image_id), want.load_image(image_id))
        np.testing.assert_array_equal(got.load_mask(image_id), want.load_mask(image_id))
    test_id = want.test.names()[0][:-4]
    np.testing.assert_array_equal(
        got.load_image(test_id, split="test"), want.load_image(test_id, split="test")
    )
    for stem in CSVS:
        pd.testing.assert_frame_equal(got.read_csv(stem), want.read_csv(stem))


def test_stored_inner_zips_read_in_place(small_synthetic, unpacked, tmp_path):
    root = outer_zip(unpacked, tmp_path / "carvana", zipfile.ZIP_STORED)
    data = find_data(root)
    assert [p.name for p in root.iterdir()] == [OUTER_ZIP]  # nothing was extracted
    assert data.train.inner == "train.zip" and data.train.path == root / OUTER_ZIP
    assert data.train.describe("x.jpg") == f"{root / OUTER_ZIP}:train.zip:x.jpg"
    first = data.train.names()[0]
    assert data.train.describe(first) == f"{root / OUTER_ZIP}:train.zip:train/{first}"
    assert str(data.csv_path("metadata")) == f"{root / OUTER_ZIP}:metadata.csv.zip"
    assert_same_data(data, find_data(unpacked))
    assert_same_data(data, find_data(small_synthetic))
    gifs = find_data(root, mask_source="gif")  # masks from the GIFs in the inner zip
    image_id = data.train.names()[3][:-4]
    np.testing.assert_array_equal(gifs.load_mask(image_id), data.load_mask(image_id))
    # The parent folder finds it one level down, as for unpacked data.
    assert find_data(tmp_path).root == root


def test_inner_store_pickles_and_forks(unpacked, tmp_path):
    import multiprocessing as mp

    root = outer_zip(unpacked, tmp_path / "carvana", zipfile.ZIP_STORED)
    store = find_data(root).train
    names = store.names()[:6]
    expected = [store.read_bytes(n) for n in names]
    clone = pickle.loads(pickle.dumps(store))  # what a spawned worker receives
    assert clone._zf is None and clone.read_bytes(names[0]) == expected[0]
    with mp.get_context("fork").Pool(2) as pool:
        assert pool.map(_read, [(store, n) for n in names]) == expected
    with pytest.raises(
        FileNotFoundError, match=rf"nope\.jpg not found in .*{OUTER_ZIP}:train\.zip"
    ):
        store.read_bytes("nope.jpg")


def _read(args) -> bytes:
    store, name = args
    return store.read_bytes(name)


@pytest.mark.parametrize("unzip", ["unzip", "no unzip on PATH"])
def test_deflated_inner_zips_give_the_unpack_command(
    small_synthetic, unpacked, tmp_path, monkeypatch, unzip
):
    if unzip != "unzip":
        monkeypatch.setenv("PATH", str(tmp_path))  # the command is python -m zipfile instead
    root = outer_zip(unpacked, tmp_path / "carvana", zipfile.ZIP_DEFLATED)
    with pytest.raises(FileNotFoundError) as err:
        find_data(root)
    message = str(err.value)
    assert "\n" not in message and str(root / OUTER_ZIP) in message
    assert "train.zip, train_masks.zip, test.zip are compressed" in message
    assert [p.name for p in root.iterdir()] == [OUTER_ZIP]  # raised before writing anything
    command = message.rsplit(": ", 1)[1]
    if unzip != "unzip":
        assert " -m zipfile -e " in command
    else:
        assert command.startswith("unzip -o ") or not shutil.which("unzip")
    subprocess.run(command, shell=True, check=True, capture_output=True)
    data = find_data(root)  # the unpacked zips beside the outer one win
    assert data.train.inner is None and data.train.path == root / "train.zip"
    assert not any(p.is_dir() for p in root.iterdir())  # the inner zips stayed zipped
    assert_same_data(data, find_data(small_synthetic))


def test_only_compressed_members_that_are_needed_stop(unpacked, tmp_path):
    """train.zip stored, test.zip deflated: the message names test.zip; a loose test.zip
    beside the outer archive is used instead, and then nothing stops."""
    root = tmp_path / "carvana"
    root.mkdir()
    with zipfile.ZipFile(root / OUTER_ZIP, "w") as zf:
        for path in sorted(unpacked.iterdir()):
            how = zipfile.ZIP_DEFLATED if path.name == "test.zip" else zipfile.ZIP_STORED
            zf.write(path, path.name, compress_type=how)
    with pytest.raises(FileNotFoundError, match=r": test\.zip is compressed inside it"):
        find_data(root)
    (root / "test.zip").write_bytes((unpacked / "test.zip").read_bytes())
    data = find_data(root)
    assert data.train.inner == "train.zip" and data.test.path == root / "test.zip"


def test_zip64_inner_zip_stored_in_outer(tmp_path):
    """Kaggle's test.zip has 100,064 members: more than a plain zip's 65,535, so it ends in a
    zip64 record; through the window it must read as a loose one does."""
    inner = tmp_path / "test.zip"
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_STORED) as zf:
        for i in range(65_600):
            zf.writestr(f"test/{i:06d}_01.jpg", i.to_bytes(4, "little"))
    root = tmp_path / "carvana"
    root.mkdir()
    with zipfile.ZipFile(root / OUTER_ZIP, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("29bb3ece3180_11.jpg", b"x")  # Kaggle's download holds one loose JPEG
        zf.write(inner, "test.zip")
    store = FileStore(root / OUTER_ZIP, inner="test.zip")
    assert len(store) == 65_600
    assert store.read_bytes("065599_01.jpg") == (65_599).to_bytes(4, "little")
    assert store.read_bytes("000000_01.jpg") == bytes(4)


def test_truncated_outer_zip_names_it_and_the_download(unpacked, tmp_path):
    root = outer_zip(unpacked, tmp_path / "carvana", zipfile.ZIP_STORED)
    outer = root / OUTER_ZIP
    outer.write_bytes(outer.read_bytes()[: outer.stat().st_size // 2])
    with pytest.raises(zipfile.BadZipFile, match="truncated or corrupt") as err:
        find_data(root)
    assert str(outer) in str(err.value) and "kaggle competitions download" in str(err.value)
