"""Resumable, distributed training order and per-sample augmentation seeds, plus small collective helpers.

Exact resumption (mid-epoch included) and exact single-process/DDP equivalence need the training data stream to be
a pure function of ``(seed, epoch, position)``:

* :class:`EpochBatchSampler` draws the epoch's permutation from a generator seeded by ``(seed, epoch)`` alone.
  Global batch ``s`` is ``perm[s*G:(s+1)*G]`` with ``G = batch_size × world_size``; rank ``r`` takes the
  contiguous slice ``[s*G + r*b, s*G + (r+1)*b)``. So the union of the ranks' batches is exactly the single-process
  batch of size ``G`` (what ``torch.utils.data.DistributedSampler`` guarantees as well), the tail that does not
  fill a global batch is dropped on every rank (no padding, no duplicate sample), and ``start_batch`` skips the
  already-trained batches without loading them.
* Each index is paired with a seed derived from ``(seed, epoch, index)``; :class:`SeededDataset` runs the
  dataset's random transform under that seed (inside ``torch.random.fork_rng``, with Python's and NumPy's RNG
  saved and restored), so a sample's augmentation does not depend on the number of loader workers, on the rank
  it lands on, or on whether the epoch was interrupted and resumed — and the global RNG streams of the training
  process are left untouched.

``torch.utils.data.DistributedSampler`` cannot start in the middle of an epoch and leaves augmentation randomness to
the worker processes, which is why training uses these instead (evaluation uses
:class:`srdl_timm.data.distributed.DistributedEvalSampler`).
"""
import logging
import random
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from timm.utils import reduce_tensor
from torch.utils.data import Dataset, Sampler

from .data.distributed import get_rank_world, is_dist_initialized

__all__ = ['EpochBatchSampler', 'SeededDataset', 'derive_seed', 'all_reduce_mean', 'all_gather_objects', 'barrier']

_logger = logging.getLogger(__name__)

_MASK63 = (1 << 63) - 1


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (NumPy ``SeedSequence``); the same parts give the same seed."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(
        1, dtype=np.uint64)[0]) & _MASK63


class EpochBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Yield this rank's micro-batches of ``(index, sample_seed)`` for one epoch, optionally from batch ``start_batch``.

    Args:
        num_samples: dataset length N.
        batch_size: per-rank batch size b.
        seed: run seed.
        epoch: epoch number (the permutation depends on ``(seed, epoch)`` only).
        rank / world_size: this process and the process count (default: the process group's).
        num_batches: batches per epoch per rank (default ``N // (b * world_size)``); must not exceed that.
        start_batch: number of leading batches to skip (already trained before an interruption).
        shuffle: permute (True for training) or keep dataset order.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, epoch: int, rank: Optional[int] = None,
                 world_size: Optional[int] = None, num_batches: Optional[int] = None, start_batch: int = 0,
                 shuffle: bool = True) -> None:
        if rank is None or world_size is None:
            r, w = get_rank_world()
            rank = r if rank is None else rank
            world_size = w if world_size is None else world_size
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        if not 0 <= rank < world_size:
            raise ValueError(f'rank {rank} outside [0, {world_size})')
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.global_batch = self.batch_size * self.world_size
        max_batches = self.num_samples // self.global_batch
        self.num_batches = max_batches if num_batches is None else int(num_batches)
        if not 0 <= self.num_batches <= max_batches:
            raise ValueError(f'num_batches={num_batches} but only {max_batches} global batches of '
                             f'{self.global_batch} fit in {self.num_samples} samples')
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f'start_batch={start_batch} outside [0, {self.num_batches}]')
        self.start_batch = int(start_batch)
        self.shuffle = shuffle

    def permutation(self) -> torch.Tensor:
        """The epoch's global order of sample indices."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0x5A3B1E))
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        perm = self.permutation().tolist()
        for s in range(self.start_batch, self.num_batches):
            lo = s * self.global_batch + self.rank * self.batch_size
            yield [(i, derive_seed(self.seed, self.epoch, i)) for i in perm[lo:lo + self.batch_size]]

    def __len__(self) -> int:
        return self.num_batches - self.start_batch


class SeededDataset(Dataset):
    """Wrap a map-style dataset so that ``ds[(index, seed)]`` runs ``dataset[index]`` with all RNGs seeded by ``seed``.

    The caller's torch (CPU), Python and NumPy RNG states are restored afterwards, so loading in the main process
    (``num_workers=0``) does not perturb the training RNG stream.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        index, seed = key
        py_state = random.getstate()
        np_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed & 0xFFFFFFFF)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (``timm.utils.reduce_tensor``; the input itself without a process group)."""
    if not is_dist_initialized() or dist.get_world_size() == 1:
        return tensor
    return reduce_tensor(tensor.detach(), dist.get_world_size())


def all_gather_objects(obj: Any) -> List[Any]:
    """Picklable ``obj`` from every rank, in rank order (``[obj]`` without a process group)."""
    if not is_dist_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """``dist.barrier()`` when a process group exists."""
    if is_dist_initialized():
        dist.barrier()
