"""Synthetic Carvana: Kaggle's layout and naming, plausible cars, determinism, safe rewrites."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kaggle_utils.imageio import decode_jpeg, decode_mask_gif
from kaggle_utils.rle import rle_decode, rle_encode
from kaggle_utils.synthetic import MARKER, generate

NAME = re.compile(r"^[0-9a-f]{12}_(0[1-9]|1[0-6])\.jpg$")


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_layout_and_naming(small_synthetic):
    root = small_synthetic
    train = sorted(p.name for p in (root / "train").iterdir())
    test = sorted(p.name for p in (root / "test").iterdir())
    gifs = sorted(p.name for p in (root / "train_masks").iterdir())
    assert len(train) == 64 and len(test) == 16 and len(gifs) == 64
    assert all(NAME.match(n) for n in train + test)
    assert gifs == [n.replace(".jpg", "_mask.gif") for n in train]
    assert not list(root.rglob("*.tmp"))
    cars = {n[:12] for n in train}
    assert len(cars) == 4 and {n[:12] for n in test}.isdisjoint(cars)

    with Image.open(root / "train" / train[0]) as im:
        assert im.format == "JPEG" and im.size == (240, 160) and im.mode == "RGB"
    with Image.open(root / "train_masks" / gifs[0]) as im:
        assert im.format == "GIF" and im.mode == "P"
        assert set(np.unique(np.asarray(im))) == {0, 1}

    meta = pd.read_csv(root / "metadata.csv")
    assert list(meta.columns) == ["id", "year", "make", "model", "trim1", "trim2"]
    assert set(meta["id"]) == cars | {n[:12] for n in test}
    sub = pd.read_csv(root / "sample_submission.csv")
    assert list(sub.columns) == ["img", "rle_mask"] and list(sub["img"]) == test
    assert (sub["rle_mask"] == "1 1").all()
    truth = pd.read_csv(root / "test_masks.csv")
    assert list(truth["img"]) == test


def test_csv_rle_matches_gifs(small_synthetic):
    root = small_synthetic
    rows = pd.read_csv(root / "train_masks.csv")
    assert list(rows.columns) == ["img", "rle_mask"] and len(rows) == 64
    for img, rle in rows.itertuples(index=False):
        gif = decode_mask_gif(
            (root / "train_masks" / img.replace(".jpg", "_mask.gif")).read_bytes()
        )
        assert rle_encode(gif) == rle, img
    first = rows.iloc[0]
    np.testing.assert_array_equal(
        rle_decode(first["rle_mask"], (160, 240)),
        decode_mask_gif(
            (root / "train_masks" / first["img"].replace(".jpg", "_mask.gif")).read_bytes()
        ),
    )


def _masks(root, car):
    return {
        a: decode_mask_gif((root / "train_masks" / f"{car}_{a:02d}_mask.gif").read_bytes())
        for a in range(1, 17)
    }


def test_cars_turn_and_mirror_pairs(small_synthetic):
    root = small_synthetic
    car = sorted(p.name for p in (root / "train").iterdir())[0][:12]
    masks = _masks(root, car)
    for k in range(2, 9):  # Carvana's angles k and 18-k are mirror views
        a, b = masks[k], masks[18 - k][:, ::-1]
        assert (a & b).sum() / (a | b).sum() > 0.97, k
    width = {a: np.ptp(np.flatnonzero(m.any(0))) for a, m in masks.items()}
    assert width[5] > 1.8 * width[1] and width[13] > 1.8 * width[9]  # side views are long
    assert all(0.05 < m.mean() < 0.4 for m in masks.values())
    # front (01) and back (09) have similar silhouettes but different faces (grille, lights)
    img1 = decode_jpeg((root / "train" / f"{car}_01.jpg").read_bytes()).astype(np.float32)
    img9 = decode_jpeg((root / "train" / f"{car}_09.jpg").read_bytes()).astype(np.float32)
    both = (masks[1] & masks[9]) == 1
    assert both.sum() > 0.8 * masks[9].sum()
    assert np.abs(img1 - img9)[both].mean() > 10


def test_shadow_and_studio_are_outside_the_mask(small_synthetic):
    root = small_synthetic
    car = sorted(p.name for p in (root / "train").iterdir())[0][:12]
    img = decode_jpeg((root / "train" / f"{car}_05.jpg").read_bytes()).astype(np.float32)
    mask = _masks(root, car)[5]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    bottom, mid = rows[-1], (cols[0] + cols[-1]) // 2
    under = img[bottom + 1 : bottom + 3, mid - 10 : mid + 10].mean()
    floor_far = img[bottom + 1 : bottom + 3, :8].mean()
    assert under < floor_far - 20  # a floor shadow right under the car, not in the mask
    assert img[:5].mean() > 200  # light studio wall


def test_deterministic_per_seed(tmp_path):
    a = generate(tmp_path / "a", n_train_cars=1, n_test_cars=1, size=(64, 96), seed=3)
    b = generate(tmp_path / "b", n_train_cars=1, n_test_cars=1, size=(64, 96), seed=3)
    c = generate(tmp_path / "c", n_train_cars=1, n_test_cars=1, size=(64, 96), seed=4)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() != fc.keys()  # another seed: other car ids


def test_rerun_skips_regenerates_and_refuses(tmp_path, capsys):
    out = tmp_path / "syn"
    generate(out, n_train_cars=1, n_test_cars=1, size=(48, 64), seed=0)
    jpg = next((out / "train").iterdir())
    stamp = jpg.stat().st_mtime_ns
    generate(out, n_train_cars=1, n_test_cars=1, size=(48, 64), seed=0, verbose=True)
    assert "nothing to do" in capsys.readouterr().out
    assert jpg.stat().st_mtime_ns == stamp

    # An interrupted run (marker says incomplete, a stray temp file): regenerated cleanly.
    marker = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps({**marker, "complete": False}))
    (out / "train" / ".x.jpg.123.tmp").write_bytes(b"half")
    generate(out, n_train_cars=1, n_test_cars=1, size=(48, 64), seed=0)
    assert not list(out.rglob("*.tmp"))
    assert json.loads((out / MARKER).read_text())["complete"] is True

    # Other parameters replace the old set entirely (no stale cars left behind).
    generate(out, n_train_cars=2, n_test_cars=0, size=(48, 64), seed=1)
    assert len(list((out / "train").iterdir())) == 32 and not list((out / "test").iterdir())
    assert len(pd.read_csv(out / "train_masks.csv")) == 32

    foreign = tmp_path / "real_data"
    foreign.mkdir()
    (foreign / "train.zip").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not empty"):
        generate(foreign, n_train_cars=1, n_test_cars=0, size=(48, 64))


def test_cli_prints_what_it_writes(tmp_path, repo_root):
    out = tmp_path / "cli"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "kaggle_utils.synthetic",
            str(out),
            "--train-cars",
            "1",
            "--test-cars",
            "1",
            "--height",
            "64",
            "--width",
            "96",
            "--seed",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=repo_root,
        check=True,
    )
    assert "wrote 16 train images" in res.stdout and str(out) in res.stdout
    assert len(list((out / "train").glob("*.jpg"))) == 16


@pytest.mark.slow
def test_full_resolution_default(tmp_path):
    out = generate(tmp_path / "full", n_train_cars=1, n_test_cars=0, seed=0)
    jpg = next((out / "train").iterdir())
    with Image.open(jpg) as im:
        assert im.size == (1918, 1280)
    rows = pd.read_csv(out / "train_masks.csv")
    mask = rle_decode(rows["rle_mask"].iloc[0])  # Kaggle's default 1280x1918
    assert 0.05 < mask.mean() < 0.4
