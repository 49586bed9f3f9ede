"""Faults in the inputs, injected into real files (issue 18, "as users meet it").

Each test copies the synthetic Carvana (``kaggle_utils.synthetic.generate``) into a tmp dir, breaks
one thing the way users meet it (a missing GIF, a CSV-only download, a metadata.csv without
``make``, a corrupt leftover part, a truncated zip or gzip, an empty JPEG, a full disk) and checks
that nothing is dropped or substituted silently, that no partial output appears under a final
name, and that the error is one line naming the file, the fault and the fix.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _tiny_run import TINY_SPEC, tiny_checkpoint

from kaggle_utils import inference as I
from kaggle_utils import predict as P
from kaggle_utils.imageio import ImageDecodeError, decode_mask_gif
from kaggle_utils.index import train_index
from kaggle_utils.layout import find_data
from kaggle_utils.submission import SubmissionError, SubmissionWriter, validate_submission
from kaggle_utils.train import prepare_stage, run_stage

TINY = """\
name: tiny
model: {arch: unet, encoder: mobilenet_v2, encoder_weights: null, encoder_depth: 3,
        decoder_channels: [32, 16, 8]}
batch_size: 4
augment: {hflip: 0.5, shift_scale: false, color: false}
n_folds: 4
seed: 3
num_workers: 0
max_train_images: 8
max_val_images: 4
stages:
  - {size: 64x96, epochs: 1}
"""


@pytest.fixture
def member_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture
def data_copy(small_synthetic, tmp_path) -> Path:
    """A writable copy of the small synthetic set (4 training cars of 16 views, 1 test car)."""
    return Path(shutil.copytree(small_synthetic, tmp_path / "data"))


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------------- masks


def test_image_without_gif_trains_from_its_csv_row(data_copy, member_file, tmp_path, capsys):
    """The README says train_masks.csv is read first: a missing GIF must not drop the image."""
    gone = sorted((data_copy / "train_masks").iterdir())[5]
    image_id = gone.name.removesuffix("_mask.gif")
    truth = decode_mask_gif(gone.read_bytes())
    gone.unlink()
    run = prepare_stage(member_file, 0, data_dir=data_copy, run_dir=tmp_path / "run")
    ids = set(train_index(run.data)["id"])
    assert image_id in ids and len(ids) == 64
    assert "1 images have no GIF" in capsys.readouterr().out  # said, though nothing is lost
    np.testing.assert_array_equal(run.data.load_mask(image_id), truth)


@pytest.mark.slow
def test_csv_only_download_trains_a_stage(data_copy, member_file, tmp_path):
    """Only train_masks.csv, no GIF folder: used to fail with '0 cars cannot fill 4 folds'."""
    shutil.rmtree(data_copy / "train_masks")
    run = prepare_stage(member_file, 0, data_dir=data_copy, run_dir=tmp_path / "run")
    assert len(run.train_index) == 8 and len(run.val_index) == 4
    result = run_stage(
        member_file, 0, data_dir=data_copy, run_dir=tmp_path / "run", device="cpu", progress=False
    )
    assert 0.0 <= result["best_dice"] <= 1.0 and (run.stage_dir / "best.pt").is_file()


def test_images_without_any_mask_are_dropped_and_counted(data_copy, member_file, tmp_path, capsys):
    gifs = sorted((data_copy / "train_masks").iterdir())[:3]
    ids = [g.name.removesuffix("_mask.gif") for g in gifs]
    for g in gifs:
        g.unlink()
    csv = pd.read_csv(data_copy / "train_masks.csv")
    csv[~csv["img"].isin([f"{i}.jpg" for i in ids])].to_csv(
        data_copy / "train_masks.csv", index=False
    )
    run = prepare_stage(member_file, 0, data_dir=data_copy, run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert "3 of 64 images have no mask (no GIF, no train_masks.csv row" in out
    assert "dropped from training" in out and ids[0] in out
    used = set(run.train_index["id"]) | set(run.val_index["id"])
    assert not used & set(ids)


def test_metadata_without_make_is_reported_and_the_split_says_so(
    data_copy, member_file, tmp_path, capsys
):
    """A metadata.csv without 'make' changes the split: the split's label must change with it."""
    member = member_file.read_text().replace("max_train_images: 8", "max_train_images: 64")
    member_file.write_text(member.replace("max_val_images: 4", "max_val_images: 64"))
    before = prepare_stage(member_file, 0, data_dir=data_copy, run_dir=tmp_path / "a")
    assert before.split_source.endswith("stratify=make)")
    meta = pd.read_csv(data_copy / "metadata.csv")
    meta.drop(columns="make").to_csv(data_copy / "metadata.csv", index=False)
    capsys.readouterr()
    after = prepare_stage(member_file, 0, data_dir=data_copy, run_dir=tmp_path / "b")
    out = capsys.readouterr().out
    assert "metadata.csv has no 'make' column: training images have no make" in out
    assert "split_by_car stratifies by nothing instead of make" in out
    assert after.split_source.endswith("stratify=none)")
    assert after.split_source != before.split_source


def test_02_without_make_stratifies_by_coverage_and_records_it(data_copy, tmp_path, capsys):
    from kaggle_utils import eda
    from kaggle_utils.folds import folds_by_car, load_folds, save_folds

    meta = pd.read_csv(data_copy / "metadata.csv")
    meta.drop(columns="make").to_csv(data_copy / "metadata.csv", index=False)
    data = find_data(data_copy)
    index = eda.with_coverage(data, train_index(data))
    split = folds_by_car(index, n_folds=2, stratify="make")
    assert "folds stratified by coverage instead" in capsys.readouterr().out
    assert split.attrs["source"] == "folds_by_car(n_folds=2, stratify=coverage (no make), seed=0)"
    back = load_folds(save_folds(split, tmp_path / "run" / "folds.csv"))
    assert back.attrs["stratified_by"] == "coverage (no make)"


# ---------------------------------------------------------------------------- submission


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    return I.load_members([tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")])


def _read(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt") as f:
        return pd.read_csv(f, keep_default_na=False)


def _corrupt_body(part: Path) -> None:
    """Flip bytes inside the deflate data, keeping the part's header: what a torn disk write or
    a bad sector leaves, and what the old join copied into submission.csv.gz unchecked."""
    raw = bytearray(part.read_bytes())
    mid = 24 + (len(raw) - 24) // 2
    raw[mid : mid + 8] = bytes(b ^ 0x5A for b in raw[mid : mid + 8])
    part.write_bytes(bytes(raw))


def test_corrupt_leftover_part_is_dropped_and_its_rows_predicted_again(
    small_synthetic, members, tmp_path, capsys
):
    data = find_data(small_synthetic)
    kw = {"batch_size": 2, "num_workers": 0, "chunk_size": 4, "progress": False}
    clean = P.predict_submission(members, data, tmp_path / "a" / "submission.csv.gz", **kw)

    class Stop(Exception):
        pass

    def stop(n_done: int) -> None:
        if n_done >= 10:
            raise Stop

    out = tmp_path / "b" / "submission.csv.gz"
    with pytest.raises(Stop):
        P.predict_submission(members, data, out, on_batch=stop, **kw)
    part = out.with_name(out.name + ".parts") / "part-000000.bin"
    assert part.is_file()
    _corrupt_body(part)
    capsys.readouterr()
    resumed = P.predict_submission(members, data, out, **kw)
    said = capsys.readouterr().out
    assert f"dropping {part}: " in said and "its 4 rows are predicted again" in said
    assert resumed.resumed_from == 4  # chunk 1 kept, chunk 0 predicted again
    validate_submission(out, _read(clean.path)["img"], clean.shape)
    pd.testing.assert_frame_equal(_read(out), _read(clean.path))


def _writer_with_rows(out: Path, n: int = 12, shape=(20, 30)) -> tuple[SubmissionWriter, list]:
    ids = [f"c_{i:02d}.jpg" for i in range(n)]
    writer = SubmissionWriter(out, ids, chunk_size=4, shape=shape, workers=1)
    rng = np.random.default_rng(0)
    for i in ids:
        writer.add(i, (rng.random(shape) > 0.5).astype(np.uint8))
    writer.flush()
    return writer, ids


def test_join_checks_parts_first_and_names_the_bad_one(tmp_path):
    out = tmp_path / "submission.csv.gz"
    writer, ids = _writer_with_rows(out)
    bad = writer.parts_dir / "part-000001.bin"
    _corrupt_body(bad)
    with pytest.raises(SubmissionError) as err:
        writer.close(validate=True)
    msg = _one_line(err)
    assert str(bad) in msg and "CRC-32" in msg and "run again" in msg
    assert not out.exists() and not bad.exists()  # nothing under the final name; the part goes
    again = SubmissionWriter(out, ids, chunk_size=4, shape=(20, 30), workers=1)
    assert again.pending_ids() == ids[4:8]  # exactly the bad part's rows are predicted again
    again.add(ids[4:8], ["1 5"] * 4)
    assert again.close(validate=True) == out
    assert validate_submission(out, ids, (20, 30)).rows == 12


def test_final_name_is_written_only_after_validation(tmp_path):
    """Sound parts whose joined file fails validation leave no submission.csv.gz behind."""
    from kaggle_utils.submission.parts import _write_part

    out = tmp_path / "submission.csv.gz"
    writer, ids = _writer_with_rows(out)
    # a sound part (right ids, CRC and length) whose RLE runs past a 20x30 image
    text = "".join(f"{i},590 20\n" for i in ids[8:]).encode()
    _write_part(str(writer.parts_dir / "part-000002.bin"), text, 4, 1)
    with pytest.raises(SubmissionError, match="rows with invalid RLE") as err:
        writer.finalize(validate=True)
    assert f"{out} not written" in str(err.value)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv.gz.parts"]  # no temp


def _scored_run(data: Path, run: Path) -> Path:
    """A run folder holding a valid submission (the synthetic test truth itself)."""
    truth = pd.read_csv(data / "test_masks.csv", keep_default_na=False)
    shape = find_data(data).image_shape(truth["img"][0], "test")
    writer = SubmissionWriter(run / "submission.csv.gz", truth["img"], shape=shape, workers=1)
    writer.add(list(truth["img"]), list(truth["rle_mask"]))
    return writer.close(validate=True)


def test_summary_never_reports_a_submission_this_run_did_not_write(small_synthetic, tmp_path):
    from kaggle_utils.pipeline import summarize

    run = tmp_path / "run"
    sub = _scored_run(small_synthetic, run)
    fresh = summarize(run, small_synthetic, since=time.time() - 60)
    assert "submission score on the synthetic test masks: 1.00000" in fresh
    old = time.time() - 3600
    os.utime(sub, (old, old))  # left by an earlier run; this run's 06 failed
    stale = summarize(run, small_synthetic, since=time.time() - 60)
    assert "submission score" not in stale
    assert "not written by this run (left from " in stale and str(sub) in stale


# ------------------------------------------------------------------ errors that name the file


def test_truncated_train_zip_is_named(data_copy):
    with zipfile.ZipFile(data_copy / "train.zip", "w") as zf:
        for jpg in sorted((data_copy / "train").iterdir()):
            zf.write(jpg, f"train/{jpg.name}")
    shutil.rmtree(data_copy / "train")
    raw = (data_copy / "train.zip").read_bytes()
    (data_copy / "train.zip").write_bytes(raw[: len(raw) // 2])  # an interrupted download
    with pytest.raises(zipfile.BadZipFile) as err:
        train_index(find_data(data_copy))
    msg = _one_line(err)
    assert str(data_copy / "train.zip") in msg and f"{len(raw) // 2} bytes" in msg
    assert "truncated or corrupt" in msg and "download it again" in msg


def test_truncated_submission_gz_is_named(small_synthetic, tmp_path):
    sub = _scored_run(small_synthetic, tmp_path / "run")
    raw = sub.read_bytes()
    sub.write_bytes(raw[: len(raw) - 40])
    with pytest.raises(SubmissionError) as err:
        validate_submission(sub)
    msg = _one_line(err)
    assert str(sub) in msg and "truncated or corrupt" in msg and "rerun 06_submit" in msg


def test_empty_test_jpeg_is_named_on_the_first_line(data_copy, members, tmp_path):
    """A 0-byte JPEG used to surface 20 lines into a DataLoader traceback, its size nowhere."""
    bad = sorted((data_copy / "test").iterdir())[3]
    bad.write_bytes(b"")
    out = tmp_path / "submission.csv.gz"
    with pytest.raises(ImageDecodeError) as err:
        P.predict_submission(members, find_data(data_copy), out, num_workers=1, progress=False)
    first = str(err.value).splitlines()[0]
    assert first.startswith(f"cannot decode test image {bad}: the file is empty (0 bytes)")
    assert "replace it" in first and "DataLoader worker" in first
    assert not out.exists()


def test_empty_training_jpeg_is_named_on_the_first_line(data_copy):
    from torch.utils.data import DataLoader

    from kaggle_utils.dataset import CarvanaDataset

    data = find_data(data_copy)
    index = train_index(data).iloc[:4]
    (data_copy / "train" / index["image"].iloc[2]).write_bytes(b"")
    loader = DataLoader(CarvanaDataset(data, index, (64, 96)), batch_size=2, num_workers=1)
    with pytest.raises(ImageDecodeError) as err:
        list(loader)
    first = str(err.value).splitlines()[0]
    assert str(data_copy / "train" / index["image"].iloc[2]) in first and "0 bytes" in first


@pytest.fixture
def full_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs; needs root, as in this project's containers), unmounted
    afterwards; skipped where it cannot be mounted (the stand-in test below still runs)."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill the filesystem to about `leave` free bytes."""
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_checkpoint_save_on_a_full_disk_names_the_file(full_disk):
    from kaggle_utils.checkpoint import save_checkpoint
    from kaggle_utils.models import build_model

    best = full_disk / "member" / "s1" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"the previous best")
    _fill(full_disk, 64 * 1024)
    model = build_model(TINY_SPEC)
    with pytest.raises(OSError) as err:
        save_checkpoint(best, model, model_spec=TINY_SPEC, size=(64, 96), epoch=1)
    msg = _one_line(err)
    assert err.value.errno == 28 and f"writing {best}" in msg and "free disk space" in msg
    assert best.read_bytes() == b"the previous best"  # the old checkpoint is intact
    assert sorted(p.name for p in best.parent.iterdir()) == ["best.pt"]  # no temp left


def test_submission_writer_on_a_full_disk_names_the_part(full_disk):
    out = full_disk / "run" / "submission.csv.gz"
    with pytest.raises(OSError) as err:
        _writer_with_rows(out, n=8, shape=(1280, 1918))  # random masks: MBs of RLE per chunk
    msg = _one_line(err)
    assert err.value.errno == 28 and f"writing {out}.parts/part-00000" in msg
    assert not out.exists()


def test_disk_full_stand_in_names_the_file(tmp_path):
    """Stand-in for a full disk where no small filesystem can be mounted: the writer raises
    OSError(ENOSPC) from its write call, as the kernel does; it is the one place this module
    fakes a fault, and it exercises the same atomic_write path as the tests above."""
    import errno

    from kaggle_utils.atomic import atomic_write

    target = tmp_path / "best.pt"
    target.write_bytes(b"old")

    def write(f) -> None:
        f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as err:
        atomic_write(target, lambda f: torch.save({"w": torch.zeros(4)}, _Raising(f)))
    assert err.value.errno == errno.ENOSPC and f"writing {target}" in _one_line(err)
    with pytest.raises(OSError, match=f"writing {target}"):
        atomic_write(target, write)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["best.pt"]


class _Raising:
    """A file object whose writes fail with ENOSPC (what torch's C++ writer then wraps)."""

    def __init__(self, f):
        self.f = f

    def write(self, data) -> int:
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        pass
