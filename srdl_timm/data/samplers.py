"""Samplers that split the data over epochs and processes, and the process-group helpers they rest on.

For exact resumption and single-process/DDP equivalence the training stream is a pure function of ``(seed, epoch,
position)``; evaluation gives each rank a disjoint slice without padding.
"""
import logging
import random
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from timm.utils.distributed import init_distributed_device_so
from torch.utils.data import Dataset, Sampler

__all__ = ['EpochBatchSampler', 'SeededDataset', 'derive_seed', 'DistributedEvalSampler', 'all_gather_concat',
           'is_dist_initialized', 'get_rank_world', 'init_distributed_from_env']

_logger = logging.getLogger(__name__)


def is_dist_initialized() -> bool:
    """True when torch.distributed is available and a process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank_world() -> Tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if is_dist_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


_MASK63 = (1 << 63) - 1


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (NumPy ``SeedSequence``); the same parts give the same seed."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(
        1, dtype=np.uint64)[0]) & _MASK63


class EpochBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Yield this rank's micro-batches of ``(index, sample_seed)`` for one epoch, from batch ``start_batch``.

    Args:
        num_samples, batch_size: dataset length N and per-rank batch size b.
        seed, epoch: the permutation depends on these only.
        num_batches: batches per epoch per rank (at most ``N // (b * world_size)``).
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
    """``ds[(index, seed)]`` runs ``dataset[index]`` with every RNG seeded by ``seed`` (then restored)."""

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


class DistributedEvalSampler(Sampler[int]):
    """Give each rank a disjoint contiguous slice of the dataset, with no padding and no shuffling."""

    def __init__(self, dataset, num_replicas: Optional[int] = None, rank: Optional[int] = None) -> None:
        if num_replicas is None or rank is None:
            r, w = get_rank_world()
            rank = r if rank is None else rank
            num_replicas = w if num_replicas is None else num_replicas
        if not 0 <= rank < num_replicas:
            raise ValueError(f'rank {rank} outside [0, {num_replicas})')
        self.num_samples_total = len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank
        self.start = rank * self.num_samples_total // num_replicas
        self.end = (rank + 1) * self.num_samples_total // num_replicas

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start

    def set_epoch(self, epoch: int) -> None:
        """No-op (the order is fixed); present for loop code that calls it on every sampler."""


def _gather_device() -> torch.device:
    if dist.get_backend() == dist.Backend.NCCL:
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def all_gather_concat(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather tensors whose first dimension differs across ranks, concatenated in rank order (a collective)."""
    if not is_dist_initialized() or dist.get_world_size() == 1:
        return tensor
    device = _gather_device()
    world = dist.get_world_size()
    local = tensor.detach().to(device).contiguous()
    n = torch.tensor([local.shape[0]], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_ = [int(s.item()) for s in sizes]
    max_n = max(sizes_)
    padded = local.new_zeros((max_n,) + tuple(local.shape[1:]))
    padded[:local.shape[0]] = local
    out: List[torch.Tensor] = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes_)]).to(tensor.device)


def init_distributed_from_env(device: str = 'cuda') -> Tuple[torch.device, int, int]:
    """Initialise the process group from torchrun's (or SLURM's) environment when it describes more than one
    process (``timm.utils.init_distributed_device_so``). Returns ``(device, rank, world_size)``."""
    if is_dist_initialized():
        dev = torch.device(device)
        if dev.type == 'cuda':
            dev = torch.device('cuda', torch.cuda.current_device())
        return dev, dist.get_rank(), dist.get_world_size()
    info = init_distributed_device_so(str(device))
    if info['distributed']:
        _logger.info('distributed: rank %d of %d on %s (backend %s)', info['global_rank'], info['world_size'],
                     info['device'], dist.get_backend())
    return torch.device(info['device']), int(info['global_rank']), int(info['world_size'])
