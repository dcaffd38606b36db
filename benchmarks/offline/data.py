"""Data sources of the benchmark: Fashion Scenes (built on first use), MS-COCO 2014, PASCAL VOC 2007."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from srdl_timm.data import create_multilabel_dataset

from .config import DATA_SPLITS, BenchmarkConfig

_logger = logging.getLogger(__name__)
_DEFAULT_DATA_HOME = '~/.cache/srdl_timm/benchmark'


@dataclass
class DataSpec:
    """A resolved data source: ``dataset`` is the :func:`srdl_timm.data.create_multilabel_dataset` name."""
    source: str
    dataset: str
    root: str
    train_split: str
    val_split: str
    test_split: str
    label_names: List[str]
    info: Dict[str, Any]

    def create(self, split: str, transform: Optional[Callable] = None) -> Any:
        """The dataset of ``split`` (VOC: difficult-only labels ignored in evaluation, positive in training)."""
        options: Dict[str, Any] = {}
        if self.source == 'voc':
            options['difficult'] = 'ignore'
        return create_multilabel_dataset(self.dataset, self.root, split, transform=transform, **options)


def default_data_root(preset: str, seed: int) -> str:
    """Where Fashion Scenes is built when ``--root`` is not given."""
    home = os.environ.get('SRDL_BENCHMARK_DATA') or _DEFAULT_DATA_HOME
    return os.path.join(os.path.expanduser(home), f'fashion_scenes-{preset}-seed{seed}')


def prepare_data(cfg: BenchmarkConfig) -> DataSpec:
    """Build or reuse Fashion Scenes, or check that COCO/VOC load through :func:`create_multilabel_dataset`.

    Returns:
        The :class:`DataSpec`, with the class names from the training split.
    """
    train_split, val_split, test_split = DATA_SPLITS[cfg.data]
    if cfg.data == 'fashion-scenes':
        from ..fashion_scenes import build_fashion_scenes
        root = cfg.root or default_data_root(cfg.preset, cfg.dataset_seed)
        t0 = time.perf_counter()
        stats = build_fashion_scenes(root, preset=cfg.preset, seed=cfg.dataset_seed,
                                     workers=max(1, min(4, os.cpu_count() or 1)), **cfg.dataset_overrides)
        info = {'name': 'Fashion Scenes', 'root': os.path.abspath(root), 'preset': cfg.preset,
                'seed': cfg.dataset_seed, 'version': stats['version'], 'params': stats['params'],
                'num_images': {s: stats['splits'][s]['num_images'] for s in ('train', 'val', 'test')},
                'label_frequency_train': stats['splits']['train']['label_frequency'],
                'prepare_seconds': time.perf_counter() - t0}
        spec = DataSpec('fashion-scenes', 'coco-json', os.path.abspath(root), train_split, val_split, test_split,
                        list(stats['classes']), info)
    else:
        if not cfg.root:
            raise ValueError(f'--data {cfg.data} needs --root PATH (the dataset folder)')
        spec = DataSpec(cfg.data, cfg.data, os.path.abspath(cfg.root), train_split, val_split, test_split, [],
                        {'name': {'coco': 'MS-COCO 2014', 'voc': 'PASCAL VOC 2007'}[cfg.data],
                         'root': os.path.abspath(cfg.root)})
    train = spec.create(train_split)
    test = spec.create(test_split)
    if list(train.label_names) != list(test.label_names):
        raise ValueError(f'{spec.root}: the {train_split} and {test_split} splits have different classes')
    spec.label_names = list(train.label_names)
    spec.info.setdefault('num_images', {train_split: len(train), test_split: len(test)})
    _logger.info('data: %s at %s (%d classes; %s %d, %s %d images)', spec.info['name'], spec.root,
                 len(spec.label_names), train_split, len(train), test_split, len(test))
    return spec


def label_embeddings_for(cfg: BenchmarkConfig, spec: DataSpec) -> Any:
    """Label-graph node init (and ML-GCN's word vectors): 'auto' = the shipped COCO/VOC arrays, else GloVe 6B-50d
    of the class names; 'none' = seeded random nodes."""
    if cfg.label_embeddings != 'auto':
        return None if cfg.label_embeddings == 'none' else cfg.label_embeddings
    if spec.source in ('coco', 'voc'):
        return spec.source
    from srdl_timm.labels import DEFAULT_SOURCE, label_vectors
    return label_vectors(DEFAULT_SOURCE, spec.label_names).vectors
