"""Torch Datasets over the competition files: image (and mask) at the training size, normalised.

Images are decoded straight to the target size (reduced JPEG decoding), which is what makes
high-resolution training affordable on a few CPU workers. Augmentations run at the target size.

For training: `CachedDataset` (decoded once, in memory), `SeededDataset` (reproducible
augmentation), `ValidationMasks` (masks at the metric's resolution) and `build_datasets`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, get_worker_info

from kaggle_utils.constants import IMAGENET_MEAN, IMAGENET_STD, MASK_SHAPE
from kaggle_utils.layout import CompetitionData

if TYPE_CHECKING:
    from kaggle_utils.config import MemberConfig

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CachedDataset",
    "CarvanaDataset",
    "SeededDataset",
    "ValidationMasks",
    "build_datasets",
    "mask_tensor",
    "normalize_image",
    "resize_mask",
    "training_item",
]

_SCALE = (1.0 / (255.0 * np.asarray(IMAGENET_STD, dtype=np.float32))).astype(np.float32)
_OFFSET = (np.asarray(IMAGENET_MEAN, dtype=np.float32) / np.asarray(IMAGENET_STD)).astype(
    np.float32
)


def normalize_image(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W), ImageNet mean/std (what pretrained encoders saw)."""
    x = rgb.astype(np.float32) * _SCALE - _OFFSET
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def resize_mask(mask: np.ndarray, size: tuple[int, int], soft: bool = False) -> np.ndarray:
    """{0,1} mask -> mask at (H, W) by area averaging: {0,1} (threshold at one half) or, with
    ``soft``, the car's coverage of each pixel as uint8 0..255 (see ``mask_tensor``).

    Soft targets matter at low resolution: a model trained on coverage places the 0.5 crossing of
    its bilinearly upsampled output between low-res pixels. At 128x192 on the real masks the
    round trip (downsample, upsample, threshold) keeps Dice 0.9977 soft vs 0.9926 binary.
    """
    if mask.shape[:2] == tuple(size):
        m = mask.astype(np.uint8, copy=False)
        return (m != 0).astype(np.uint8) * 255 if soft else m
    m = cv2.resize(mask.astype(np.uint8) * 255, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return m if soft else (m >= 128).astype(np.uint8)


def mask_tensor(mask: np.ndarray, soft: bool = False) -> torch.Tensor:
    """(H, W) uint8 mask from ``resize_mask`` -> (1, H, W) float32 target in [0, 1]."""
    m = np.ascontiguousarray(mask, dtype=np.float32)
    if soft:
        m *= 1.0 / 255.0
    return torch.from_numpy(m[None])


class CarvanaDataset(Dataset):
    """``{"image": (3,H,W) float32, "mask": (1,H,W) float32, "id": str}`` per index row; the mask
    is {0,1}, or the car's pixel coverage in [0,1] with ``soft_masks``."""

    def __init__(
        self,
        data: CompetitionData,
        index: pd.DataFrame,
        size: tuple[int, int],
        split: str = "train",
        transform=None,
        with_mask: bool = True,
        hq: bool = False,
        soft_masks: bool = False,
    ):
        if "id" not in index.columns:
            raise ValueError(f"index needs an 'id' column, has {list(index.columns)}")
        if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
            raise ValueError(f"size must be (H, W) with positive ints, got {size!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if split == "test" and with_mask:
            raise ValueError("test images have no masks: pass with_mask=False for split='test'")
        self.data = data
        self.ids = [str(i) for i in index["id"]]
        self.size = (int(size[0]), int(size[1]))
        self.split = split
        self.transform = transform
        self.with_mask = with_mask
        self.hq = hq
        self.soft_masks = soft_masks
        self._seeded_pid: int | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _reseed_in_worker(self) -> None:
        # albumentations 2.x Compose owns its RNG; forked workers would all inherit the same
        # state and repeat each other's augmentations. Seed it from torch's per-worker seed.
        pid = os.getpid()
        if self._seeded_pid == pid:
            return
        self._seeded_pid = pid
        info = get_worker_info()
        if info is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(int(info.seed % 2**32))

    def __getitem__(self, i: int) -> dict:
        image_id = self.ids[i]
        image = self.data.load_image(image_id, self.split, self.size, hq=self.hq)
        mask = None
        if self.with_mask:
            mask = resize_mask(self.data.load_mask(image_id), self.size, soft=self.soft_masks)
        if self.transform is not None:
            self._reseed_in_worker()
            out = (
                self.transform(image=image, mask=mask)
                if mask is not None
                else self.transform(image=image)
            )
            image, mask = out["image"], out.get("mask", mask)
        item = {"image": normalize_image(image), "id": image_id}
        if mask is not None:
            item["mask"] = mask_tensor(mask, self.soft_masks)
        return item


# ---------------------------------------------------------------- training and validation sets


class CachedDataset(Dataset):
    """Decoded, resized images and masks held in memory (uint8): decoding 1918x1280 JPEGs dominates
    small-resolution training, so small datasets decode once per stage (`cache: true`)."""

    def __init__(
        self,
        data: Any,
        index: pd.DataFrame,
        size: tuple[int, int],
        transform=None,
        soft_masks: bool = False,
        hq: bool = False,
    ):
        self.ids = [str(i) for i in index["id"]]
        self.transform = transform
        self.soft_masks = soft_masks
        h, w = size

        def load(image_id: str) -> tuple[np.ndarray, np.ndarray]:
            mask = resize_mask(data.load_mask(image_id), size, soft=soft_masks)
            return data.load_image(image_id, size=size, hq=hq), mask

        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            pairs = list(pool.map(load, self.ids))
        self.images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, h, w, 3), np.uint8)
        self.masks = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, h, w), np.uint8)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return training_item(
            self.images[i], self.masks[i], self.ids[i], self.transform, self.soft_masks
        )


def training_item(
    image: np.ndarray, mask: np.ndarray, image_id: str, transform: Any, soft_masks: bool
) -> dict:
    """One sample as every training set yields it (cached photos, pseudo-labelled test images):
    image and mask augmented together, then normalised and made tensors."""
    if transform is not None:
        out = transform(image=image, mask=mask)
        image, mask = out["image"], out["mask"]
    return {"image": normalize_image(image), "mask": mask_tensor(mask, soft_masks), "id": image_id}


class SeededDataset(Dataset):
    """Re-seeds the augmentation per (seed, epoch, sample): the same run gives the same batches,
    whatever the number of workers and whether it resumed."""

    def __init__(self, base: Dataset, transform: Any, seed: int):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(
                (self.seed * 1_000_003 + self.epoch * 10_007 + i) % 2**31
            )
            if hasattr(self.base, "_seeded_pid"):  # CarvanaDataset: do not re-seed per worker
                self.base._seeded_pid = os.getpid()
        return self.base[i]


def build_datasets(
    data: Any,
    member: MemberConfig,
    train_index: pd.DataFrame,
    val_index: pd.DataFrame,
    size: tuple[int, int],
    crop: tuple[int, int] | None = None,
) -> tuple[SeededDataset, Dataset]:
    """(train, val) datasets of one stage: in memory when the member says `cache`, else decoded per
    item; only the training set is augmented, re-seeded per (seed, epoch, sample). With `crop`
    the training set yields random crops of the frame at `size`; validation keeps whole frames,
    so the Dice is the one 06 gets predicting whole frames. `member.hq`: the train_hq photos."""
    from kaggle_utils.augment import build_augmentations

    soft = member.soft_masks
    augment = member.augment.spec() if member.augment is not None else None
    train_tf = build_augmentations(augment, train=True, soft_masks=soft, crop=crop)
    dataset_class: Any = CachedDataset if member.cache else CarvanaDataset
    common = {"soft_masks": soft, "hq": member.hq}
    train_ds = dataset_class(data, train_index, size, transform=train_tf, **common)
    val_ds = dataset_class(data, val_index, size, transform=None, **common)
    return SeededDataset(train_ds, train_tf, member.seed), val_ds


class ValidationMasks:
    """Validation masks at the metric's resolution, decoded once and kept bit-packed.

    val_full_res True: the masks' own size (1280x1918 on Carvana: Kaggle's metric); an int: that
    height at most (aspect kept; a cheaper CPU proxy); False: the training size.
    """

    def __init__(
        self,
        data: Any,
        ids: list[str],
        val_full_res: bool | int,
        size: tuple[int, int],
        guide_scale: int | None = None,
        hq: bool = False,
    ):
        from kaggle_utils.imageio import load_guide

        self.ids = ids
        self.shape: tuple[int, int] | None = None
        if val_full_res is False:
            self.shape = (int(size[0]), int(size[1]))

        def target_shape(native: tuple[int, int]) -> tuple[int, int]:
            if val_full_res is True or val_full_res is False:
                return self.shape or native
            h = min(int(val_full_res), native[0])
            return h, round(native[1] * h / native[0])

        def load(image_id: str) -> tuple[tuple[int, int], np.ndarray, np.ndarray | None]:
            mask = data.load_mask(image_id)
            shape = target_shape(mask.shape[:2])
            guide = None
            if guide_scale:  # the photo at 1/scale of its own (= the mask's) size, gray
                guide = load_guide(data, image_id, mask.shape[:2], guide_scale, hq=hq)
            return shape, np.packbits(resize_mask(mask, shape)), guide

        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            loaded = list(pool.map(load, ids))
        shapes = {s for s, _, _ in loaded}
        if len(shapes) > 1:
            raise ValueError(f"validation masks differ in size: {sorted(shapes)}")
        self.shape = shapes.pop() if shapes else (self.shape or MASK_SHAPE)
        self.packed = dict(zip(ids, (p for _, p, _ in loaded), strict=True))
        self.guides = {i: g for i, (_, _, g) in zip(ids, loaded, strict=True) if g is not None}

    def get(self, ids: list[str]) -> torch.Tensor:
        n = self.shape[0] * self.shape[1]
        arr = np.stack([np.unpackbits(self.packed[i], count=n).reshape(self.shape) for i in ids])
        return torch.from_numpy(arr)

    def guide(self, ids: list[str]) -> torch.Tensor:
        """Gray guides (N,1,h,w) in [0, 1] for ``refine.guided_upsample`` (what ``refine.to_guide``
        makes of gray uint8 guides; the data layer does not import refine)."""
        gray = torch.from_numpy(np.stack([self.guides[i] for i in ids])[:, None])
        return gray.float() / 255.0

    @property
    def label(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}"
