"""The training batches of an epoch, shared out between the processes of a data-parallel trial."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["EpochBatches"]


class EpochBatches(Sampler[list[int]]):
    """The global batches of one epoch and this process's rows of each (a batch sampler).

    An epoch is a permutation of ``range(num_samples)`` drawn from a generator seeded with
    ``(seed, epoch)`` only, cut into ``num_samples // batch_size`` global batches (the last
    partial batch dropped). With ``world_size`` processes, process ``rank`` gets rows
    ``[rank·b, (rank + 1)·b)`` of every global batch, b = batch_size / world_size: the
    processes' rows concatenate, in rank order, to the global batch, the same one a single
    process would train on. Nothing depends on earlier epochs or on any global RNG, so a trial
    resumed at an epoch boundary sees exactly the batches it would have seen (and a single
    process's permutation is torch's ``RandomSampler`` with that generator).

    Args:
        num_samples: size of the training split.
        batch_size: the global batch (``train.batch_size``); a multiple of ``world_size``.
        seed: the trial's seed.
        rank: this process's rank.
        world_size: the number of processes.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not a positive multiple of the {world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    @property
    def local_batch_size(self) -> int:
        """This process's rows per step: batch_size / world_size."""
        return self.batch_size // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """The epoch (0-based) that the next iteration yields."""
        self.epoch = epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of the samples in ``epoch``: the same in every process."""
        seed = np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(int(seed)))

    def __len__(self) -> int:
        return self.num_samples // self.batch_size

    def local_batches(self) -> Iterator[torch.Tensor]:
        """This process's row indices of each global batch of the current epoch."""
        order = self.permutation(self.epoch)
        local = self.local_batch_size
        for step in range(len(self)):
            start = step * self.batch_size + self.rank * local
            yield order[start : start + local]

    def __iter__(self) -> Iterator[list[int]]:
        for indices in self.local_batches():
            yield indices.tolist()
