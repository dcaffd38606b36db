"""Tests of srdl_timm/data/samplers.py: the resumable training batch sampler and the per-sample seeded dataset
(the evaluation sampler and the variable-length gather are tested with srdl-validate in tests/test_validate.py)."""
import random

import numpy as np
import pytest
import torch

from srdl_timm.data import EpochBatchSampler, SeededDataset, derive_seed


def test_rank_batches_partition_the_single_process_batch_and_drop_the_tail():
    """With 2 ranks of batch 3, global batch s of the ranks together is exactly the single-process batch s of size 6
    (rank r takes the r-th contiguous slice); 20 samples give 3 global batches and the 2-sample tail is dropped on
    every rank; each index carries the seed derived from (seed, epoch, index), whatever rank draws it."""
    single = list(EpochBatchSampler(20, 6, seed=7, epoch=1, rank=0, world_size=1))
    ranks = [list(EpochBatchSampler(20, 3, seed=7, epoch=1, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    for s, batch in enumerate(single):
        assert ranks[0][s] + ranks[1][s] == batch
    indices = [i for batch in single for i, _ in batch]
    assert len(set(indices)) == 18 and set(indices) <= set(range(20))
    assert all(seed == derive_seed(7, 1, i) for batch in single for i, seed in batch)


def test_the_order_depends_on_seed_and_epoch_only_and_start_batch_skips_trained_batches():
    """The permutation is a function of (seed, epoch): the same pair repeats it, another epoch or seed changes it;
    start_batch=k yields exactly the batches after the first k (what a resumed epoch needs); shuffle=False keeps
    dataset order; a num_batches that does not fit is refused."""
    full = list(EpochBatchSampler(16, 2, seed=3, epoch=0, world_size=1, rank=0))
    assert full == list(EpochBatchSampler(16, 2, seed=3, epoch=0, world_size=1, rank=0))
    assert full != list(EpochBatchSampler(16, 2, seed=3, epoch=1, world_size=1, rank=0))
    assert full != list(EpochBatchSampler(16, 2, seed=4, epoch=0, world_size=1, rank=0))
    resumed = EpochBatchSampler(16, 2, seed=3, epoch=0, world_size=1, rank=0, start_batch=5)
    assert len(resumed) == 3 and list(resumed) == full[5:]
    ordered = EpochBatchSampler(16, 4, seed=3, epoch=0, world_size=1, rank=0, shuffle=False)
    assert [i for i, _ in next(iter(ordered))] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match='num_batches'):
        EpochBatchSampler(16, 4, seed=3, epoch=0, world_size=1, rank=0, num_batches=5)


class _RandomSample(torch.utils.data.Dataset):
    """A dataset whose 'augmentation' draws from torch's, Python's and NumPy's global RNGs."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return index, torch.rand(2), random.random(), np.random.rand()


def test_seeded_dataset_repeats_a_sample_and_leaves_the_callers_rngs_alone():
    """ds[(index, seed)] draws the same augmentation for the same seed whatever the global RNG state (as in another
    worker, rank or resumed process), a different one for another seed, and the caller's torch, Python and NumPy
    RNG streams continue as if nothing had been loaded."""
    ds = SeededDataset(_RandomSample())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    first = ds[(2, 11)]
    after = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    assert (torch.rand(1), random.random(), np.random.rand()) == after
    torch.manual_seed(123)
    again = ds[(2, 11)]
    assert again[0] == 2 and torch.equal(first[1], again[1]) and first[2:] == again[2:]
    assert not torch.equal(ds[(2, 12)][1], first[1])
    assert len(ds) == 4
