"""06's test images: which sample-submission ids to predict, their full shape, and the Dataset the
submit path's DataLoader workers decode them with (folder or zip, in place; uint8, one decode per
distinct member size, plus the gray guide where ``refine`` asks for one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kaggle_utils.imageio import ImageDecodeError, gray_guide


class TestImages(Dataset):
    """Test JPEGs from a FileStore, decoded once per distinct member size (uint8 CHW tensors).

    Workers decode (libjpeg DCT-scaled where the size allows); normalisation happens on the device so
    the worker-to-main transfer stays uint8.
    """

    def __init__(
        self,
        store: Any,
        names: Sequence[str],
        sizes: Sequence[tuple[int, int]],
        guide_size: tuple[int, int] | None = None,
    ):
        self.store = store
        self.names = list(names)
        self.sizes = [tuple(s) for s in sizes]
        self.guide_size = guide_size  # also a gray guide at this size (``refine``)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        from kaggle_utils.imageio import decode_jpeg_sizes

        name = self.names[i]
        data = self.store.read_bytes(name)
        label = self.store.describe(name)
        guide = [self.guide_size] if self.guide_size is not None else []
        try:  # one reduced decode per libjpeg scale, shared by the members and the guide
            images = decode_jpeg_sizes(data, [*self.sizes, *guide], name=label)
        except ImageDecodeError as exc:  # one line naming the file, its size, the fault, the fix
            raise ImageDecodeError(
                f"cannot decode test image {label}: {exc.detail}", exc.detail
            ) from None
        out: dict[str, Any] = {"index": i}
        for k, img in enumerate(images[: len(self.sizes)]):
            out[f"image{k}"] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        if guide:
            out["guide"] = torch.from_numpy(gray_guide(images[-1])[None])
        return out


def image_shape(store: Any, name: str) -> tuple[int, int]:
    """Full (H, W) of one test image from its JPEG header (the shape the masks must have)."""
    from kaggle_utils.imageio import jpeg_size

    label = store.describe(name)
    try:
        return tuple(jpeg_size(store.read_bytes(name), label))  # type: ignore[return-value]
    except ImageDecodeError as exc:
        raise ImageDecodeError(
            f"cannot read test image {label}: {exc.detail}", exc.detail
        ) from None


def select_ids(
    sample_ids: Sequence[str], available: Sequence[str] | set, limit: Any = None
) -> list[str]:
    """Which sample-submission ids to predict, in sample order.

    limit=None: every id (ids missing from the test store fail, naming how many and a few);
    limit="available": only ids present in the test store (a partial run, e.g. the real sample's 33);
    limit=N (int): the first N of the ids present in the test store;
    limit=[ids...]: exactly those ids (each must be in the sample submission and the test store).
    """
    have = set(available)
    if limit is None:
        missing = [i for i in sample_ids if i not in have]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(sample_ids)} sample_submission ids are missing from the test "
                f"images (e.g. {', '.join(missing[:5])}); pass limit='available' (or an int / a list "
                "of ids) for a partial run"
            )
        return list(sample_ids)
    if isinstance(limit, str):
        if limit != "available":
            raise ValueError(f"limit={limit!r}: use None, 'available', an int, or a list of ids")
        chosen = [i for i in sample_ids if i in have]
    elif isinstance(limit, (int, np.integer)) and not isinstance(limit, bool):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        chosen = [i for i in sample_ids if i in have][: int(limit)]
    else:
        wanted = [str(i) for i in limit]
        known = set(sample_ids)
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise ValueError(
                f"{len(unknown)} requested ids are not in sample_submission.csv "
                f"(e.g. {', '.join(unknown[:5])})"
            )
        missing = [i for i in wanted if i not in have]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} requested ids are missing from the test images "
                f"(e.g. {', '.join(missing[:5])})"
            )
        wanted_set = set(wanted)
        chosen = [i for i in sample_ids if i in wanted_set]
    if not chosen:
        raise FileNotFoundError("no sample_submission id is present in the test images")
    return chosen


def shard_range(n_ids: int, shard: int, n_shards: int) -> tuple[int, int]:
    """[start, stop) of shard ``shard`` of ``n_shards`` over ``n_ids`` ids in sample order.

    Contiguous and balanced (sizes differ by at most one), so the shards cover every id once and
    merging them is a concatenation in sample-submission order.
    """
    if isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or n_shards < 1:
        raise ValueError(f"n_shards={n_shards!r}: use a whole number >= 1 (or None: the whole set)")
    if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)):
        raise ValueError(f"shard={shard!r}: use a whole number in 0..{n_shards - 1}")
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard={shard} is outside 0..{n_shards - 1} (n_shards={n_shards})")
    if n_shards > n_ids:
        raise ValueError(
            f"n_shards={n_shards} exceeds the {n_ids} ids to predict: every shard needs an id; "
            "use fewer shards"
        )
    return shard * n_ids // n_shards, (shard + 1) * n_ids // n_shards


def select_shard(ids: Sequence[str], shard: int | None, n_shards: int | None) -> list[str]:
    """The ids of one shard (``shard_range``); both None: every id. One without the other fails."""
    if shard is None and n_shards is None:
        return list(ids)
    if shard is None or n_shards is None:
        raise ValueError(
            f"shard={shard!r}, n_shards={n_shards!r}: give both (shard i of n) or neither"
        )
    start, stop = shard_range(len(ids), shard, n_shards)
    return list(ids[start:stop])


def ids_to_predict(data: Any, hq: bool, limit: Any) -> tuple[Any, list[str]]:
    """The test store and the sample-submission ids to predict from it."""
    store = data.test_hq if hq else data.test
    if store is None:
        raise FileNotFoundError(
            f"no {'test_hq' if hq else 'test'} images (folder or zip) under {data.root}"
        )
    sample = data.read_csv("sample_submission")
    if "img" not in sample.columns:
        raise ValueError(f"sample_submission.csv under {data.root} has no 'img' column")
    return store, select_ids(sample["img"].astype(str).tolist(), store.names(), limit)
