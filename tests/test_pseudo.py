"""Pseudo-labels: the confidence rule, the folder, the test-only ids, a stage that trains on them."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from _tiny_run import tiny_checkpoint

from kaggle_utils.config import load_member
from kaggle_utils.config.member import PseudoLabelsConfig
from kaggle_utils.index import test_index, train_index
from kaggle_utils.layout import find_data
from kaggle_utils.pseudo import (
    CSV_NAME,
    load_pseudo_labels,
    uncertain_fraction,
    write_from_probs,
    write_pseudo_labels,
)
from kaggle_utils.rle import rle_decode

REPO = Path(__file__).resolve().parents[1]
TINY = """\
name: tiny
model: {arch: unet, encoder: mobilenet_v2, encoder_weights: null, encoder_depth: 3,
        decoder_channels: [32, 16, 8]}
batch_size: 4
augment: {hflip: 0.5, shift_scale: false, color: false}
n_folds: 2
seed: 3
num_workers: 0
cache: true
max_train_images: 8
max_val_images: 4
stages:
  - {size: 64x96, epochs: 1, pseudo_labels: {dir: pseudo/r1, max_images: 3}}
"""


def _map(h: int = 40, w: int = 60, band: int = 0) -> np.ndarray:
    """A car-like box of probability 1 on 0, with `band` columns of 0.5 (a confused region)."""
    p = np.zeros((h, w), np.float32)
    p[10:30, 10:50] = 1.0
    p[:, :band] = 0.5
    return p


def _truth_maps(data_dir: Path, size: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    """Confident maps of the synthetic test set: its truth masks, area-resized (soft edges)."""
    truth = pd.read_csv(data_dir / "test_masks.csv")
    shape = cv2.imread(str(next((data_dir / "test").glob("*.jpg")))).shape[:2]
    out = []
    for img, rle in zip(truth["img"], truth["rle_mask"], strict=True):
        mask = rle_decode(rle, shape).astype(np.float32)
        out.append((img[:-4], cv2.resize(mask, size[::-1], interpolation=cv2.INTER_AREA)))
    return out


def test_the_confidence_rule_keeps_and_drops_constructed_maps(tmp_path):
    # the band is open: 0.1 and 0.9 themselves are confident, anything strictly inside is not
    assert uncertain_fraction(np.array([0.0, 0.1, 0.9, 1.0, 0.5, 0.11])) == pytest.approx(2 / 6)
    assert uncertain_fraction(np.array([25, 26, 229, 230], np.uint8)) == 0.5  # 26/255 > 0.1
    crisp, confused = _map(), _map(band=6)  # 6 of 60 columns uncertain: 0.1 of the frame
    assert uncertain_fraction(crisp) == 0.0 and uncertain_fraction(confused) == pytest.approx(0.1)
    maps = [("car_01", crisp), ("car_02", confused), ("car_03", _map(band=1))]  # 1/60 = 0.0167
    table = write_from_probs(iter(maps), tmp_path / "p", max_uncertain=0.05, meta={"x": 1})
    assert list(table["kept"]) == [True, False, True]
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == ["car_01.png", "car_03.png"]
    csv = pd.read_csv(tmp_path / "p" / CSV_NAME)
    assert list(csv.columns) == ["id", "uncertain_fraction", "kept"]
    assert csv["uncertain_fraction"].tolist() == pytest.approx([0.0, 0.1, 1 / 60])
    png = cv2.imread(str(tmp_path / "p" / "car_03.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and png.shape == (40, 60) and set(np.unique(png)) == {0, 128, 255}
    meta = json.loads((tmp_path / "p" / "pseudo_labels.json").read_text())
    assert meta["size"] == [40, 60] and meta["n_kept"] == 2 and meta["x"] == 1
    # written again with a stricter rule: the folder is replaced whole (no stale map survives)
    write_from_probs(iter(maps), tmp_path / "p", max_uncertain=0.01)
    assert [p.name for p in (tmp_path / "p").glob("*.png")] == ["car_01.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temporary folder left behind
    with pytest.raises(ValueError, match="max_uncertain"):
        write_from_probs(iter(maps), tmp_path / "q", max_uncertain=0)


def test_written_labels_are_the_members_forward_on_every_test_image(small_synthetic, tmp_path):
    data = find_data(small_synthetic)
    from kaggle_utils.inference import forward_probs, load_members, normalise

    members = load_members([tiny_checkpoint(tmp_path / "m" / "s1" / "best.pt", (64, 96))])
    head = [m for m in members[0].model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # a random net is unsure everywhere; large logits make it confident
        head.weight.mul_(300.0)
    out = tmp_path / "pseudo"
    table = write_pseudo_labels(members, data, out, (96, 128), max_uncertain=0.5, limit=3)
    tests = list(test_index(data)["id"])
    assert list(table["id"]) == tests[:3]
    assert not set(table["id"]) & set(train_index(data)["id"])
    assert (table["kept"] == (table["uncertain_fraction"] < 0.5)).all() and table["kept"].all()
    assert sorted(p.stem for p in out.glob("*.png")) == tests[:3]
    # the stored map is inference's forward (hflip TTA) of the member, bilinear at the map's size
    image_id = table["id"][0]
    x = torch.from_numpy(data.load_image(image_id, "test", (64, 96)).transpose(2, 0, 1)[None])
    p = forward_probs(members[0].model, normalise(x, "cpu"), tta=True)
    want = F.interpolate(p, size=(96, 128), mode="bilinear", align_corners=False)[0, 0].numpy()
    want_u8 = np.rint(want * 255)
    assert uncertain_fraction(want_u8.astype(np.uint8)) == pytest.approx(
        table["uncertain_fraction"][0], abs=0.01
    )
    got = cv2.imread(str(out / f"{image_id}.png"), cv2.IMREAD_UNCHANGED).astype(float)
    assert np.abs(got - want_u8).max() <= 2


def test_a_stage_refuses_train_ids_and_missing_folders(small_synthetic, tmp_path):
    data = find_data(small_synthetic)
    index = train_index(data)
    val = index[index["car"] == index["car"].iloc[0]]
    cfg = PseudoLabelsConfig(dir="pseudo/r1")
    with pytest.raises(
        FileNotFoundError, match=r"where: pseudo-label folder .*pseudo/r1 not found"
    ):
        load_pseudo_labels(cfg, tmp_path, data, val, "where")
    folder = tmp_path / "pseudo" / "r1"
    folder.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=rf"{folder} has no {CSV_NAME}"):
        load_pseudo_labels(cfg, tmp_path, data, val)
    maps = _truth_maps(small_synthetic, (64, 96))
    write_from_probs(iter(maps), folder, max_uncertain=0.5)
    labels = load_pseudo_labels(cfg, tmp_path, data, val)
    tests = set(test_index(data)["id"])
    assert set(labels.ids) <= tests and not set(labels.ids) & set(index["id"])
    assert labels.fractions == sorted(labels.fractions)  # most confident first
    # a training id slipped into the CSV: refused, naming the file and the row
    csv = folder / CSV_NAME
    rows = pd.read_csv(csv)
    rows.loc[1, "id"] = val["id"].iloc[0]
    rows.to_csv(csv, index=False)
    with pytest.raises(ValueError, match=rf"{csv}: row 2 \(line 3\), id .* is a training image"):
        load_pseudo_labels(cfg, tmp_path, data, val)
    rows.loc[1, "id"] = "nosuchcar_01"
    rows.to_csv(csv, index=False)
    with pytest.raises(ValueError, match="row 2 .* is not a test image"):
        load_pseudo_labels(cfg, tmp_path, data, val)


@pytest.mark.slow
def test_a_stage_trains_on_pseudo_labels_and_records_them(small_synthetic, tmp_path):
    from kaggle_utils.engine.training import _StageSetup
    from kaggle_utils.train import prepare_stage, run_stage

    member = tmp_path / "tiny.yaml"
    member.write_text(TINY)
    run_dir = tmp_path / "runs"
    maps = _truth_maps(small_synthetic, (96, 128))  # stored larger than the stage: area-resized
    maps[0] = (maps[0][0], np.full_like(maps[0][1], 0.5))  # one unsure map: written, not kept
    table = write_from_probs(iter(maps), run_dir / "pseudo" / "r1", max_uncertain=0.2)
    assert not table["kept"][0] and table["kept"][1:].all()
    expected = list(table[table.kept].sort_values(["uncertain_fraction", "id"])["id"][:3])

    run = prepare_stage(member, 0, data_dir=small_synthetic, run_dir=run_dir, device="cpu")
    setup = _StageSetup(run, 0, 1)
    train_part, pseudo_part = setup.train_ds.base.datasets
    assert len(setup.train_ds) == len(run.train_index) + 3 and pseudo_part.ids == expected
    assert pseudo_part.transform is setup.train_ds.transform  # augmented like training
    item = setup.train_ds[len(run.train_index)]
    assert item["id"] == expected[0] and item["mask"].shape == (1, 64, 96)
    assert 0 < float(item["mask"].mean()) < 1 and item["image"].shape == (3, 64, 96)
    val_ids = set(setup.val_ids)
    assert not val_ids & set(expected) and not set(train_part.ids) & set(expected)
    assert not set(run.val_index["car"]) & {i.rsplit("_", 1)[0] for i in expected}

    metrics = run_stage(
        member, 0, data_dir=small_synthetic, run_dir=run_dir, device="cpu", progress=False
    )
    saved = json.loads((run.stage_dir / "metrics.json").read_text())
    for record in (metrics["pseudo_labels"], saved["pseudo_labels"]):
        assert record["ids"] == expected and record["n"] == 3
        assert record["dir"] == str(run_dir / "pseudo" / "r1")
    assert saved["n_val"] == len(run.val_index) and 0 <= saved["best_dice"] <= 1


def test_the_key_absent_keeps_params_hash_and_set_changes_it():
    path = REPO / "params/demo/unet_resnet18.yaml"
    unet = load_member(path)
    assert unet.params_hash(0) == "773e4b4076ec2f15"  # test_config's pinned values
    assert unet.params_hash(1) == "55b917469a9c51e0"
    assert load_member(path, {"stages.0.pseudo_labels": None}).params_hash(1) == "55b917469a9c51e0"
    on = load_member(path, {"stages.1.pseudo_labels": {"dir": "pseudo/r1"}})
    assert on.params_hash(0) == "773e4b4076ec2f15" and on.params_hash(1) != "55b917469a9c51e0"
    assert on.stages[1].pseudo_labels.max_uncertain is None


@pytest.mark.parametrize(
    "bad",
    [{"dir": ""}, {"dir": "p", "max_uncertain": 0}, {"dir": "p", "max_images": 0}, {"max": 1}],
)
def test_the_stage_key_is_validated(bad):
    from kaggle_utils.config import ConfigError

    with pytest.raises((ConfigError, ValueError)):
        load_member(REPO / "params/demo/unet_resnet18.yaml", {"stages.0.pseudo_labels": bad})


def test_the_cli_writes_a_folder_under_the_run_dir(small_synthetic, tmp_path, capsys):
    from kaggle_utils.pseudo import main

    ckpt = tiny_checkpoint(tmp_path / "runs" / "m" / "s1_64x96" / "best.pt", (64, 96))
    args = ["--run-dir", str(tmp_path / "runs"), "--out", "pseudo/cli", "--size", "64x96"]
    args += ["--checkpoint", str(ckpt), "--data-dir", str(small_synthetic), "--limit", "2"]
    assert main([*args, "--max-uncertain", "1.0", "--device", "cpu", "--no-tta"]) == 0
    table = pd.read_csv(tmp_path / "runs" / "pseudo" / "cli" / CSV_NAME)
    assert len(table) == 2 and "of 2 test images kept" in capsys.readouterr().out
    meta = json.loads((tmp_path / "runs" / "pseudo" / "cli" / "pseudo_labels.json").read_text())
    assert meta["members"][0]["checkpoint"] == str(ckpt) and meta["tta"] is False


def test_real_test_images_serve_with_their_maps(real_sample, tmp_path):
    """On Kaggle's files: the 33 test JPEGs are pseudo-labelled images, its 768 train ones never."""
    from kaggle_utils.pseudo import PseudoLabelDataset

    data = find_data(real_sample)
    tests, index = list(test_index(data)["id"]), train_index(data)
    maps = [(i, _map(64, 96, band=k % 3)) for k, i in enumerate(tests[:6])]
    write_from_probs(iter(maps), tmp_path / "p", max_uncertain=0.02)  # band 0 and 1 kept
    val = index[index["car"] == index["car"].iloc[0]]
    labels = load_pseudo_labels(PseudoLabelsConfig(dir="p"), tmp_path, data, val)
    assert labels.ids == sorted([i for k, i in enumerate(tests[:6]) if k % 3 == 0]) + sorted(
        [i for k, i in enumerate(tests[:6]) if k % 3 == 1]
    )
    item = PseudoLabelDataset(data, labels, (128, 192), soft_masks=False)[0]
    assert item["image"].shape == (3, 128, 192) and set(item["mask"].unique().tolist()) == {0, 1}
    assert not set(labels.ids) & set(index["id"])
