"""Full-resolution training: random crops of the frame, the frame's own size, and the hq photos.

The 1st-place team trained on the whole 1280x1918 frame (1918 padded to 1920); a T4 holds that
with random crops, validated on whole frames. These tests pin what makes that safe: a crop stage
scores exactly what predicting whole frames gives, a stage at the frame's own size needs no
resize, and `hq: true` really reads train_hq.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from kaggle_utils.augment import build_augmentations
from kaggle_utils.config import ConfigError, load_member
from kaggle_utils.config.member import parse_size
from kaggle_utils.dataset import CachedDataset, build_datasets
from kaggle_utils.layout import CompetitionData
from kaggle_utils.train import run_stage

TINY = """\
name: tiny
model: {arch: unet, encoder: mobilenet_v2, encoder_weights: null, encoder_depth: 3,
        decoder_channels: [32, 16, 8]}
optimizer: {name: adamw, lr: 0.003}
batch_size: 4
augment: {hflip: 0.5, shift_scale: false, color: false}
n_folds: 2
seed: 3
num_workers: 0
cache: true
max_train_images: 8
max_val_images: 4
stages:
  - {size: 64x96, epochs: 1}
"""


def member_file(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def test_crop_and_frame_sizes_are_validated(tmp_path):
    path = member_file(tmp_path)
    member = load_member(path, {"stages": [{"size": "1280x1918", "epochs": 1, "crop": 1024}]})
    assert member.stages[0].size == (1280, 1918) and member.stages[0].crop == (1024, 1024)
    assert parse_size("1280x1918") == (1280, 1918)  # the frame itself: the model pads 1918
    with pytest.raises(ConfigError, match=r"stages\.0.*crop 320x480 is larger.*256x384"):
        load_member(path, {"stages": [{"size": "256x384", "epochs": 1, "crop": "320x480"}]})
    with pytest.raises(ConfigError, match=r"stages\.0\.crop.*multiples of 32"):
        load_member(path, {"stages": [{"size": "256x384", "epochs": 1, "crop": "100x100"}]})
    with pytest.raises(ConfigError, match=r"stages\.0\.size.*at least 32"):
        load_member(path, {"stages": [{"size": "16x384", "epochs": 1}]})


def test_new_keys_at_their_defaults_keep_finished_stages_valid(tmp_path):
    """A member file written before `crop` and `hq` existed hashes as it did then (the value
    pinned here is this file's hash at commit 4dc3823), so its finished stages are not retrained."""
    member = load_member(member_file(tmp_path))
    assert member.params_hash(0) == "3994f1ced53912b4"
    explicit = load_member(
        member_file(tmp_path, TINY.replace("epochs: 1}", "epochs: 1, crop: null}") + "hq: false\n")
    )
    assert explicit.params_hash(0) == member.params_hash(0)
    cropped = load_member(member_file(tmp_path, TINY.replace("epochs: 1}", "epochs: 1, crop: 32}")))
    assert cropped.params_hash(0) != member.params_hash(0)


def test_training_items_are_crops_of_the_augmented_frame_and_validation_whole(small_synthetic):
    data = CompetitionData(small_synthetic)
    from kaggle_utils.index import train_index

    index = train_index(data).head(4)
    member = load_member_text(TINY.replace("hflip: 0.5", "hflip: false"))
    train, val = build_datasets(data, member, index, index, (160, 240), crop=(64, 96))
    whole = CachedDataset(data, index, (160, 240))
    for i in range(len(index)):
        train.epoch = i
        item = train[i]
        assert tuple(item["image"].shape) == (3, 64, 96) and tuple(item["mask"].shape) == (
            1,
            64,
            96,
        )
        frame = whole[i]["image"].numpy()
        crop = item["image"].numpy()
        found = cv2.matchTemplate(frame[0], crop[0], cv2.TM_SQDIFF)
        y, x = np.unravel_index(int(found.argmin()), found.shape)
        assert np.array_equal(frame[:, y : y + 64, x : x + 96], crop)  # a window, pixel for pixel
        assert tuple(val[i]["image"].shape) == (3, 160, 240)


def load_member_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load_member(member_file(Path(tmp), text))


@pytest.mark.slow
def test_crop_stage_scores_what_whole_frame_prediction_gives(small_synthetic, tmp_path):
    """A stage at the frame's own size (160x240: 240 is padded to 256 inside the model) trained on
    64x96 crops: its OOF maps are whole frames equal to predicting best.pt on whole frames, and
    its per-image Dice is Kaggle's on those frames with no resize at all."""
    from kaggle_utils.ensemble.oof import repredict
    from kaggle_utils.metrics import full_res_dice

    text = TINY.replace("{size: 64x96, epochs: 1}", "{size: 160x240, epochs: 2, crop: 64x96}")
    path = member_file(tmp_path, text)
    metrics = run_stage(
        path, 0, data_dir=small_synthetic, run_dir=tmp_path / "runs", device="cpu", progress=False
    )
    stage_dir = tmp_path / "runs" / "tiny" / "s1_160x240"
    assert metrics["crop"] == [64, 96] and metrics["size"] == [160, 240]
    assert metrics["dice_resolution"] == "160x240"
    oof = pd.read_csv(stage_dir / "oof.csv")
    data = CompetitionData(small_synthetic)
    again = repredict(stage_dir / "best.pt", data, list(oof["id"]), tta=False, device="cpu")
    for image_id, dice in zip(oof["id"], oof["dice"], strict=True):
        stored = cv2.imread(str(stage_dir / "oof" / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
        assert stored.shape == (160, 240)
        assert np.abs(stored.astype(int) - again[image_id].astype(int)).max() <= 1
        probs = torch.from_numpy(again[image_id].astype(np.float32) / 255)[None, None]
        truth = torch.from_numpy(data.load_mask(image_id))[None]
        assert float(full_res_dice(probs, truth)[0]) == pytest.approx(dice, abs=2e-3)
    assert json.loads((stage_dir / "metrics.json").read_text())["best_dice"] == pytest.approx(
        oof["dice"].mean(), abs=1e-6
    )


@pytest.fixture(scope="module")
def hq_synthetic(tmp_path_factory) -> Path:
    """A synthetic set with train_hq/test_hq whose hq photos are made black, so reading them
    is visible in every decoded pixel."""
    from kaggle_utils.imageio import encode_jpeg
    from kaggle_utils.synthetic import generate

    out = generate(
        tmp_path_factory.mktemp("synthetic_hq"),
        n_train_cars=2,
        n_test_cars=1,
        size=(64, 96),
        hq=True,
    )
    for path in [*out.glob("train_hq/*.jpg"), *out.glob("test_hq/*.jpg")]:
        path.write_bytes(encode_jpeg(np.zeros((64, 96, 3), np.uint8), 100))
    return out


def test_hq_generated_and_read_by_training_and_validation(hq_synthetic):
    data = CompetitionData(hq_synthetic)
    assert len(list(hq_synthetic.glob("train_hq/*.jpg"))) == 32
    from kaggle_utils.index import train_index

    index = train_index(data).head(3)
    member = load_member_text(TINY + "hq: true\n")
    train, val = build_datasets(data, member, index, index, (64, 96))

    def spread(image: torch.Tensor) -> float:
        return float(image.max() - image.min())

    assert all(spread(val[i]["image"][0]) == 0.0 for i in range(3))  # black: from train_hq
    assert all(spread(train[i]["image"][0]) == 0.0 for i in range(3))
    plain = build_datasets(data, load_member_text(TINY), index, index, (64, 96))[1]
    assert all(spread(plain[i]["image"][0]) > 0.5 for i in range(3))  # train/: the photos


def test_crop_is_last_so_shifts_act_on_the_whole_frame():
    aug = build_augmentations({"hflip": 0.5, "shift_scale": 0.5}, crop=(32, 64))
    assert [type(t).__name__ for t in aug.transforms][-1] == "RandomCrop"
    out = aug(image=np.zeros((64, 96, 3), np.uint8), mask=np.zeros((64, 96), np.uint8))
    assert out["image"].shape == (32, 64, 3) and out["mask"].shape == (32, 64)


def test_real_frames_at_their_own_size_crop_exactly_and_predict_whole(real_sample):
    """Real 1918x1280 JPEGs and GIF masks: a stage at the frame's own size decodes and keeps
    masks with no resize, its crops are windows of that frame, and the model's output on the
    whole frame (padded to 1920 inside) is exactly the frame's size."""
    from _tiny_run import TINY_SPEC

    from kaggle_utils.constants import MASK_SHAPE
    from kaggle_utils.dataset import resize_mask
    from kaggle_utils.index import train_index
    from kaggle_utils.models import build_model

    data = CompetitionData(real_sample)
    index = train_index(data).head(2)
    member = load_member_text(TINY.replace("hflip: 0.5", "hflip: false"))
    train, val = build_datasets(data, member, index, index, MASK_SHAPE, crop=(256, 512))
    for i, image_id in enumerate(index["id"]):
        truth = data.load_mask(image_id)
        assert np.array_equal(resize_mask(truth, MASK_SHAPE), truth)  # no resize at 1280x1918
        whole = val[i]
        assert tuple(whole["mask"].shape) == (1, *MASK_SHAPE)
        crop = train[i]
        frame_mask, crop_mask = whole["mask"][0].numpy(), crop["mask"][0].numpy()
        found = cv2.matchTemplate(
            whole["image"][0].numpy(), crop["image"][0].numpy(), cv2.TM_SQDIFF
        )
        y, x = np.unravel_index(int(found.argmin()), found.shape)
        assert np.array_equal(frame_mask[y : y + 256, x : x + 512], crop_mask)
    model = build_model(TINY_SPEC).eval()
    with torch.no_grad():
        out = model(val[0]["image"][None])
    assert tuple(out.shape) == (1, 1, *MASK_SHAPE)


def test_a_member_trained_on_hq_is_scored_and_submitted_from_the_hq_photos(hq_synthetic, tmp_path):
    """The checkpoint says hq: 05 re-predicts train_hq and 06 reads test_hq (here black photos,
    so the maps equal the model's answer to a black frame), unless told otherwise."""
    from _tiny_run import TINY_SPEC

    from kaggle_utils import predict as P
    from kaggle_utils.checkpoint import save_checkpoint
    from kaggle_utils.ensemble.oof import repredict
    from kaggle_utils.inference import forward_probs, load_members, normalise
    from kaggle_utils.models import build_model

    torch.manual_seed(0)
    model = build_model(TINY_SPEC).eval()
    pt = save_checkpoint(
        tmp_path / "best.pt", model, model_spec=TINY_SPEC, size=(64, 96), epoch=1,
        extra={"member": "tiny", "hq": True},
    )  # fmt: skip
    data = CompetitionData(hq_synthetic)
    ids = sorted(p.stem for p in hq_synthetic.glob("train/*.jpg"))[:2]
    black = normalise(torch.zeros(1, 3, 64, 96, dtype=torch.uint8), torch.device("cpu"))
    expected = (forward_probs(model, black)[0, 0] * 255).round().to(torch.uint8).numpy()
    got = repredict(pt, data, ids, tta=False)
    assert all(np.abs(got[i].astype(int) - expected.astype(int)).max() <= 1 for i in ids)
    members = load_members([pt])
    kw = {"limit": 2, "batch_size": 2, "num_workers": 0, "progress": False, "tta": False}
    default = P.predict_submission(members, data, tmp_path / "a.csv.gz", **kw).path.read_bytes()
    hq = P.predict_submission(members, data, tmp_path / "b.csv.gz", hq=True, **kw)
    plain = P.predict_submission(members, data, tmp_path / "c.csv.gz", hq=False, **kw)
    assert default == hq.path.read_bytes() != plain.path.read_bytes()
