"""Distributed evaluation without padding: a contiguous-slice sampler and variable-length all-gather.

torch's ``DistributedSampler`` (and timm's ``OrderedDistributedSampler``) pad the dataset so every rank gets the
same count, which makes some images count twice in the metrics. :class:`DistributedEvalSampler` instead gives rank
r the contiguous slice ``[r*N//W, (r+1)*N//W)``; slices are disjoint and cover every index once, and ranks may
differ in length by one. :func:`all_gather_concat` gathers tensors of different lengths, and concatenating in rank
order restores dataset order.
"""
import logging
from typing import Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from timm.utils.distributed import init_distributed_device_so
from torch.utils.data import Sampler

__all__ = ['DistributedEvalSampler', 'is_dist_initialized', 'get_rank_world', 'all_gather_concat',
           'init_distributed_from_env']

_logger = logging.getLogger(__name__)


def is_dist_initialized() -> bool:
    """True when torch.distributed is available and a process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank_world() -> Tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if is_dist_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class DistributedEvalSampler(Sampler[int]):
    """Give each rank a disjoint contiguous slice of the dataset, with no padding and no shuffling.

    Args:
        dataset: anything with ``len()``.
        num_replicas: world size (default: from the process group).
        rank: this rank (default: from the process group).
    """

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
    """All-gather tensors whose first dimension differs across ranks; concatenate them in rank order.

    Every rank must call it (a collective). Without a process group it returns ``tensor`` unchanged. The result
    is on ``tensor``'s device; NCCL transfers go through the current CUDA device.
    """
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
    """Initialise the default process group from torchrun's (or SLURM's) environment when it describes more than
    one process, else do nothing: ``timm.utils.init_distributed_device_so`` (NCCL with one CUDA device per local
    rank for CUDA, gloo otherwise).

    Returns:
        ``(device, rank, world_size)``.
    """
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
