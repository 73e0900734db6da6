"""EpochBatches: each epoch's global batches from (seed, epoch) alone, shared out in rank order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from sweeper.data import EpochBatches


def _global_batches(sampler: EpochBatches, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_one_process_draws_what_torchs_random_sampler_draws_with_the_epoch_seed() -> None:
    for epoch in (0, 3):
        seed = int(np.random.SeedSequence([7, epoch]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        expected = list(BatchSampler(RandomSampler(range(103), generator=generator), 10, drop_last=True))
        assert _global_batches(EpochBatches(103, 10, seed=7), epoch) == expected


def test_the_processes_rows_concatenate_to_the_global_batch() -> None:
    whole = EpochBatches(100, 12, seed=0)
    parts = [EpochBatches(100, 12, seed=0, rank=rank, world_size=3) for rank in range(3)]
    for epoch in range(3):
        expected = _global_batches(whole, epoch)
        local = [_global_batches(part, epoch) for part in parts]
        assert len(expected) == len(parts[0]) == 100 // 12
        for step, batch in enumerate(expected):
            assert sum((rows[step] for rows in local), []) == batch
            assert all(len(rows[step]) == 4 for rows in local)


def test_an_epoch_depends_on_the_seed_and_the_epoch_only() -> None:
    sampler = EpochBatches(50, 5, seed=1)
    first = _global_batches(sampler, 2)
    torch.manual_seed(123)  # the global RNG plays no part
    assert _global_batches(EpochBatches(50, 5, seed=1), 2) == first
    assert _global_batches(sampler, 1) != first
    assert _global_batches(EpochBatches(50, 5, seed=2), 2) != first


def test_a_batch_that_does_not_split_is_refused() -> None:
    with pytest.raises(ValueError, match="not a positive multiple of the 4 processes"):
        EpochBatches(100, 10, seed=0, world_size=4)
    with pytest.raises(ValueError, match="rank 4"):
        EpochBatches(100, 8, seed=0, rank=4, world_size=4)
