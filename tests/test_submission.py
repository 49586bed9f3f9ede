"""Submission writer (chunked, resumable, gzip) and validator, on real files and real processes."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.rle import rle_decode, rle_encode
from kaggle_utils.submission import (
    SubmissionError,
    SubmissionWriter,
    crc32_combine,
    read_sample_submission,
    validate_submission,
)

SHAPE = (24, 40)
REPO = Path(__file__).resolve().parents[1]


def _mask(image_id: str, shape=SHAPE) -> np.ndarray:
    """A deterministic blob per id (module level: picklable for the process pool)."""
    k = int(image_id.split("_")[1])
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    cy, cx = 4 + k % (shape[0] - 8), 5 + (3 * k) % (shape[1] - 10)
    m = ((yy - cy) ** 2 + (xx - cx) ** 2 < 9 + k % 20).astype(np.uint8)
    if k % 7 == 3:
        m[:] = 0  # a few empty masks
    return m


def _ids(n: int) -> list[str]:
    return [f"car_{i:04d}_{i % 16 + 1:02d}.jpg" for i in range(n)]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _single_gzip_member(path: Path) -> bytes:
    d = zlib.decompressobj(31)
    data = d.decompress(path.read_bytes())
    assert d.eof and d.unused_data == b"", "one complete gzip member, nothing after it"
    return data


def test_crc32_combine_matches_zlib():
    a, b = os.urandom(1000), os.urandom(70_001)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b""), 0) == zlib.crc32(a)


def test_round_trip_masks_rle_strings_and_empty(tmp_path):
    ids = _ids(57)
    out = tmp_path / "submission.csv.gz"
    with SubmissionWriter(out, ids, chunk_size=10, shape=SHAPE, workers=2) as w:
        for k, image_id in enumerate(ids):
            m = _mask(image_id)
            if k % 3 == 1:
                m = rle_encode(m)  # an RLE string goes in as is (checked)
            elif k == 5:
                m = None  # empty
            w.add(image_id, m)
    assert out.exists() and not (tmp_path / "submission.csv.gz.parts").exists()
    text = _single_gzip_member(out).decode()
    assert text.startswith("img,rle_mask\n")
    df = _read(out)
    assert list(df.columns) == ["img", "rle_mask"] and df["img"].tolist() == ids
    for k, (image_id, rle) in enumerate(zip(df["img"], df["rle_mask"], strict=True)):
        want = np.zeros(SHAPE, np.uint8) if k == 5 else _mask(image_id)
        assert np.array_equal(rle_decode(rle, SHAPE, image_id), want), image_id
    report = validate_submission(out, ids, SHAPE)
    assert report.rows == 57 and report.empty_masks >= 1
    subprocess.run(["gzip", "-t", str(out)], check=True)  # the system gzip agrees


def test_batches_and_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    ids = _ids(12)
    masks = np.stack([_mask(i) for i in ids])
    out = tmp_path / "sub.csv.gz"
    w = SubmissionWriter(out, ids, chunk_size=5, shape=SHAPE)
    assert w.add(ids[:4], torch.from_numpy(masks[:4])) == 4
    assert w.add(ids[4:], masks[4:]) == 8
    assert w.close() == out
    assert _read(out)["rle_mask"].tolist() == [rle_encode(m) for m in masks]


_CRASHING_RUN = """
import os, sys
sys.path.insert(0, {tests!r})
from test_submission import _ids, _mask, SHAPE
from kaggle_utils.submission import SubmissionWriter
w = SubmissionWriter({out!r}, _ids(57), chunk_size=10, shape=SHAPE, workers=2)
for k, image_id in enumerate(w.pending_ids()):
    if k == 35:
        w.flush()  # what a slow crash would have let land; then die without any cleanup
        os._exit(3)
    w.add(image_id, _mask(image_id))
"""


def test_interrupted_run_resumes_to_the_same_bytes(tmp_path):
    ids = _ids(57)
    whole = tmp_path / "whole" / "submission.csv.gz"
    with SubmissionWriter(whole, ids, chunk_size=10, shape=SHAPE) as w:
        for i in ids:
            w.add(i, _mask(i))

    out = tmp_path / "resumed" / "submission.csv.gz"
    script = _CRASHING_RUN.format(tests=str(REPO / "tests"), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert not out.exists()
    parts = sorted(p.name for p in (out.parent / "submission.csv.gz.parts").glob("part-*"))
    assert parts == ["part-000000.bin", "part-000001.bin", "part-000002.bin"]

    w = SubmissionWriter(out, ids, chunk_size=10, shape=SHAPE)
    assert w.n_done == w.next_index == 30
    assert w.done_ids() == ids[:30] and w.pending_ids() == ids[30:]
    assert w.add(ids[3], _mask(ids[3])) == 0  # a row already on disk is skipped
    for i in w.pending_ids():
        w.add(i, _mask(i))
    w.close()
    assert out.read_bytes() == whole.read_bytes()


def test_process_pool_writes_the_same_file(tmp_path):
    ids = _ids(45)
    inline = tmp_path / "inline.csv.gz"
    with SubmissionWriter(inline, ids, chunk_size=8, shape=SHAPE) as w:
        for i in ids:
            w.add(i, _mask(i))
    pooled = tmp_path / "pooled.csv.gz"
    w = SubmissionWriter(pooled, ids, chunk_size=8, shape=SHAPE)
    w.add(ids[:8], [_mask(i) for i in ids[:8]])  # first chunk inline, the rest in the pool
    w.write_from(partial(_mask, shape=SHAPE), processes=2)
    w.close()
    assert pooled.read_bytes() == inline.read_bytes()


def test_writer_rejects_wrong_input(tmp_path):
    ids = _ids(6)
    out = tmp_path / "s.csv.gz"
    w = SubmissionWriter(out, ids, chunk_size=4, shape=SHAPE)
    with pytest.raises(SubmissionError, match="expected car_0000_01.jpg"):
        w.add(ids[1], _mask(ids[1]))
    with pytest.raises(SubmissionError, match="not one of"):
        w.add("nope.jpg", None)
    with pytest.raises(SubmissionError, match=r"car_0000_01.jpg has shape \(2, 2\)"):
        w.add(ids[0], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="car_0000_01.jpg"):
        w.add(ids[0], "5 2 1 1")  # an invalid RLE string names the row's id
    w.add(ids[0], None)
    with pytest.raises(SubmissionError, match="not written yet"):
        w.finalize()
    w.abort()
    with pytest.raises(SubmissionError, match="different submission"):
        SubmissionWriter(out, ids, chunk_size=3, shape=SHAPE)
    with pytest.raises(SubmissionError, match="twice"):
        SubmissionWriter(tmp_path / "t.csv.gz", ids + ids[:2], shape=SHAPE)
    with pytest.raises(ValueError, match=".csv.gz"):
        SubmissionWriter(tmp_path / "t.csv", ids, shape=SHAPE)


def _write_csv_gz(path: Path, rows: list[tuple[str, str]], header: str = "img,rle_mask") -> Path:
    with gzip.open(path, "wt") as f:
        f.write(header + "\n")
        f.writelines(f"{a},{b}\n" for a, b in rows)
    return path


def test_validation_reports_duplicates_missing_extra_and_bad_rle(tmp_path):
    ids = _ids(300)
    good = [(i, rle_encode(_mask(i))) for i in ids]
    path = _write_csv_gz(tmp_path / "ok.csv.gz", good)
    assert validate_submission(path, ids, SHAPE).rows == 300

    rows = good[:250] + [good[7], ("stranger.jpg", "1 1")]
    rows[20] = (rows[20][0], "5 3 1 2")  # unsorted runs
    rows[40] = (rows[40][0], "1 2 3")  # odd token count
    path = _write_csv_gz(tmp_path / "bad.csv.gz", rows)
    with pytest.raises(SubmissionError) as err:
        validate_submission(path, ids, SHAPE)
    msg = str(err.value)
    assert "2 rows with invalid RLE" in msg
    assert f"row 22 ({ids[20]}): runs 1 and 2 are unsorted" in msg
    assert f"row 42 ({ids[40]}): odd number of tokens" in msg
    assert f"1 duplicated ids: {ids[7]}" in msg
    assert f"50 of 300 expected ids are missing: {ids[250]}, {ids[251]}" in msg
    assert "1 unexpected ids: stranger.jpg" in msg

    past_end = [(ids[0], f"{SHAPE[0] * SHAPE[1]} 2")]
    path = _write_csv_gz(tmp_path / "end.csv.gz", past_end)
    with pytest.raises(SubmissionError, match="past the image end"):
        validate_submission(path, ids[:1], SHAPE)
    path = _write_csv_gz(tmp_path / "hdr.csv.gz", good, header="id,rle")
    with pytest.raises(SubmissionError, match="header is 'id,rle'"):
        validate_submission(path, ids, SHAPE)


def test_real_train_masks_csv_validates(real_sample):
    ids = pd.read_csv(real_sample / "train_masks.csv", usecols=["img"])["img"].tolist()
    report = validate_submission(real_sample / "train_masks.csv", ids)
    assert report.rows == 768 and report.empty_masks == 0 and report.runs > 768 * 100


def test_real_sample_submission_ids_and_subset(real_sample):
    sample = real_sample / "sample_submission.csv"
    ids = read_sample_submission(sample)
    assert len(ids) == 100_064 and ids[0].endswith(".jpg")
    report = validate_submission(sample, ids)  # 100,064 rows of "1 1"
    assert report.rows == 100_064
    test_images = sorted(p.name for p in (real_sample / "test").glob("*.jpg"))
    subset = read_sample_submission(pd.read_csv(sample), test_images[::-1])
    assert sorted(subset) == test_images and subset == [i for i in ids if i in set(subset)]
    assert read_sample_submission(pd.read_csv(sample), [test_images[0][:-4]]) == test_images[:1]
    with pytest.raises(SubmissionError, match=r"2 requested ids are not in .*: a\.jpg, b\.jpg"):
        read_sample_submission(pd.read_csv(sample), ["a.jpg", test_images[0], "b.jpg"])
