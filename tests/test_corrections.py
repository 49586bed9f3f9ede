"""Corrected masks: a replacement replaces exactly its id, from a folder, a CSV or a zip; bad
sources fail in one line before any work; the 01 report's numbers; a member's stage records it."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaggle_utils.config import load_member
from kaggle_utils.corrections import (
    CorrectionsError,
    apply_corrections,
    corrections_digest,
    corrections_report,
    load_corrections,
)
from kaggle_utils.imageio import encode_mask_gif
from kaggle_utils.layout import CompetitionData
from kaggle_utils.rle import rle_encode


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A private synthetic set (the tests write beside it, never into the shared one)."""
    from kaggle_utils.synthetic import generate

    out = tmp_path_factory.mktemp("corr_synth")
    return generate(out, n_train_cars=4, n_test_cars=1, size=(160, 240), seed=0)


def _ids(data: CompetitionData) -> list[str]:
    return sorted(n[: -len(".jpg")] for n in data.train.names())


def _edit(mask: np.ndarray) -> np.ndarray:
    """A correction: a 10x20 block added at the top-left, the mask's first car row removed."""
    new = mask.copy()
    new[:10, :20] = 1
    row = np.flatnonzero(mask.any(axis=1))[0]
    new[row] = 0
    return new


@pytest.fixture(scope="module")
def fixed(synth, tmp_path_factory):
    """(folder of one corrected GIF, CSV of the same row, the id, old mask, new mask)."""
    data = CompetitionData(synth)
    image_id = _ids(data)[3]
    old = data.load_mask(image_id)
    new = _edit(old)
    base = tmp_path_factory.mktemp("corr_src")
    folder = base / "fixed"
    folder.mkdir()
    (folder / f"{image_id}_mask.gif").write_bytes(encode_mask_gif(new))
    csv = base / "fixed.csv"
    csv.write_text(f"img,rle_mask\n{image_id}.jpg,{rle_encode(new)}\n")
    return folder, csv, image_id, old, new


@pytest.mark.parametrize("mask_source", ["auto", "gif"])  # masks from train_masks.csv, or GIFs
def test_a_correction_replaces_exactly_its_id(synth, fixed, mask_source):
    folder, _, image_id, old, new = fixed
    data = CompetitionData(synth, mask_source)
    fixed_data = apply_corrections(data, load_corrections(folder, data))
    assert np.array_equal(fixed_data.load_mask(image_id), new)
    assert not np.array_equal(old, new)
    other = next(i for i in _ids(data) if i != image_id)
    assert np.array_equal(fixed_data.load_mask(other), data.load_mask(other))
    assert np.array_equal(data.load_mask(image_id), old)  # the given data is left as it was
    again = pickle.loads(pickle.dumps(fixed_data))  # what a loader worker receives
    assert np.array_equal(again.load_mask(image_id), new)


def test_csv_zip_and_gzip_sources_equal_the_folder(synth, fixed, tmp_path):
    folder, csv, image_id, _, new = fixed
    data = CompetitionData(synth)
    with zipfile.ZipFile(tmp_path / "fixed.zip", "w") as zf:
        for gif in folder.iterdir():
            zf.write(gif, f"fixed/{gif.name}")
    (tmp_path / "fixed.csv.gz").write_bytes(gzip.compress(csv.read_bytes()))
    sources = [folder, csv, tmp_path / "fixed.zip", tmp_path / "fixed.csv.gz"]
    for source in sources:
        corr = load_corrections(source, data)
        assert corr.ids == [image_id], source
        assert np.array_equal(apply_corrections(data, corr).load_mask(image_id), new), source
    # the digest is the content: the zip equals the folder, a CSV and its gzip are equal
    assert corrections_digest(folder) == corrections_digest(tmp_path / "fixed.zip")
    assert corrections_digest(csv) == corrections_digest(tmp_path / "fixed.csv.gz")


def _one_line_error(source, data, *needles):
    with pytest.raises(CorrectionsError) as info:
        load_corrections(source, data)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def test_bad_sources_fail_in_one_line_naming_file_and_entry(synth, fixed, tmp_path):
    folder, _, image_id, _, new = fixed
    data = CompetitionData(synth)
    bad = tmp_path / "unknown"
    bad.mkdir()
    (bad / "ffffffffffff_01_mask.gif").write_bytes(encode_mask_gif(new))
    _one_line_error(bad, data, "ffffffffffff_01", "not a train image", str(bad))
    shape = tmp_path / "shape"
    shape.mkdir()
    (shape / f"{image_id}_mask.gif").write_bytes(encode_mask_gif(new[:, :-2]))
    _one_line_error(shape, data, f"{image_id}_mask.gif", "160x238", "160x240", "full size")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / f"{image_id}_mask.gif").write_bytes(b"GIF89a not really")
    _one_line_error(broken, data, f"{image_id}_mask.gif", "cannot decode")
    named = tmp_path / "named"
    named.mkdir()
    (named / f"{image_id}.gif").write_bytes(encode_mask_gif(new))
    _one_line_error(named, data, f"{image_id}.gif", "<id>_mask.gif")
    rle = tmp_path / "bad_rle.csv"
    rle.write_text(f"img,rle_mask\n{image_id}.jpg,1 5 3\n")
    _one_line_error(rle, data, f"{rle}, line 2 ({image_id}.jpg)", "RLE")
    cols = tmp_path / "cols.csv"
    cols.write_text(f"id,mask\n{image_id},1 5\n")
    _one_line_error(cols, data, str(cols), "img,rle_mask")
    twice = tmp_path / "twice.csv"
    twice.write_text(f"img,rle_mask\n{image_id}.jpg,1 5\n{image_id}.jpg,1 6\n")
    _one_line_error(twice, data, str(twice), "line 3", "twice")
    with pytest.raises(FileNotFoundError, match="corrected_masks: nowhere/at_all not found"):
        load_corrections("nowhere/at_all", data)


def test_report_counts_added_removed_and_dice(synth, fixed):
    folder, _, image_id, old, new = fixed
    data = CompetitionData(synth)
    report = corrections_report(data, load_corrections(folder, data))
    assert list(report["id"]) == [image_id]
    row = report.iloc[0]
    o, n = old.astype(bool), new.astype(bool)
    assert row["pixels_old"] == o.sum() and row["pixels_new"] == n.sum()
    assert row["added"] == (n & ~o).sum() > 0 and row["removed"] == (o & ~n).sum() > 0
    assert row["pixels_new"] == row["pixels_old"] + row["added"] - row["removed"]
    assert row["dice_old_new"] == pytest.approx(2 * (o & n).sum() / (o.sum() + n.sum()))
    assert 0.5 < row["dice_old_new"] < 1


def test_viewer_shows_old_new_and_the_difference(synth, fixed):
    from kaggle_utils.widgets import corrected_mask_viewer

    folder, _, image_id, old, new = fixed
    data = CompetitionData(synth)
    viewer = corrected_mask_viewer(data, load_corrections(folder, data), size=(80, 120))
    added, removed = int((new & ~old).sum()), int((old & ~new).sum())
    assert viewer.info == {"id": image_id, "added": added, "removed": removed}
    assert viewer.arrays["composite"].shape == (80, 120, 3) and viewer.image.value
    viewer.controls["frame"].value = "zoom"  # the full-resolution crop around the change
    h, w = viewer.arrays["composite"].shape[:2]
    assert h < 160 and viewer.arrays["added"].sum() == added
    viewer.controls["show"].value = "new"
    assert viewer.renders == 3


TINY = """\
name: tinyfix
model: {arch: unet, encoder: mobilenet_v2, encoder_weights: null, encoder_depth: 3,
        decoder_channels: [32, 16, 8]}
batch_size: 4
augment: {hflip: 0.5, shift_scale: false, color: false}
n_folds: 2
num_workers: 0
max_train_images: 8
max_val_images: 4
stages:
  - {size: 64x96, epochs: 1}
"""
HASH_BEFORE_THE_KEY = "22b9b75be65c5a11"  # TINY's params_hash(0) before corrected_masks existed


def test_params_hash_holds_the_corrections_content_only_when_set(fixed, tmp_path):
    folder, _, image_id, _, new = fixed
    plain = tmp_path / "plain.yaml"
    plain.write_text(TINY)
    member = load_member(plain)
    assert "corrected_masks" not in member.model_dump(exclude_defaults=True)
    before = member.params_hash(0)
    assert before == HASH_BEFORE_THE_KEY  # finished stages of existing members stay finished
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    with_key = tmp_path / "fix.yaml"
    with_key.write_text(TINY + f"corrected_masks: {copy}\n")
    hashed = load_member(with_key).params_hash(0)
    assert hashed != before
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    with_key.write_text(TINY + f"corrected_masks: {moved}\n")
    assert load_member(with_key).params_hash(0) == hashed  # where it lies is not a result
    (moved / f"{image_id}_mask.gif").write_bytes(encode_mask_gif(1 - new))
    assert load_member(with_key).params_hash(0) != hashed  # an edited mask retrains


@pytest.mark.slow
def test_a_member_with_corrections_trains_and_records_them(synth, fixed, tmp_path):
    from kaggle_utils.train import prepare_stage, run_stage

    folder, _, image_id, _, new = fixed
    member = tmp_path / "fix.yaml"
    member.write_text(
        TINY.replace("max_train_images: 8", "max_train_images: 16") + f"corrected_masks: {folder}\n"
    )
    run = prepare_stage(member, data_dir=synth, run_dir=tmp_path / "runs", device="cpu")
    assert np.array_equal(run.data.load_mask(image_id), new)
    metrics = run_stage(
        member, data_dir=synth, run_dir=tmp_path / "runs", device="cpu", progress=False
    )
    record = json.loads((run.stage_dir / "metrics.json").read_text())["corrected_masks"]
    assert record["ids"] == [image_id] and record["count"] == 1
    assert record["sha256"] == corrections_digest(folder)
    in_split = set(run.train_index["id"]) | set(run.val_index["id"])
    assert (record["train_ids"] + record["val_ids"]) == ([image_id] if image_id in in_split else [])
    assert metrics["params_hash"] == run.params_hash
    plain = tmp_path / "plain.yaml"
    plain.write_text(TINY)
    assert load_member(plain).params_hash(0) != load_member(member).params_hash(0)
    out = run_stage(
        plain, data_dir=synth, run_dir=tmp_path / "plain_runs", device="cpu", progress=False
    )
    assert out["corrected_masks"] is None


def test_report_on_the_real_sample_sees_a_real_edit(real_sample, tmp_path):
    data = CompetitionData(real_sample)
    image_id = sorted(pd.read_csv(real_sample / "train_masks.csv")["img"])[0][:-4]
    old = data.load_mask(image_id)
    new = _edit(old)
    (tmp_path / "fix").mkdir()
    (tmp_path / "fix" / f"{image_id}_mask.gif").write_bytes(encode_mask_gif(new))
    corr = load_corrections(tmp_path / "fix", data)
    assert corr.shapes[image_id] == (1280, 1918)
    row = corrections_report(data, corr).iloc[0]
    assert row["added"] == int((new & ~old).sum()) and row["removed"] == int((old & ~new).sum())


def test_05_scores_on_the_masks_the_stages_trained_on(synth, fixed, tmp_path):
    """05 applies the stages' corrections to its truth; mixed or changed corrections refuse."""
    from kaggle_utils.corrections import corrections_record, with_stage_corrections

    folder, csv, image_id, old, new = fixed
    data = CompetitionData(synth)
    assert with_stage_corrections(data, [None, None]) is data
    record = corrections_record(load_corrections(folder, data), [image_id], [])
    scored = with_stage_corrections(data, [record, json.loads(json.dumps(record))])
    assert np.array_equal(scored.load_mask(image_id), new)
    assert np.array_equal(data.load_mask(image_id), old)
    with pytest.raises(CorrectionsError, match=r"different masks.*competition's masks"):
        with_stage_corrections(data, [record, None])
    moved = tmp_path / "fixed"
    shutil.copytree(folder, moved)
    (moved / f"{image_id}_mask.gif").write_bytes(encode_mask_gif(old))
    changed = {**record, "source": str(moved)}
    with pytest.raises(CorrectionsError, match=r"changed since the stages trained on it"):
        with_stage_corrections(data, [changed])
