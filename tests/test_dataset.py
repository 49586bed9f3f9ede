"""CarvanaDataset: normalised tensors at any (H, W), reduced decoding, DataLoader workers on zips;
the training sets: in-memory cache, seeded augmentation, validation masks at the metric's size."""

from __future__ import annotations

import zipfile

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kaggle_utils.augment import build_augmentations
from kaggle_utils.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CachedDataset,
    CarvanaDataset,
    SeededDataset,
    ValidationMasks,
    build_datasets,
    resize_mask,
)
from kaggle_utils.index import test_index, train_index
from kaggle_utils.layout import find_data


def _denormalise(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x * std + mean) * 255).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def zipped_synthetic(small_synthetic, tmp_path_factory):
    root = tmp_path_factory.mktemp("zipped_synthetic")
    for sub in ("train", "train_masks", "test"):
        with zipfile.ZipFile(root / f"{sub}.zip", "w") as zf:
            for p in sorted((small_synthetic / sub).iterdir()):
                zf.write(p, f"{sub}/{p.name}")
    for name in ("metadata.csv", "train_masks.csv"):
        (root / name).write_bytes((small_synthetic / name).read_bytes())
    return root


@pytest.mark.parametrize("size", [(160, 240), (128, 192), (96, 160), (80, 120)])
def test_items_shapes_dtypes_and_normalisation(small_synthetic, size):
    data = find_data(small_synthetic)
    index = train_index(data)
    ds = CarvanaDataset(data, index, size)
    assert len(ds) == 64
    item = ds[3]
    assert item["id"] == index["id"].iloc[3]
    assert item["image"].shape == (3, *size) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, *size) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    raw = data.load_image(item["id"], size=size).astype(np.float32)
    np.testing.assert_allclose(_denormalise(item["image"]), raw, atol=1e-3)
    full = data.load_mask(item["id"])
    assert abs(item["mask"].mean().item() - full.mean()) < 0.02


def test_real_sample_non_square(real_sample):
    data = find_data(real_sample)
    index = train_index(data).iloc[:2]
    ds = CarvanaDataset(data, index, (1280, 1792))
    item = ds[0]
    assert item["image"].shape == (3, 1280, 1792) and item["mask"].shape == (1, 1280, 1792)
    small = CarvanaDataset(data, index, (320, 480))[1]
    assert small["image"].shape == (3, 320, 480)
    # mask at the small size agrees with the full-resolution GIF
    full = data.load_mask(index["id"].iloc[1])
    assert abs(small["mask"].mean().item() - full.mean()) < 0.005


def test_resize_mask_threshold():
    mask = np.zeros((100, 150), np.uint8)
    mask[20:80, 30:120] = 1
    small = resize_mask(mask, (50, 75))
    np.testing.assert_array_equal(small, mask[::2, ::2])
    assert resize_mask(mask, (100, 150)) is not None
    big = resize_mask(mask, (200, 300))
    assert set(np.unique(big)) == {0, 1} and abs(big.mean() - mask.mean()) < 0.01


def test_soft_masks_hold_each_pixels_coverage(real_sample):
    """Soft targets: the area fraction of car per low-res pixel, so the mean is preserved and
    the round trip to full resolution keeps far more of the outline than a thresholded mask."""
    mask = np.zeros((100, 150), np.uint8)
    mask[21:80, 30:121] = 1  # edges that cut through 2x2 blocks
    soft = resize_mask(mask, (50, 75), soft=True)
    assert soft.dtype == np.uint8 and soft[10, 20] == 128 and soft[30, 60] == 128
    assert abs(soft.mean() / 255 - mask.mean()) < 0.002
    np.testing.assert_array_equal(resize_mask(mask, (100, 150), soft=True), mask * 255)

    data = find_data(real_sample)
    index = train_index(data).iloc[:2]
    item = CarvanaDataset(data, index, (128, 192), soft_masks=True)[0]
    m = item["mask"]
    assert m.dtype == torch.float32 and m.min() >= 0 and m.max() <= 1
    assert ((m > 0) & (m < 1)).sum() > 200  # the outline is fractional
    full = data.load_mask(item["id"])
    assert abs(m.mean().item() - full.mean()) < 0.001

    def round_trip(low: np.ndarray) -> float:
        up = cv2.resize(low.astype(np.float32), (1918, 1280), interpolation=cv2.INTER_LINEAR)
        pred = up > 0.5
        return 2 * (pred & (full > 0)).sum() / (pred.sum() + full.sum())

    binary = CarvanaDataset(data, index, (128, 192))[0]["mask"][0].numpy()
    assert round_trip(m[0].numpy()) > round_trip(binary) + 0.002


def test_test_split_without_masks(small_synthetic):
    data = find_data(small_synthetic)
    ds = CarvanaDataset(data, test_index(data), (64, 96), split="test", with_mask=False)
    item = ds[0]
    assert set(item) == {"image", "id"} and item["image"].shape == (3, 64, 96)
    with pytest.raises(ValueError, match="with_mask=False"):
        CarvanaDataset(data, test_index(data), (64, 96), split="test")
    with pytest.raises(FileNotFoundError, match="train_hq"):
        CarvanaDataset(data, train_index(data), (64, 96), hq=True)[0]


def test_dataloader_two_workers_over_zip(small_synthetic, zipped_synthetic):
    data = find_data(zipped_synthetic)
    assert data.train.is_zip and data.train_masks.is_zip
    index = train_index(data)  # opens the zip in this process before the workers fork
    ds = CarvanaDataset(data, index, (96, 144))
    loader = DataLoader(ds, batch_size=8, num_workers=2)
    ids, images, masks = [], [], []
    for batch in loader:
        ids += batch["id"]
        images.append(batch["image"])
        masks.append(batch["mask"])
    assert ids == list(index["id"])
    images, masks = torch.cat(images), torch.cat(masks)
    assert images.shape == (64, 3, 96, 144) and masks.shape == (64, 1, 96, 144)
    folder = CarvanaDataset(find_data(small_synthetic), index, (96, 144))
    for i in (0, 17, 63):
        torch.testing.assert_close(images[i], folder[i]["image"])
        torch.testing.assert_close(masks[i], folder[i]["mask"])


def test_workers_do_not_repeat_each_others_augmentations(small_synthetic):
    """albumentations 2 Compose owns its RNG; forked workers must not replay the same flips."""
    data = find_data(small_synthetic)
    index = train_index(data).iloc[[0] * 32]
    aug = build_augmentations({"hflip": 0.5, "shift_scale": False, "color": False})
    ds = CarvanaDataset(data, index, (64, 96), transform=aug)
    loader = DataLoader(ds, batch_size=1, num_workers=2, generator=torch.Generator().manual_seed(0))
    flipped = [batch["image"][0] for batch in loader]
    plain = ds.data.load_image(index["id"].iloc[0], size=(64, 96))
    is_flip = [not np.allclose(_denormalise(x), plain, atol=1e-3) for x in flipped]
    assert 4 <= sum(is_flip) <= 28
    # worker 0 serves even items, worker 1 odd ones: identical RNGs would make pairs equal
    assert any(is_flip[2 * k] != is_flip[2 * k + 1] for k in range(16))


def test_bad_arguments(small_synthetic):
    data = find_data(small_synthetic)
    index = train_index(data)
    with pytest.raises(ValueError, match="'id'"):
        CarvanaDataset(data, index.drop(columns="id"), (64, 64))
    with pytest.raises(ValueError, match="size"):
        CarvanaDataset(data, index, (0, 64))
    with pytest.raises(ValueError, match="split"):
        CarvanaDataset(data, index, (64, 64), split="val")


# ---------------------------------------------------------------- training and validation sets


def test_imagenet_statistics_come_from_constants():
    from kaggle_utils import constants

    assert IMAGENET_MEAN is constants.IMAGENET_MEAN and IMAGENET_STD is constants.IMAGENET_STD


@pytest.mark.parametrize("soft", [False, True])
def test_cached_dataset_serves_what_the_decoding_dataset_serves(small_synthetic, soft):
    data = find_data(small_synthetic)
    index = train_index(data).iloc[:5]
    cached = CachedDataset(data, index, (64, 96), soft_masks=soft)
    plain = CarvanaDataset(data, index, (64, 96), soft_masks=soft)
    assert len(cached) == 5 and cached.images.dtype == np.uint8 and cached.masks.dtype == np.uint8
    for i in range(5):
        a, b = cached[i], plain[i]
        assert a["id"] == b["id"]
        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["mask"], b["mask"])
    empty = CachedDataset(data, index.iloc[:0], (64, 96))
    assert len(empty) == 0 and empty.images.shape == (0, 64, 96, 3)


def test_seeded_dataset_repeats_an_epoch_and_varies_across_epochs(small_synthetic):
    """Same (seed, epoch, sample): same augmentation, however often or in which order it is read."""
    data = find_data(small_synthetic)
    index = train_index(data).iloc[[0] * 16]
    aug = build_augmentations({"hflip": 0.5, "shift_scale": False, "color": False})
    ds = SeededDataset(CachedDataset(data, index, (64, 96), transform=aug), aug, seed=7)

    def epoch(e: int, order=range(16)) -> dict[int, torch.Tensor]:
        ds.epoch = e
        return {i: ds[i]["image"] for i in order}

    first = epoch(0)
    again = epoch(0, order=reversed(range(16)))
    assert all(torch.equal(first[i], again[i]) for i in range(16))
    later = epoch(1)
    assert any(not torch.equal(first[i], later[i]) for i in range(16))


@pytest.mark.parametrize("cache", [True, False])
def test_build_datasets_augments_only_the_training_set(small_synthetic, cache):
    from kaggle_utils.config import MemberConfig

    data = find_data(small_synthetic)
    index = train_index(data)
    member = MemberConfig.model_validate(
        {
            "name": "tiny",
            "model": {"arch": "unet"},
            "augment": {"hflip": 1.0, "shift_scale": False, "color": False},
            "cache": cache,
            "seed": 3,
            "stages": [{"size": "64x96", "epochs": 1}],
        }
    )
    train_ds, val_ds = build_datasets(data, member, index.iloc[:4], index.iloc[4:7], (64, 96))
    assert isinstance(train_ds, SeededDataset) and train_ds.seed == 3
    assert isinstance(train_ds.base, CachedDataset if cache else CarvanaDataset)
    assert isinstance(val_ds, CachedDataset if cache else CarvanaDataset)
    assert (len(train_ds), len(val_ds)) == (4, 3) and val_ds.transform is None
    plain = data.load_image(train_ds[0]["id"], size=(64, 96)).astype(np.float32)
    np.testing.assert_allclose(_denormalise(train_ds[0]["image"]), plain[:, ::-1], atol=1e-3)
    assert train_ds[0]["mask"].shape == (1, 64, 96)


@pytest.mark.parametrize(
    ("val_full_res", "shape"), [(True, (160, 240)), (80, (80, 120)), (False, (64, 96))]
)
def test_validation_masks_at_the_metric_resolution(small_synthetic, val_full_res, shape):
    data = find_data(small_synthetic)
    ids = list(train_index(data)["id"].iloc[:3])
    masks = ValidationMasks(data, ids, val_full_res, (64, 96), guide_scale=4)
    assert masks.shape == shape and masks.label == f"{shape[0]}x{shape[1]}"
    got = masks.get(ids[1:])
    assert got.shape == (2, *shape) and got.dtype == torch.uint8
    np.testing.assert_array_equal(got[0].numpy(), resize_mask(data.load_mask(ids[1]), shape))
    guide = masks.guide(ids)
    assert guide.shape == (3, 1, 40, 60) and 0 <= float(guide.min()) <= float(guide.max()) <= 1
    assert ValidationMasks(data, [], True, (64, 96)).shape == (1280, 1918)  # Carvana's, if empty
