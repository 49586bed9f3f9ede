"""The pseudo-labelled test images as a training set, appended to a stage's own."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
from torch.utils.data import ConcatDataset, Dataset

from kaggle_utils.pseudo.labels import PseudoLabels, load_pseudo_labels

if TYPE_CHECKING:
    from kaggle_utils.config.member import PseudoLabelsConfig


class PseudoLabelDataset(Dataset):
    """``{"image", "mask", "id"}`` like the training sets: test images (TEST store) at `size`
    with their pseudo-label maps as targets, soft (0..1) or thresholded at one half.

    `transform` is the training set's own (same augmentations; `SeededDataset` seeds it)."""

    def __init__(
        self,
        data: Any,
        labels: PseudoLabels,
        size: tuple[int, int],
        transform: Any = None,
        soft_masks: bool = True,
        hq: bool = False,
    ):
        self.data, self.labels, self.ids = data, labels, list(labels.ids)
        self.size = (int(size[0]), int(size[1]))
        self.transform, self.soft_masks, self.hq = transform, soft_masks, hq

    def __len__(self) -> int:
        return len(self.ids)

    def target(self, image_id: str) -> np.ndarray:
        """The map at the training size: uint8 0..255 (soft) or {0, 1}, as `resize_mask` gives."""
        path = self.labels.folder / f"{image_id}.png"
        prob = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if prob is None:
            raise FileNotFoundError(f"cannot read pseudo-label map {path}")
        h, w = self.size
        if prob.shape != (h, w):
            shrink = prob.shape[0] > h
            prob = cv2.resize(
                prob, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            )
        return prob if self.soft_masks else (prob >= 128).astype(np.uint8)

    def __getitem__(self, i: int) -> dict:
        from kaggle_utils.dataset import training_item

        image_id = self.ids[i]
        image = self.data.load_image(image_id, "test", self.size, hq=self.hq)
        return training_item(
            image, self.target(image_id), image_id, self.transform, self.soft_masks
        )


class _TrainAndPseudo(ConcatDataset):
    """The training images then the pseudo-labelled ones; passes `SeededDataset`'s per-worker
    seeding mark on to the parts that keep one (`CarvanaDataset`)."""

    @property
    def _seeded_pid(self) -> int | None:
        return getattr(self.datasets[0], "_seeded_pid", None)

    @_seeded_pid.setter
    def _seeded_pid(self, pid: int | None) -> None:
        for part in self.datasets:
            if hasattr(part, "_seeded_pid"):
                part._seeded_pid = pid


def with_pseudo_labels(train_ds: Any, pseudo: PseudoLabelDataset) -> Any:
    """`build_datasets`' training set (a `SeededDataset`) with the pseudo-labelled images
    appended: one set, one seed rule, one sampler over both."""
    train_ds.base = _TrainAndPseudo([train_ds.base, pseudo])
    return train_ds


def add_to_stage(
    train_ds: Any,
    cfg: PseudoLabelsConfig,
    run_dir: str | os.PathLike,
    data: Any,
    val_index: pd.DataFrame,
    size: tuple[int, int],
    soft_masks: bool,
    where: str,
    hq: bool = False,
) -> PseudoLabels:
    """Load and check the stage key's pseudo-labels and append them to its training set (the
    test_hq photos when the member trains on hq)."""
    labels = load_pseudo_labels(cfg, run_dir, data, val_index, where)
    pseudo = PseudoLabelDataset(data, labels, size, train_ds.transform, soft_masks, hq)
    with_pseudo_labels(train_ds, pseudo)
    return labels
