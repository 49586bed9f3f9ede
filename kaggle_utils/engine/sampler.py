"""Batches that do not depend on the number of processes.

Each epoch draws one seeded permutation of the whole training set and cuts it into global
batches of the member's `batch_size`; with N processes each takes every N-th image of each
global batch. So one optimizer step sees the same images on 1 GPU, 2 GPUs or 2 machines, and a
member file means the same optimisation wherever it runs (see `engine.stage` for the rule).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["GlobalBatchSampler"]


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of each seeded global batch.

    Args:
        n: dataset size.
        batch_size: the global batch (all ranks together).
        rank, world_size: this process and how many share each batch.
        seed: the member's seed; epoch `e` shuffles with `seed * 1000 + e`.
        drop_last: drop a final partial global batch (on when the data holds more than one).
    """

    def __init__(
        self, n: int, batch_size: int, rank: int, world_size: int, seed: int, drop_last: bool
    ):
        if batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} cannot be shared by {world_size} processes: the member's "
                "batch_size is the global batch; make it a multiple of devices x num_nodes"
            )
        if n < world_size:
            raise ValueError(f"{n} training images cannot be shared by {world_size} processes")
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        for b in range(len(self)):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            mine = batch[self.rank :: self.world_size]
            yield mine or batch[-1:]  # a short last batch: never an empty step on a rank
