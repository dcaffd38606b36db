"""``create_multilabel_dataset`` and ``create_multilabel_loader``: the data entry points (not timm's
``create_dataset``/``create_loader``: multi-label targets, evaluation loaders that never drop or pad)."""
import inspect
import logging
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from .coco import CocoMultiLabel
from .custom import CocoJsonMultiLabel, CsvMultiLabel
from .samplers import DistributedEvalSampler, get_rank_world, is_dist_initialized
from ..errors import InputError
from .images import MultiLabelDataset
from .voc import VocMultiLabel

__all__ = ['create_multilabel_dataset', 'create_multilabel_loader', 'DATASETS', 'DEFAULT_SPLITS']

_logger = logging.getLogger(__name__)

DATASETS: Dict[str, type] = {
    'coco': CocoMultiLabel,
    'voc': VocMultiLabel,
    'coco-json': CocoJsonMultiLabel,
    'csv': CsvMultiLabel,
}

#: the one table of default ``(train split, evaluation split)`` per dataset format (VOC 2007: trainval / test)
DEFAULT_SPLITS: Dict[str, Tuple[str, str]] = {
    'coco': ('train', 'val'),
    'voc': ('trainval', 'test'),
    'coco-json': ('train', 'val'),
    'csv': ('train', 'val'),
}


def create_multilabel_dataset(
        name: str,
        root: str,
        split: str,
        transform: Optional[Callable] = None,
        **options: Any,
) -> MultiLabelDataset:
    """Create a multi-label dataset by name: ``'coco'``, ``'voc'``, ``'coco-json'`` or ``'csv'``.

    Args:
        name, root, split: dataset format, folder and split.
        transform: applied to each PIL RGB image.
        **options: dataset options; one the dataset does not take is a ValueError.
    """
    key = name.lower()
    if key not in DATASETS:
        raise InputError(f'unknown dataset {name!r}; choose one of {sorted(DATASETS)}')
    cls = DATASETS[key]
    if key == 'csv':
        csv_file = options.pop('ann_file', None) or f'{root}/{split}.csv'
        options.setdefault('image_dir', root)
        args = dict(csv_file=csv_file, name=f'csv {split}')
    else:
        args = dict(root=root, split=split)
    accepted = set(inspect.signature(cls.__init__).parameters) - {'self'}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InputError(f'dataset {name!r} does not take option(s) {unknown}; it takes '
                         f'{sorted(accepted - set(args) - {"transform", "name"})}')
    dataset = cls(transform=transform, **args, **options)
    if key == 'csv':
        dataset.info.update(dataset='csv', root=root, split=split)
    return dataset


def create_multilabel_loader(
        dataset: Dataset,
        batch_size: int,
        is_training: bool,
        num_workers: int = 4,
        distributed: bool = False,
        seed: int = 0,
        drop_last: Optional[bool] = None,
        pin_memory: bool = False,
        persistent_workers: bool = True,
) -> DataLoader:
    """Create a DataLoader for training (shuffled with ``seed``) or evaluation (every sample once, in order)."""
    if batch_size <= 0:
        raise InputError(f'batch_size must be positive, got {batch_size}')
    if num_workers < 0:
        raise InputError(f'num_workers must be >= 0, got {num_workers}')
    if drop_last is None:
        drop_last = is_training
    if drop_last and not is_training:
        raise ValueError('drop_last=True on an evaluation loader would silently drop samples from the metrics')
    rank, _ = get_rank_world()
    if distributed and not is_dist_initialized():
        raise ValueError('distributed=True but torch.distributed is not initialised')
    generator = torch.Generator()
    generator.manual_seed(seed + rank)
    if is_training:
        sampler = (DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=False) if distributed
                   else RandomSampler(dataset, generator=generator))
    else:
        sampler = DistributedEvalSampler(dataset) if distributed else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=persistent_workers and num_workers > 0,
    )
