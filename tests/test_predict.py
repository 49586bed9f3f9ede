"""Streamed test prediction (06): partial runs, clear failures, resumable submission, scoring.

The forward pass, TTA and the blend are `inference`'s: tests/test_inference.py."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _tiny_run import tiny_checkpoint

from kaggle_utils import inference as I
from kaggle_utils import predict as P
from kaggle_utils import testset as T
from kaggle_utils.layout import find_data
from kaggle_utils.rle import rle_decode, rle_encode


def _read(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt") as f:
        return pd.read_csv(f, keep_default_na=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", size=(64, 96))


@pytest.fixture(scope="module")
def members(ckpt):
    return I.load_members([ckpt])


def test_partial_run_on_real_sample_writes_exactly_those_ids(real_sample, members, tmp_path):
    data = find_data(real_sample)
    present = set(data.test.names())
    assert len(present) == 33
    out = tmp_path / "submission.csv.gz"
    result = P.predict_submission(
        members, data, out, limit="available", batch_size=4, num_workers=1, chunk_size=8
    )
    sub = _read(out)
    sample = data.read_csv("sample_submission")["img"]
    assert list(sub["img"]) == [i for i in sample if i in present]  # sample order, only those
    assert result.n_images == 33 and result.shape == (1280, 1918)
    for img, rle in zip(sub["img"], sub["rle_mask"], strict=True):
        assert rle_decode(rle, (1280, 1918), image_id=img).shape == (1280, 1918)


def test_missing_ids_fail_naming_count_and_examples(real_sample, members, tmp_path):
    data = find_data(real_sample)
    with pytest.raises(FileNotFoundError) as err:
        P.predict_submission(members, data, tmp_path / "s.csv.gz", num_workers=0)
    msg = str(err.value)
    assert "100031 of 100064" in msg
    missing = next(i for i in data.read_csv("sample_submission")["img"] if i not in data.test)
    assert missing in msg and "limit=" in msg
    assert not (tmp_path / "s.csv.gz").exists()


def test_select_ids_variants():
    sample = [f"c_{i:02d}.jpg" for i in range(1, 9)]
    have = sample[2:]
    assert T.select_ids(sample, have, "available") == have
    assert T.select_ids(sample, have, 3) == have[:3]
    assert T.select_ids(sample, have, ["c_05.jpg", "c_03.jpg"]) == ["c_03.jpg", "c_05.jpg"]
    with pytest.raises(FileNotFoundError, match=r"2 of 8 .*c_01.jpg"):
        T.select_ids(sample, have, None)
    with pytest.raises(ValueError, match="not in sample_submission"):
        T.select_ids(sample, have, ["x.jpg"])
    with pytest.raises(FileNotFoundError, match="missing from the test images"):
        T.select_ids(sample, have, ["c_01.jpg"])


@pytest.fixture
def synthetic_copy(small_synthetic, tmp_path) -> Path:
    """A writable copy of the small synthetic set (test images + CSVs)."""
    root = tmp_path / "data"
    shutil.copytree(small_synthetic, root, ignore=shutil.ignore_patterns("train*"))
    (root / "train").mkdir()
    return root


def test_corrupt_jpeg_fails_naming_the_file(synthetic_copy, members, tmp_path):
    data = find_data(synthetic_copy)
    names = data.read_csv("sample_submission")["img"].tolist()
    bad = synthetic_copy / "test" / names[5]
    bad.write_bytes(b"\xff\xd8 this is not a jpeg" * 10)
    with pytest.raises(ValueError, match=names[5]) as err:
        P.predict_submission(members, data, tmp_path / "s.csv.gz", batch_size=2, num_workers=1)
    assert "cannot decode test image" in str(err.value)


def test_missing_checkpoint_fails_naming_the_path(ckpt, tmp_path):
    missing = tmp_path / "member" / "s1" / "best.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        I.load_members([ckpt, missing])
    spec = {"members": [{"name": "m", "checkpoint": "member/s1/best.pt", "weight": 1}]}
    with pytest.raises(FileNotFoundError, match=str(missing)):
        I.members_from_ensemble(spec, tmp_path)


def test_interrupted_submit_resumes_to_the_same_file(small_synthetic, members, tmp_path):
    data = find_data(small_synthetic)
    kw = {"batch_size": 2, "num_workers": 1, "chunk_size": 4, "progress": False}
    full = P.predict_submission(members, data, tmp_path / "a" / "submission.csv.gz", **kw)

    class Stop(Exception):
        pass

    def stop_after_three_batches(n_done: int) -> None:
        if n_done >= 6:
            raise Stop(f"interrupted after {n_done} images")

    out = tmp_path / "b" / "submission.csv.gz"
    with pytest.raises(Stop):
        P.predict_submission(members, data, out, on_batch=stop_after_three_batches, **kw)
    assert not out.exists()  # never a half-written final file
    other = I.load_members([members[0].checkpoint], weights=[1.0])
    with pytest.raises(ValueError, match="other members or settings"):
        P.predict_submission(other, data, out, threshold=0.3, **kw)
    resumed = P.predict_submission(members, data, out, **kw)
    assert resumed.resumed_from >= 4  # at least the first finished chunk was kept
    assert resumed.resumed_from < full.n_images
    pd.testing.assert_frame_equal(_read(out), _read(full.path))


def test_score_submission_against_truth(tmp_path):
    rng = np.random.default_rng(0)
    masks = [(rng.random((20, 30)) > 0.5).astype(np.uint8) for _ in range(3)]
    truth = pd.DataFrame({"img": ["a.jpg", "b.jpg", "c.jpg"], "rle_mask": map(rle_encode, masks)})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    sub = truth.copy()
    sub.loc[2, "rle_mask"] = ""  # an empty prediction for a non-empty truth
    sub.to_csv(tmp_path / "sub.csv.gz", index=False)
    scores = P.score_submission(tmp_path / "sub.csv.gz", tmp_path / "truth.csv", shape=(20, 30))
    assert scores["dice"].tolist() == [1.0, 1.0, 0.0]


def test_kaggle_submit_without_credentials_says_so(tmp_path, monkeypatch, capsys):
    from kaggle_utils.kernels.cli import kaggle_submit

    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "submission.csv.gz"
    path.write_bytes(gzip.compress(b"img,rle_mask\n"))
    assert kaggle_submit(path, "test") is False
    out = capsys.readouterr().out
    assert "not submitting" in out and "kaggle" in out


def test_zipped_test_images_read_in_place(synthetic_copy, members, tmp_path):
    """test.zip (one top-level folder, as Kaggle ships it) gives the same file as the folder."""
    import zipfile

    kw = {"batch_size": 4, "num_workers": 1, "chunk_size": 8, "progress": False}
    from_folder = P.predict_submission(
        members, find_data(synthetic_copy), tmp_path / "a.csv.gz", **kw
    )
    with zipfile.ZipFile(synthetic_copy / "test.zip", "w") as zf:
        for jpg in sorted((synthetic_copy / "test").glob("*.jpg")):
            zf.write(jpg, f"test/{jpg.name}")
    shutil.rmtree(synthetic_copy / "test")
    data = find_data(synthetic_copy)
    assert data.test.is_zip
    from_zip = P.predict_submission(members, data, tmp_path / "b.csv.gz", **kw)
    pd.testing.assert_frame_equal(_read(from_zip.path), _read(from_folder.path))


KILLED_RUN = """
import sys, time
sys.path.insert(0, {tests!r})
from kaggle_utils import predict as P
from kaggle_utils.inference import load_members
from kaggle_utils.layout import find_data
members = load_members([{ckpt!r}])
P.predict_submission(
    members, find_data({data!r}), {out!r}, batch_size=1, num_workers=0, chunk_size=2,
    progress=False, on_batch=lambda n: time.sleep(0.5),
)
"""


@pytest.mark.slow
def test_killed_submit_resumes_to_the_same_file(small_synthetic, ckpt, members, tmp_path):
    """SIGKILL mid-run (no cleanup at all), then resume: same file as an uninterrupted run."""
    import subprocess
    import sys
    import time

    data = find_data(small_synthetic)
    kw = {"batch_size": 1, "num_workers": 0, "chunk_size": 2, "progress": False}
    full = P.predict_submission(members, data, tmp_path / "a" / "submission.csv.gz", **kw)
    out = tmp_path / "b" / "submission.csv.gz"
    script = KILLED_RUN.format(
        tests=str(Path(__file__).parent), ckpt=str(ckpt), data=str(small_synthetic), out=str(out)
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    part = out.with_name(out.name + ".parts") / "part-000001.bin"
    deadline = time.monotonic() + 300
    while not part.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert part.exists() and not out.exists(), "the run should have been killed mid-way"
    resumed = P.predict_submission(members, data, out, **kw)
    assert 4 <= resumed.resumed_from < full.n_images
    pd.testing.assert_frame_equal(_read(out), _read(full.path))


def test_largest_component_submission(small_synthetic, members, tmp_path):
    """Each written mask is the largest component of the plain run's mask."""
    import cv2

    from kaggle_utils.postprocess import keep_largest_component

    data = find_data(small_synthetic)
    kw = {"batch_size": 2, "num_workers": 0, "chunk_size": 4, "progress": False, "limit": 4}
    kw["threshold"] = 0.52  # near the untrained member's median: speckled masks
    plain = _read(P.predict_submission(members, data, tmp_path / "a.csv.gz", **kw).path)
    out = tmp_path / "b.csv.gz"
    cleaned = _read(P.predict_submission(members, data, out, largest_component=True, **kw).path)
    shape = T.image_shape(data.test, plain["img"].iloc[0])
    changed = 0
    for raw, kept in zip(plain["rle_mask"], cleaned["rle_mask"], strict=True):
        mask = keep_largest_component(rle_decode(raw, shape))
        assert rle_encode(mask) == kept
        n_parts = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)[0]
        assert n_parts <= 2
        changed += raw != kept
    assert changed  # the untrained member leaves islands to remove


def test_guided_submission_writes_the_guided_ensemble(small_synthetic, members, tmp_path):
    """With ``guided``, each written mask is the thresholded guided ensemble of that image (the
    photo decoded at 1/4 size as guide), and a plain run's parts are not resumed by it."""
    from kaggle_utils.config import GuidedFilterConfig
    from kaggle_utils.imageio import guide_shape

    data = find_data(small_synthetic)
    kw = {"batch_size": 2, "num_workers": 0, "chunk_size": 4, "progress": False, "limit": 2}
    guided = GuidedFilterConfig(scale=4, radius=2, eps=1e-3)
    out = tmp_path / "g.csv.gz"
    sub = _read(P.predict_submission(members, data, out, guided=guided.model_dump(), **kw).path)
    name = sub["img"].iloc[0]
    shape = T.image_shape(data.test, name)
    item = T.TestImages(data.test, [name], [members[0].size], guide_shape(shape, 4))[0]
    image = I.normalise(item["image0"][None], torch.device("cpu"))
    guide = item["guide"][None].float() / 255.0
    probs = I.ensemble_probs(members, [image], [0], shape, guide=guide, guided=guided)
    expected = (probs[0, 0] > 0.5).numpy()
    np.testing.assert_array_equal(rle_decode(sub["rle_mask"].iloc[0], shape), expected)
    plain = I.ensemble_probs(members, [image], [0], shape)
    assert ((plain[0, 0] > 0.5).numpy() != expected).any()  # the filter changed the mask
    with pytest.raises(ValueError, match="both guide and guided"):
        I.ensemble_probs(members, [image], [0], shape, guide=guide)
    # an interrupted guided run is not resumed without the filter (a different setting)

    def stop(n_done: int) -> None:
        if n_done >= 2:
            raise KeyboardInterrupt

    out = tmp_path / "h.csv.gz"
    kw.update(limit=4, chunk_size=2)
    with pytest.raises(KeyboardInterrupt):
        P.predict_submission(members, data, out, guided=guided, on_batch=stop, **kw)
    with pytest.raises(ValueError, match="other members or settings"):
        P.predict_submission(members, data, out, **kw)


def test_submit_settings_prefer_05s_spec_then_the_ensemble_file():
    from kaggle_utils.config import EnsembleConfig, GuidedFilterConfig

    cfg = EnsembleConfig(
        name="e", members=["m.yaml"], largest_component=True, guided_filter={"radius": 3}
    )
    old = {"threshold": 0.45, "members": []}  # written before 05 recorded post-processing
    got = P.submit_settings(old, cfg)
    assert got["largest_component"] is True and got["guided"] == GuidedFilterConfig(radius=3)
    from05 = P.submit_settings({**old, "guided_filter": {"radius": 4}}, cfg)["guided"]
    assert GuidedFilterConfig.model_validate(from05).radius == 4  # predict_submission validates
    assert got["threshold"] == 0.45 and got["tta"] is True and got["mode"] == "mean"
    new = {**old, "largest_component": False, "guided_filter": None, "combine": "vote"}
    got = P.submit_settings(new, cfg)
    assert got["largest_component"] is False and got["guided"] is None and got["mode"] == "vote"
