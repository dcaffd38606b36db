"""``srdl-benchmark``: the paper's ablations (Tables 5 and 6, Figures 5 and 6) in one command.

By default it runs on the embedded *Fashion Scenes* benchmark (:mod:`srdl_timm.data.fashion_scenes`: real
Fashion-MNIST product photos pasted onto the photographs shipped with scikit-image, written in COCO format),
which it builds on first use, so the method can be tried on any machine before spending GPU-days::

    srdl-benchmark                                   # = --quick: a 2-core CPU, under 10 minutes
    srdl-benchmark --sweeps                          # + the top-K and alpha sweeps of Figure 6
    srdl-benchmark --full                            # a GPU: 'full' preset, end-to-end fine-tuning
    srdl-benchmark --data coco --root /data/coco     # Tables 1, 2, 4, 5 rows with the paper's recipe (§4.2)
    srdl-benchmark --data voc --root /data/VOCdevkit

Rows (``--rows``, keys of :data:`ROWS`): ``baseline`` (backbone + global max pooling + one linear classifier
per class; Table 5/6 line 1), ``car_no_gcn`` / ``car_no_ca`` / ``car_no_sa`` (Table 6 lines 4-6), ``car``
(Table 5 line 2, Table 6 line 7) and ``car_oe`` (CAR + object erasing = SRDL, Table 5 line 3). Every row is
trained with every seed of ``--seeds``; the table reports mean ± sample standard deviation over seeds of mAP in
both AP definitions (all-point interpolated and non-interpolated, see :mod:`srdl_timm.metrics`), CF1 and OF1
(Table 2's CP/CR/OP/OR too), on the test split, for the checkpoint declared in advance: the final one.

Trainers (``--trainer``)
    ``fit``: :func:`srdl_timm.train.fit` end to end from pixels (the path of ``srdl-train``), then the final
    weights are evaluated on the test split. Used by ``--full`` and for COCO/VOC (``--recipe paper``: Adam lr
    1e-5, batch 16, 20 epochs, 448 px, the paper's augmentation).
    ``frozen-trunk`` (``--quick``): an end-to-end CAR + OE training step from pixels takes about 4 s per batch of
    32 at 128 px on a 2-core Xeon (1 thread; measured), so 6 rows x 3 seeds x 5 epochs would take hours. The
    quick protocol therefore freezes the first backbone units (ImageNet weights; BatchNorm on running statistics
    everywhere) and trains only the last ``--train-stages`` units (default 2: EfficientNet-Lite0's last block
    stage and its 1x1 head conv) plus the whole SRDL head, with no data augmentation. The frozen part is a
    fixed function of the image, so its output is computed once per image and cached; training on the cache is
    exactly training the full model with those units frozen (``tests/test_benchmark.py`` checks that loss and
    gradients equal those of ``model(images)``), about 20x faster, and the trained weights are an ordinary full
    model.

Outputs (``--output DIR``)
    ``results.json``: every run's configuration, test and val metrics (per-class AP by name), training history,
    wall time; the aggregated table; paired bootstrap intervals of mAP differences between rows; sweeps; the
    hardware (CPU model from lscpu, cores, threads, GPU), software versions, date and the command line.
    ``results.md``: the Table 5/6-style markdown printed at the end.
    ``table.png`` (mAP per row), ``figure6_sweeps.png`` (with ``--sweeps``), ``figure5_attention.png`` + ``figure5/``
    (spatial-attention overlays of the CAR + OE model on test images, :mod:`srdl_timm.explain`).
    ``logits/`` test logits of every run (``.npz``); ``runs/`` the training folders of ``fit`` runs.
    For COCO-format test data (Fashion Scenes, COCO) every row with spatial attention also gets an attention
    *pointing game* (:func:`pointing_game`): how often a present class's SA map peaks on that class's box.

Weights: ``--export DIR`` writes the CAR + OE model of the first seed as a timm Hub folder
(:func:`srdl_timm.hub.save_pretrained_dir`, float16 weights to keep the file small), evaluated from pixels on
the test split; ``--register TAG`` then lists it in ``weights/manifest.json``
(:func:`srdl_timm.hub.register_weights`), so ``timm.create_model('srdl_efficientnet_lite0.TAG', pretrained=True)``
loads it offline.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

import timm
from timm.data import resolve_data_config

import srdl_timm
from srdl_timm.data import create_dataset, create_loader, create_transform
from srdl_timm.loss import masked_bce_with_logits
from srdl_timm.metrics import MultiLabelMetrics
from srdl_timm.validate import AP_DEFINITIONS

__all__ = [
    'Row', 'ROWS', 'ROW_ORDER', 'MODES', 'BenchmarkConfig', 'DataSpec', 'RunResult', 'backbone_units',
    'FrozenTrunk', 'extract_trunk_features', 'train_frozen_trunk', 'predict_logits', 'metrics_from_logits',
    'summarize', 'resampled_average_precision', 'paired_bootstrap', 'load_boxes', 'pointing_game', 'format_table', 'hardware_info', 'software_versions', 'prepare_data',
    'run_benchmark', 'export_weights', 'build_parser', 'config_from_args', 'main',
]

_logger = logging.getLogger('srdl_timm.benchmark')

#: metrics of the main table (Table 5/6 style) and of the second table (Table 2 style)
TABLE_METRICS = ('mAP_interpolated', 'mAP_non_interpolated', 'CF1', 'OF1')
TABLE2_METRICS = ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')
_METRIC_LABELS = {'mAP_interpolated': 'mAP (interp.)', 'mAP_non_interpolated': 'mAP (non-interp.)'}
_SCALAR_METRICS = ('mAP_interpolated', 'mAP_non_interpolated', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1',
                   'CP_top3', 'CR_top3', 'CF1_top3', 'OP_top3', 'OR_top3', 'OF1_top3')


# ----------------------------------------------------------------------------------------------------------------
# rows and modes
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One line of the ablation tables: the SRDL switches it trains with.

    Attributes:
        key: command-line name.
        name: name printed in the table.
        paper: where the row is in the paper.
        use_gcn / use_ca / use_sa: :class:`srdl_timm.SRDL` ablation switches (both attentions off = baseline).
        oe: object erasing during training.
    """
    key: str
    name: str
    paper: str
    use_gcn: bool = True
    use_ca: bool = True
    use_sa: bool = True
    oe: bool = False

    def model_kwargs(self) -> Dict[str, bool]:
        """The ablation switches as ``timm.create_model`` kwargs."""
        return dict(use_gcn=self.use_gcn, use_ca=self.use_ca, use_sa=self.use_sa)


ROWS: Dict[str, Row] = {r.key: r for r in (
    Row('baseline', 'Baseline (backbone + GMP + linear)', 'T5 l.1, T6 l.1', use_ca=False, use_sa=False),
    Row('car_no_gcn', 'CAR w/o GCN', 'T6 l.4', use_gcn=False),
    Row('car_no_ca', 'CAR w/o CA', 'T6 l.5', use_ca=False),
    Row('car_no_sa', 'CAR w/o SA', 'T6 l.6', use_sa=False),
    Row('car', 'CAR', 'T5 l.2, T6 l.7'),
    Row('car_oe', 'CAR + OE (SRDL)', 'T5 l.3', oe=True),
)}
#: table order (Table 6's lines, then Table 5's last line)
ROW_ORDER: Tuple[str, ...] = tuple(ROWS)

#: Defaults of each mode; an explicit command-line value wins. See the module docstring and benchmarks/RESULTS.md.
MODES: Dict[str, Dict[str, Any]] = {
    # 2-core CPU, < 10 minutes: Fashion Scenes 'quick' (1,500 / 300 / 500 images, 128 px)
    'quick': dict(
        preset='quick', trainer='frozen-trunk', img_size=None, train_stages=2, epochs=5, batch_size=32, lr=1e-3,
        weight_decay=1e-4, warmup_epochs=0.3, seeds=(0, 1, 2), sweep_topk=(1, 2, 3, 5, 8),
        sweep_alpha=(0.1, 0.3, 0.5, 0.7, 0.9), sweep_seeds=(0,), overlays=4, bootstrap=1000, workers=0,
    ),
    # a GPU: Fashion Scenes 'full' (20,000 / 2,000 / 5,000 images, 224 px), end to end with srdl_timm.train.fit
    'full': dict(
        preset='full', trainer='fit', img_size=224, train_stages=None, epochs=15, batch_size=32, lr=1e-4,
        weight_decay=1e-4, warmup_epochs=1, seeds=(0, 1, 2), sweep_topk=(1, 2, 3, 4, 5, 6, 7, 8),
        sweep_alpha=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), sweep_seeds=(0, 1, 2), overlays=6,
        bootstrap=1000, workers=8,
    ),
    # COCO / VOC: srdl_timm.train's 'paper' recipe (§4.2); values left None come from that recipe
    'paper': dict(
        preset=None, trainer='fit', img_size=None, train_stages=None, epochs=None, batch_size=None, lr=None,
        weight_decay=None, warmup_epochs=None, seeds=(0,), sweep_topk=(1, 2, 3, 4, 5, 6, 7, 8),
        sweep_alpha=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), sweep_seeds=(0,), overlays=6, bootstrap=100,
        workers=8,
    ),
}
_TRAINERS = ('frozen-trunk', 'fit')
#: test images used for the attention pointing game of fit runs (an extra forward pass; COCO val has 40k images)
_MAX_POINTING_IMAGES = 2000
#: the OE hyper-parameters of the main table (the paper's, §4.4)
DEFAULT_OE_TOPK, DEFAULT_OE_ALPHA = 3, 0.5
#: train / val / test splits of each data source (COCO and VOC have no separate test split: the paper reports on
#: val2014 and VOC2007 test, which are also the splits the training runs validate on)
DATA_SPLITS = {'fashion-scenes': ('train', 'val', 'test'), 'coco': ('train', 'val', 'val'),
               'voc': ('trainval', 'test', 'test')}
DATA_SOURCES = tuple(DATA_SPLITS)
_DEFAULT_DATA_HOME = '~/.cache/srdl_timm/benchmark'


@dataclass
class BenchmarkConfig:
    """Everything that defines a benchmark invocation; fields left None take the mode's value (:data:`MODES`).

    Data: ``data`` ('fashion-scenes' | 'coco' | 'voc'), ``root`` (dataset folder; Fashion Scenes is built there
    when missing, default ``$SRDL_BENCHMARK_DATA`` or ``~/.cache/srdl_timm/benchmark/fashion_scenes-<preset>-seed<N>``),
    ``preset`` / ``dataset_seed`` (Fashion Scenes build), ``dataset_overrides`` (Fashion Scenes parameters).

    Model: ``model`` (an ``srdl_*`` timm name), ``backbone`` (override of the model's backbone),
    ``pretrained_backbone`` (ImageNet weights; offline for EfficientNet-Lite0), ``label_embeddings``
    ('auto' = coco/voc arrays, else GloVe 6B-50d).

    Protocol: ``mode`` ('quick' | 'full'; COCO/VOC use 'paper'), ``trainer``, ``rows``, ``seeds``, ``epochs``,
    ``batch_size``, ``lr``, ``weight_decay``, ``warmup_epochs``, ``img_size``, ``train_stages`` (frozen-trunk:
    trailing backbone units trained), ``oe_topk`` / ``oe_alpha`` (main table), ``amp`` (bfloat16 autocast in
    training; evaluation is float32 on the CPU, float32 head on CUDA), ``val_every_epoch`` (frozen-trunk: val
    metrics in the history after every epoch; fit always validates every epoch).

    Extras: ``sweeps`` with ``sweep_topk`` / ``sweep_alpha`` / ``sweep_seeds`` (Figure 6; the other OE
    hyper-parameter fixed at the paper's 0.5 resp. 3), ``overlays`` (test images in Figure 5), ``bootstrap``
    (paired bootstrap resamples of the test set for row differences), ``export`` / ``register`` /
    ``manifest`` (shipping the CAR + OE weights).

    Run: ``output``, ``device``, ``workers``, ``threads`` (recorded; the CLI sets torch's thread count),
    ``command`` (recorded).
    """
    data: str = 'fashion-scenes'
    root: Optional[str] = None
    preset: Optional[str] = None
    dataset_seed: int = 0
    dataset_overrides: Dict[str, Any] = field(default_factory=dict)
    model: str = 'srdl_efficientnet_lite0'
    backbone: Optional[str] = None
    pretrained_backbone: bool = True
    label_embeddings: str = 'auto'
    mode: str = 'quick'
    trainer: Optional[str] = None
    rows: Sequence[str] = ROW_ORDER
    seeds: Optional[Sequence[int]] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup_epochs: Optional[float] = None
    img_size: Optional[int] = None
    train_stages: Optional[int] = None
    oe_topk: int = DEFAULT_OE_TOPK
    oe_alpha: float = DEFAULT_OE_ALPHA
    amp: Optional[bool] = None
    val_every_epoch: bool = False
    sweeps: bool = False
    sweep_topk: Optional[Sequence[int]] = None
    sweep_alpha: Optional[Sequence[float]] = None
    sweep_seeds: Optional[Sequence[int]] = None
    overlays: Optional[int] = None
    bootstrap: Optional[int] = None
    export: Optional[str] = None
    register: Optional[str] = None
    manifest: Optional[str] = None
    output: str = 'benchmark-results'
    device: Optional[str] = None
    workers: Optional[int] = None
    threads: Optional[int] = None
    command: Optional[str] = None

    def resolved(self) -> 'BenchmarkConfig':
        """A copy with every None field filled from the mode (:data:`MODES`), validated.

        Raises:
            ValueError: an unknown data source, mode, trainer or row, or an out-of-range value.
        """
        if self.data not in DATA_SOURCES:
            raise ValueError(f'unknown --data {self.data!r}; choose one of {list(DATA_SOURCES)}')
        mode = 'paper' if self.data in ('coco', 'voc') else self.mode
        if mode not in MODES:
            raise ValueError(f'unknown mode {self.mode!r}; choose quick or full')
        cfg = dataclasses.replace(self, mode=mode, rows=tuple(self.rows),
                                  dataset_overrides=dict(self.dataset_overrides))
        defaults = MODES[mode]
        for key, value in defaults.items():
            if getattr(cfg, key, None) is None:
                setattr(cfg, key, value)
        for key in ('seeds', 'sweep_topk', 'sweep_alpha', 'sweep_seeds'):
            setattr(cfg, key, tuple(getattr(cfg, key)))
        unknown = [r for r in cfg.rows if r not in ROWS]
        if unknown or not cfg.rows:
            raise ValueError(f'unknown --rows {unknown or "(none)"}; choose from {list(ROWS)}')
        if len(set(cfg.rows)) != len(cfg.rows):
            raise ValueError(f'--rows lists a row twice: {list(cfg.rows)}')
        cfg.rows = tuple(r for r in ROW_ORDER if r in cfg.rows)
        if cfg.trainer not in _TRAINERS:
            raise ValueError(f'unknown --trainer {cfg.trainer!r}; choose one of {list(_TRAINERS)}')
        if cfg.trainer == 'frozen-trunk' and cfg.data != 'fashion-scenes':
            raise ValueError('--trainer frozen-trunk has no augmentation and is meant for the embedded benchmark; '
                             'COCO/VOC use --trainer fit (the paper recipe)')
        if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or any(s < 0 for s in cfg.seeds):
            raise ValueError(f'--seeds must be distinct non-negative ints, got {list(cfg.seeds)}')
        if cfg.epochs is not None and cfg.epochs < 1:
            raise ValueError(f'--epochs must be >= 1, got {cfg.epochs}')
        if cfg.batch_size is not None and cfg.batch_size < 1:
            raise ValueError(f'--batch-size must be >= 1, got {cfg.batch_size}')
        if cfg.lr is not None and not 0 < cfg.lr <= 1:
            raise ValueError(f'--lr must be in (0, 1], got {cfg.lr}')
        if cfg.train_stages is not None and cfg.train_stages < 0:
            raise ValueError(f'--train-stages must be >= 0, got {cfg.train_stages}')
        if cfg.oe_topk < 1 or not 0 < cfg.oe_alpha < 1:
            raise ValueError(f'--oe-topk must be >= 1 and --oe-alpha in (0, 1), got {cfg.oe_topk}, {cfg.oe_alpha}')
        if any(k < 1 for k in cfg.sweep_topk) or any(not 0 < a < 1 for a in cfg.sweep_alpha):
            raise ValueError('--sweep-topk values must be >= 1 and --sweep-alpha values in (0, 1)')
        if cfg.overlays < 0 or cfg.bootstrap < 0:
            raise ValueError('--overlays and --bootstrap must be >= 0')
        if cfg.register and not cfg.export:
            raise ValueError('--register TAG needs --export DIR (the folder whose weights are registered)')
        if (cfg.export or cfg.register) and 'car_oe' not in cfg.rows:
            raise ValueError('--export/--register ship the CAR + OE model: include car_oe in --rows')
        if not cfg.model.startswith('srdl_'):
            raise ValueError(f'--model must be an srdl_* architecture (the rows are SRDL ablations), got {cfg.model!r}')
        if cfg.amp is None:
            cfg.amp = False
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict of every field."""
        return _jsonable(dataclasses.asdict(self))


# ----------------------------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------------------------
def hardware_info(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """The machine the numbers were measured on: CPU model (``lscpu`` Model name), logical cores, torch threads,
    load average at the call, memory and the CUDA device name when one is used."""
    cpu = None
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    if cpu is None:
        try:
            with open('/proc/cpuinfo', encoding='utf-8') as f:
                for line in f:
                    if line.lower().startswith('model name'):
                        cpu = line.split(':', 1)[1].strip()
                        break
        except OSError:
            cpu = platform.processor() or None
    info: Dict[str, Any] = {
        'cpu_model': cpu, 'logical_cpus': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
        'platform': platform.platform(),
    }
    try:
        info['load_average_1_5_15min'] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        pages, page_size = os.sysconf('SC_PHYS_PAGES'), os.sysconf('SC_PAGE_SIZE')
        info['memory_gib'] = round(pages * page_size / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if device is not None and device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    info['summary'] = f"{cpu or 'unknown CPU'}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads" + (
        f", GPU {info['gpu']}" if 'gpu' in info else ', no GPU used')
    return info


def software_versions() -> Dict[str, str]:
    """Versions of Python and the packages the results depend on."""
    import PIL
    versions = {'python': platform.python_version(), 'srdl_timm': srdl_timm.__version__, 'timm': timm.__version__,
                'torch': torch.__version__, 'numpy': np.__version__, 'pillow': PIL.__version__}
    for name in ('skimage', 'torchvision', 'matplotlib'):
        try:
            module = __import__(name)
            versions[name if name != 'skimage' else 'scikit-image'] = str(module.__version__)
        except ImportError:
            pass
    return versions


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: tuples -> lists, numpy scalars/arrays -> Python, NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(_jsonable(data), f, indent=1, allow_nan=False)
        f.write('\n')
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class DataSpec:
    """A resolved data source: ``dataset`` is the :func:`srdl_timm.data.create_dataset` name."""
    source: str
    dataset: str
    root: str
    train_split: str
    val_split: str
    test_split: str
    label_names: List[str]
    info: Dict[str, Any]

    def create(self, split: str, transform: Optional[Callable] = None, training: bool = False) -> Any:
        """The dataset of ``split`` (VOC: difficult-only labels ignored in evaluation, positive in training)."""
        options: Dict[str, Any] = {}
        if self.source == 'voc':
            options['difficult'] = 'ignore'
        return create_dataset(self.dataset, self.root, split, transform=transform, **options)


def default_data_root(preset: str, seed: int) -> str:
    """Where Fashion Scenes is built when ``--root`` is not given."""
    home = os.environ.get('SRDL_BENCHMARK_DATA') or _DEFAULT_DATA_HOME
    return os.path.join(os.path.expanduser(home), f'fashion_scenes-{preset}-seed{seed}')


def prepare_data(cfg: BenchmarkConfig) -> DataSpec:
    """Build or reuse Fashion Scenes, or check that COCO/VOC load through :func:`create_dataset`.

    Returns:
        The :class:`DataSpec`, with the class names from the training split.
    """
    train_split, val_split, test_split = DATA_SPLITS[cfg.data]
    if cfg.data == 'fashion-scenes':
        from srdl_timm.data.fashion_scenes import build_fashion_scenes
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


def _label_embeddings(cfg: BenchmarkConfig, spec: DataSpec) -> Any:
    """Label-graph node init: 'auto' = the shipped COCO/VOC arrays, else GloVe 6B-50d of the class names."""
    if cfg.label_embeddings != 'auto':
        return None if cfg.label_embeddings == 'none' else cfg.label_embeddings
    if spec.source in ('coco', 'voc'):
        return spec.source
    from srdl_timm.embeddings import resolve_label_embeddings
    return resolve_label_embeddings('glove-6b-50d', spec.label_names)


# ----------------------------------------------------------------------------------------------------------------
# the frozen-trunk trainer
# ----------------------------------------------------------------------------------------------------------------
def backbone_units(backbone: nn.Module) -> List[nn.Module]:
    """The backbone's ``forward_features`` as a list of units applied in order.

    timm EfficientNet / MobileNet family: ``[conv_stem + bn1, blocks[0], ..., blocks[-1], conv_head + bn2]``;
    timm ResNet family: ``[conv1 + bn1 + act1 + maxpool, layer1, ..., layer4]``. The units share the backbone's
    parameters (no copies).

    Raises:
        ValueError: a backbone of another structure (use ``--trainer fit``).
    """
    b = backbone
    if all(hasattr(b, a) for a in ('conv_stem', 'bn1', 'blocks', 'conv_head', 'bn2')):
        return [nn.Sequential(b.conv_stem, b.bn1), *list(b.blocks), nn.Sequential(b.conv_head, b.bn2)]
    if all(hasattr(b, a) for a in ('conv1', 'bn1', 'act1', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4')):
        return [nn.Sequential(b.conv1, b.bn1, b.act1, b.maxpool), b.layer1, b.layer2, b.layer3, b.layer4]
    raise ValueError(f'the frozen-trunk trainer knows timm EfficientNet/MobileNet and ResNet backbones, not '
                     f'{type(b).__name__}; use --trainer fit')


class FrozenTrunk:
    """Split of an SRDL model's backbone into a frozen trunk (cached) and a trained tail.

    Args:
        model: an SRDL model (its ``backbone`` is split; nothing is copied).
        train_stages: number of trailing :func:`backbone_units` that are trained (0 = the whole backbone frozen;
            all units = nothing cached but the input).

    Raises:
        ValueError: ``train_stages`` larger than the number of units, or units that do not compose to the
            backbone's ``forward_features`` (checked on a probe image).
    """

    def __init__(self, model: nn.Module, train_stages: int):
        units = backbone_units(model.backbone)
        if not 0 <= train_stages <= len(units):
            raise ValueError(f'--train-stages must be in [0, {len(units)}] for {model.backbone_name}, got {train_stages}')
        self.model = model
        self.num_units = len(units)
        self.train_stages = train_stages
        self.trunk = nn.Sequential(*units[:len(units) - train_stages])
        self.tail = nn.Sequential(*units[len(units) - train_stages:])
        self._check_composition()

    def _check_composition(self) -> None:
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                param = next(self.model.parameters())
                probe = torch.randn(2, self.model.in_chans, 64, 64, generator=torch.Generator().manual_seed(0))
                probe = probe.to(param.device, param.dtype)
                ref = self.model.backbone.forward_features(probe)
                got = self.tail(self.trunk(probe))
        finally:
            self.model.train(was)
        if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
            raise ValueError(f'the units of {self.model.backbone_name} do not reproduce its forward_features; '
                             'use --trainer fit')

    def trunk_parameters(self) -> List[nn.Parameter]:
        """Parameters of the frozen trunk."""
        return list(self.trunk.parameters())

    def trainable_parameters(self) -> List[nn.Parameter]:
        """Everything but the trunk: the tail's parameters and the whole head (label graph, CAR, classifier)."""
        frozen = {id(p) for p in self.trunk_parameters()}
        return [p for p in self.model.parameters() if id(p) not in frozen]

    def freeze(self) -> None:
        """``requires_grad=False`` on the trunk, True on everything else."""
        frozen = {id(p) for p in self.trunk_parameters()}
        for p in self.model.parameters():
            p.requires_grad_(id(p) not in frozen)

    def features(self, cached: torch.Tensor) -> torch.Tensor:
        """The backbone feature map ``F`` from cached trunk outputs (= ``model.forward_features(images)``)."""
        return self.tail(cached)

    def train_mode(self) -> None:
        """Training mode for the head, evaluation mode (running statistics, not updated) for every BatchNorm."""
        self.model.train()
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    def outputs(self, cached: torch.Tensor, erasing: bool) -> List[torch.Tensor]:
        """Logits (and, with ``erasing`` in training mode, the erased-pass logits of eq. 12) from cached trunk
        outputs: exactly what ``model(images)`` returns."""
        feat = self.features(cached)
        if erasing and self.model.training:
            logits, erased = self.model._forward_with_erasing(feat)  # SRDL.forward's training path, eqs. 7-12
            return [logits, erased]
        return [self.model.forward_head(feat)]


def extract_trunk_features(trunk: nn.Module, dataset: Any, batch_size: int = 64, workers: int = 0,
                           device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen trunk (eval mode) over a dataset once.

    Args:
        trunk: the frozen part of the backbone.
        dataset: yields ``(image tensor, target)`` (its transform already set).
        batch_size / workers: data loading.
        device: where the trunk runs (outputs are kept on the CPU).

    Returns:
        ``(features [N, c, h, w] float32, targets [N, C] float32)`` in dataset order.
    """
    device = device or torch.device('cpu')
    trunk.eval()
    loader = create_loader(dataset, batch_size, is_training=False, num_workers=workers)
    feats, targets = [], []
    with torch.inference_mode():
        for images, target in loader:
            feats.append(trunk(images.to(device)).float().cpu())
            targets.append(target.float())
    return torch.cat(feats), torch.cat(targets)


def _cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_frozen_trunk(
        split: FrozenTrunk,
        features: torch.Tensor,
        targets: torch.Tensor,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        warmup_epochs: float,
        seed: int,
        erasing: bool,
        evaluate: Optional[Callable[[], Dict[str, float]]] = None,
        device: Optional[torch.device] = None,
        amp_dtype: Optional[torch.dtype] = None,
) -> List[Dict[str, Any]]:
    """Train the tail and head on cached trunk outputs; the trunk is untouched.

    AdamW (decoupled ``weight_decay`` on every trained parameter), linear warm-up for ``warmup_epochs`` then
    cosine decay to 0 over all steps, shuffled mini-batches (``torch.Generator`` seeded by ``seed``), the last
    incomplete batch dropped; loss ``L_ori`` (+ ``L_era`` with ``erasing``) as in eqs. 11-13
    (:func:`srdl_timm.loss.masked_bce_with_logits`), BatchNorm on running statistics.

    Args:
        split: the model and its trunk/tail split.
        features / targets: cached trunk outputs and labels of the training split.
        evaluate: called after every epoch (model in eval mode); its metrics go into the history.
        amp_dtype: autocast dtype of the training forward pass (the loss is float32), or None.

    Returns:
        Per-epoch history: ``epoch``, ``loss``, ``loss_ori``, ``loss_era``, ``lr``, ``time_s`` (+ evaluate's keys).

    Raises:
        ValueError: fewer training samples than one batch; FloatingPointError: a non-finite loss.
    """
    device = device or torch.device('cpu')
    n = features.shape[0]
    steps_per_epoch = n // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f'{n} training images are fewer than one batch of {batch_size}; lower --batch-size')
    split.freeze()
    params = split.trainable_parameters()
    try:  # the fused kernel (CPU and CUDA) does the same update in one pass over the parameters
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_with_warmup(s, total, warmup))
    generator = torch.Generator().manual_seed(seed)
    history: List[Dict[str, Any]] = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        split.train_mode()
        order = torch.randperm(n, generator=generator)
        sums = np.zeros(3)
        for i in range(steps_per_epoch):
            index = order[i * batch_size:(i + 1) * batch_size]
            x, y = features[index].to(device), targets[index].to(device)
            if amp_dtype is not None:
                with torch.autocast(device_type=device.type, dtype=amp_dtype):
                    outputs = split.outputs(x, erasing)
            else:
                outputs = split.outputs(x, erasing)
            loss_ori = masked_bce_with_logits(outputs[0], y)
            loss_era = masked_bce_with_logits(outputs[1], y) if len(outputs) > 1 else torch.zeros_like(loss_ori)
            loss = loss_ori + loss_era
            if not torch.isfinite(loss):
                raise FloatingPointError(f'non-finite loss {loss.item()} at epoch {epoch + 1}, step {i + 1}')
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            sums += [loss.item(), loss_ori.item(), loss_era.item()]
        row: Dict[str, Any] = {'epoch': epoch + 1, 'loss': sums[0] / steps_per_epoch,
                               'loss_ori': sums[1] / steps_per_epoch,
                               'loss_era': sums[2] / steps_per_epoch if erasing else None,
                               'lr': optimizer.param_groups[0]['lr'], 'time_s': time.perf_counter() - t0}
        if evaluate is not None:
            split.model.eval()
            row.update(evaluate())
        history.append(row)
        _logger.info('epoch %d/%d: loss %.4f%s (%.1fs)', epoch + 1, epochs, row['loss'],
                     ''.join(f', {k} {v:.2f}' for k, v in row.items() if k.startswith('val_')), row['time_s'])
    split.model.eval()
    return history


def _frozen_trunk_attention(split: FrozenTrunk, features: torch.Tensor, batch_size: int = 256,
                            device: Optional[torch.device] = None) -> np.ndarray:
    """Spatial attention maps ``[N, C, h, w]`` (eq. 5) of the model on cached trunk outputs."""
    device = device or torch.device('cpu')
    split.model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, features.shape[0], batch_size):
            feat = split.features(features[i:i + batch_size].to(device))
            _, sa, _ = split.model.forward_category_features(feat)
            out.append(sa.unflatten(-1, feat.shape[-2:]).float().cpu().numpy())
    return np.concatenate(out)


def _frozen_trunk_logits(split: FrozenTrunk, features: torch.Tensor, batch_size: int = 256,
                         device: Optional[torch.device] = None) -> torch.Tensor:
    device = device or torch.device('cpu')
    split.model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, features.shape[0], batch_size):
            out.append(split.outputs(features[i:i + batch_size].to(device), erasing=False)[0].float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------------
def predict_logits(model: nn.Module, loader: Any, device: torch.device, amp_dtype: Optional[torch.dtype] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """float32 logits and targets of ``model`` (eval mode) over ``loader``; with AMP the backbone runs in
    ``amp_dtype`` and the head in float32 (as :func:`srdl_timm.validate.validate`)."""
    model.eval()
    logits, targets = [], []
    with torch.inference_mode():
        for images, target in loader:
            images = images.to(device)
            if amp_dtype is not None:
                with torch.autocast(device_type=device.type, dtype=amp_dtype):
                    feat = model.forward_features(images)
                out = model.forward_head(feat.float())
            else:
                out = model(images)
            logits.append(out.float().cpu())
            targets.append(target.float())
    return torch.cat(logits), torch.cat(targets)


def metrics_from_logits(logits: torch.Tensor, targets: torch.Tensor, label_names: Sequence[str]) -> Dict[str, Any]:
    """:class:`srdl_timm.metrics.MultiLabelMetrics` of a whole split: scalar metrics (percent) and per-class AP by
    class name in both definitions."""
    metrics = MultiLabelMetrics(label_names=label_names)
    metrics.update(logits, targets)
    result = metrics.compute(distributed=False)
    out: Dict[str, Any] = {k: float(result[k]) for k in _SCALAR_METRICS if k in result}
    out['num_samples'] = int(result['num_samples'])
    out['per_class_AP'] = {
        'interpolated': dict(zip(label_names, result['AP_interpolated'].tolist())),
        'non_interpolated': dict(zip(label_names, result['AP_non_interpolated'].tolist())),
    }
    return out


def resampled_average_precision(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray,
                                interpolated: bool = True, chunk_elements: int = 1 << 24) -> np.ndarray:
    """Per-class AP of bootstrap resamples given as sample multiplicities, without materialising the resamples.

    A resample that draws sample ``i`` ``w[i]`` times has, in every class's score order, true/false-positive counts
    ``cumsum(w * y)`` / ``cumsum(w * (1 - y))``; tied scores are evaluated once per tied group, exactly as
    :func:`srdl_timm.metrics.average_precision` (which this equals for ``weights`` of ones, and for a resample
    equals it on the explicitly duplicated data). Entries with target -1 are left out.

    Args:
        scores: ``[N, C]`` logits.
        targets: ``[N, C]`` with 1 / 0 / -1.
        weights: ``[R, N]`` non-negative multiplicities (one row per resample).
        interpolated: all-point interpolated (True) or non-interpolated AP.
        chunk_elements: resamples are processed in blocks of about this many ``R x N`` elements.

    Returns:
        ``[R, C]`` AP as fractions; NaN where a resample holds no positive of that class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    weights = np.asarray(weights, dtype=np.float64)
    num_resamples, num_samples = weights.shape
    out = np.full((num_resamples, scores.shape[1]), np.nan)
    step = max(1, chunk_elements // max(1, num_samples))
    for c in range(scores.shape[1]):
        valid = targets[:, c] != -1
        order = np.argsort(-scores[valid, c], kind='stable')
        s = scores[valid, c][order]
        positive = (targets[valid, c] == 1)[order].astype(np.float64)
        last = np.r_[s[1:] != s[:-1], True]
        for r0 in range(0, num_resamples, step):
            w = weights[r0:r0 + step][:, valid][:, order]
            tp = np.cumsum(w * positive, axis=1)[:, last]
            fp = np.cumsum(w * (1.0 - positive), axis=1)[:, last]
            num_pos = tp[:, -1:]
            with np.errstate(invalid='ignore', divide='ignore'):
                precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
                if interpolated:
                    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
                recall = tp / num_pos
                recall_step = np.diff(recall, axis=1, prepend=0.0)
                ap = np.sum(recall_step * precision, axis=1)
            ap[num_pos[:, 0] <= 0] = np.nan
            out[r0:r0 + step, c] = ap
    return out


def paired_bootstrap(logits_a: Sequence[np.ndarray], logits_b: Sequence[np.ndarray], targets: np.ndarray,
                     num_resamples: int = 1000, seed: int = 0, mode: str = 'interpolated') -> Dict[str, float]:
    """Paired bootstrap over test images of the mAP difference between two rows, averaged over seeds.

    Each resample draws the test images with replacement (the same draw for every run) and computes
    ``mean_s[mAP(a_s) - mAP(b_s)]`` over the paired seeds ``s`` (classes without a positive in the resample are
    left out of both). This measures how much the difference depends on which test images happened to be drawn,
    given the trained models; the seed-to-seed spread is the table's std.

    Args:
        logits_a / logits_b: per seed, test logits ``[N, C]`` of row a and row b (same seeds, same order).
        targets: ``[N, C]`` test targets.
        num_resamples: bootstrap resamples (0: only the point estimate).
        seed: resampling seed.
        mode: AP definition, 'interpolated' or 'non_interpolated'.

    Returns:
        ``diff`` (point estimate, percent), ``ci_low`` / ``ci_high`` (2.5 / 97.5 percentiles), ``frac_le_0``
        (fraction of resamples with a difference <= 0) and ``resamples``.
    """
    if len(logits_a) != len(logits_b) or not logits_a:
        raise ValueError('paired_bootstrap needs the same (non-zero) number of runs for both rows')
    if mode not in ('interpolated', 'non_interpolated'):
        raise ValueError(f'unknown AP mode {mode!r}')
    n = targets.shape[0]
    weights = np.ones((1, n))
    if num_resamples > 0:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n, size=(num_resamples, n))
        weights = np.concatenate([weights, np.stack([np.bincount(d, minlength=n) for d in draws])])
    diffs = np.zeros(weights.shape[0])
    for a, b in zip(logits_a, logits_b):
        ap_a = resampled_average_precision(a, targets, weights, mode == 'interpolated')
        ap_b = resampled_average_precision(b, targets, weights, mode == 'interpolated')
        both = np.isfinite(ap_a) & np.isfinite(ap_b)
        diffs += (np.where(both, ap_a, 0).sum(1) - np.where(both, ap_b, 0).sum(1)) / np.maximum(both.sum(1), 1)
    diffs = diffs * 100.0 / len(logits_a)
    point = float(diffs[0])
    result = {'diff': point, 'ci_low': point, 'ci_high': point, 'frac_le_0': float(point <= 0), 'resamples': 0}
    if num_resamples > 0:
        values = diffs[1:]
        result.update(ci_low=float(np.percentile(values, 2.5)), ci_high=float(np.percentile(values, 97.5)),
                      frac_le_0=float(np.mean(values <= 0)), resamples=int(num_resamples))
    return result


def load_boxes(dataset: Any) -> Optional[List[Dict[int, List[Tuple[float, float, float, float]]]]]:
    """Ground-truth boxes of a COCO-format dataset, per sample: ``{class index: [(x0, y0, x1, y1), ...]}`` in pixels
    of the original image, plus the image size under key -1 as ``[(0, 0, width, height)]``; None for datasets
    without COCO annotations (VOC)."""
    from srdl_timm.data import load_coco_json
    ann_file = getattr(dataset, 'info', {}).get('ann_file')
    if not ann_file or not hasattr(dataset, 'image_ids') or not hasattr(dataset, 'category_ids'):
        return None
    data = load_coco_json(ann_file)
    column = {cid: i for i, cid in enumerate(dataset.category_ids)}
    sizes = {img['id']: (float(img.get('width', 0)), float(img.get('height', 0))) for img in data['images']}
    per_image: Dict[Any, Dict[int, List[Tuple[float, float, float, float]]]] = {}
    for ann in data['annotations']:
        bbox = ann.get('bbox')
        if not bbox or len(bbox) != 4 or ann['category_id'] not in column:
            continue
        x, y, w, h = (float(v) for v in bbox)
        per_image.setdefault(ann['image_id'], {}).setdefault(column[ann['category_id']], []).append(
            (x, y, x + w, y + h))
    out = []
    for image_id in dataset.image_ids:
        boxes = dict(per_image.get(image_id, {}))
        width, height = sizes.get(image_id, (0.0, 0.0))
        boxes[-1] = [(0.0, 0.0, width, height)]
        out.append(boxes)
    return out


def pointing_game(maps: np.ndarray, targets: np.ndarray,
                  boxes: Sequence[Mapping[int, Sequence[Tuple[float, float, float, float]]]]) -> Dict[str, float]:
    """Does each class's spatial attention peak on that class's object?

    For every (image, class present) pair with a ground-truth box, the grid cell where ``SA_c`` is largest is a hit
    when the image region it covers overlaps a box of class ``c``. ``chance`` is the hit rate of a uniformly random
    cell (the mean fraction of cells overlapping the boxes), so a map that ignores the objects scores about
    ``chance`` and one that avoids them scores below it.

    Args:
        maps: ``[N, C, h, w]`` spatial attention.
        targets: ``[N, C]`` (1 = present).
        boxes: per image, from :func:`load_boxes` (key -1: the image size).

    Returns:
        ``hit_rate`` and ``chance`` in percent, ``num_pairs``; ``sa_mean`` (mean SA value) and ``sa_peak_to_peak``
        (mean over maps of max - min): how much the maps vary at all.
    """
    n, c, h, w = maps.shape
    stats = {'sa_mean': float(maps.mean()), 'sa_peak_to_peak': float((maps.max((2, 3)) - maps.min((2, 3))).mean())}
    hits = chance = 0.0
    pairs = 0
    for i in range(n):
        width, height = boxes[i][-1][0][2], boxes[i][-1][0][3]
        if width <= 0 or height <= 0:
            continue
        xs = np.arange(w + 1) * width / w
        ys = np.arange(h + 1) * height / h
        for k in np.flatnonzero(targets[i] == 1):
            if k not in boxes[i]:
                continue
            overlap = np.zeros((h, w), dtype=bool)
            for x0, y0, x1, y1 in boxes[i][k]:
                overlap |= ((ys[:-1] < y1) & (ys[1:] > y0))[:, None] & ((xs[:-1] < x1) & (xs[1:] > x0))[None, :]
            peak = np.unravel_index(int(np.argmax(maps[i, k])), (h, w))
            hits += float(overlap[peak])
            chance += float(overlap.mean())
            pairs += 1
    if pairs == 0:
        return {'hit_rate': math.nan, 'chance': math.nan, 'num_pairs': 0, **stats}
    return {'hit_rate': hits / pairs * 100.0, 'chance': chance / pairs * 100.0, 'num_pairs': pairs, **stats}


# ----------------------------------------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """One trained model: its row, seed, OE hyper-parameters, metrics and timing."""
    row: str
    seed: int
    oe_topk: int
    oe_alpha: float
    purpose: str
    config: Dict[str, Any]
    test: Dict[str, Any]
    val: Optional[Dict[str, Any]]
    history: List[Dict[str, Any]]
    train_seconds: float
    eval_seconds: float
    wall_seconds: float
    logits_file: Optional[str] = None
    pointing_game: Optional[Dict[str, float]] = None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict."""
        return _jsonable(dataclasses.asdict(self))


def _create_model(cfg: BenchmarkConfig, spec: DataSpec, row: Row, topk: int, alpha: float,
                  embeddings: Any) -> nn.Module:
    kwargs: Dict[str, Any] = dict(num_classes=len(spec.label_names), label_names=spec.label_names,
                                  pretrained_backbone=cfg.pretrained_backbone, oe_topk=topk, oe_alpha=alpha,
                                  **row.model_kwargs())
    if row.use_ca or row.use_sa:
        kwargs['label_embeddings'] = embeddings
    if cfg.backbone:
        kwargs['backbone'] = cfg.backbone
    model = timm.create_model(cfg.model, **kwargs)
    model.set_object_erasing(row.oe)
    return model


class _Context:
    """State shared by the runs of one benchmark invocation."""

    def __init__(self, cfg: BenchmarkConfig, spec: DataSpec, out: Path, device: torch.device):
        self.cfg = cfg
        self.spec = spec
        self.out = out
        self.device = device
        self.embeddings = _label_embeddings(cfg, spec) if any(
            ROWS[r].use_ca or ROWS[r].use_sa for r in cfg.rows) else None
        self.cache: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.trunk_state: Optional[Dict[str, torch.Tensor]] = None
        self.data_config: Optional[Dict[str, Any]] = None
        self.cache_seconds = 0.0
        self.models: Dict[Tuple[str, int, int, float], nn.Module] = {}
        self._boxes: Any = False

    def test_boxes(self) -> Optional[List[Dict[int, List[Tuple[float, float, float, float]]]]]:
        """Ground-truth boxes of the test split (COCO-format data only), loaded once."""
        if self._boxes is False:
            self._boxes = load_boxes(self.spec.create(self.spec.test_split))
        return self._boxes


def _prepare_frozen_trunk(ctx: _Context) -> None:
    """Build the trunk once from a freshly created model and cache its outputs for train/val/test."""
    cfg, spec = ctx.cfg, ctx.spec
    t0 = time.perf_counter()
    model = _create_model(cfg, spec, ROWS['baseline'], cfg.oe_topk, cfg.oe_alpha, None).to(ctx.device)
    split = FrozenTrunk(model, cfg.train_stages)
    data_config = resolve_data_config({}, model=model)
    size = cfg.img_size or spec.info.get('params', {}).get('image_size') or int(data_config['input_size'][-1])
    data_config['input_size'] = (3, int(size), int(size))
    ctx.data_config = data_config
    transform = create_transform(data_config, is_training=False)
    for split_name in (spec.train_split, spec.val_split, spec.test_split):
        if split_name in ctx.cache:
            continue
        ctx.cache[split_name] = extract_trunk_features(split.trunk, spec.create(split_name, transform),
                                                       workers=cfg.workers, device=ctx.device)
    ctx.trunk_state = {k: v.detach().clone() for k, v in split.trunk.state_dict().items()}
    ctx.cache_seconds = time.perf_counter() - t0
    shape = tuple(ctx.cache[spec.train_split][0].shape[1:])
    _logger.info('frozen trunk (%d of %d backbone units frozen) cached for %s in %.1fs: features %s per image',
                 split.num_units - split.train_stages, split.num_units,
                 ', '.join(f'{k} {v[0].shape[0]}' for k, v in ctx.cache.items()), ctx.cache_seconds, shape)


def _run_frozen_trunk(ctx: _Context, row: Row, seed: int, topk: int, alpha: float) -> Tuple[Dict[str, Any], ...]:
    cfg, spec = ctx.cfg, ctx.spec
    torch.manual_seed(seed)
    model = _create_model(cfg, spec, row, topk, alpha, ctx.embeddings).to(ctx.device)
    split = FrozenTrunk(model, cfg.train_stages)
    state = split.trunk.state_dict()
    if state.keys() != ctx.trunk_state.keys() or any(not torch.equal(state[k], ctx.trunk_state[k]) for k in state):
        raise RuntimeError('the trunk of a new model differs from the cached one (non-deterministic backbone init?)')
    val_x, val_y = ctx.cache[spec.val_split]

    def evaluate() -> Dict[str, float]:
        m = metrics_from_logits(_frozen_trunk_logits(split, val_x, device=ctx.device), val_y, spec.label_names)
        return {'val_mAP_interpolated': m['mAP_interpolated'], 'val_mAP_non_interpolated': m['mAP_non_interpolated']}

    train_x, train_y = ctx.cache[spec.train_split]
    t0 = time.perf_counter()
    history = train_frozen_trunk(
        split, train_x, train_y, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs, seed=seed, erasing=row.oe,
        evaluate=evaluate if cfg.val_every_epoch else None, device=ctx.device,
        amp_dtype=torch.bfloat16 if cfg.amp else None)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_x, test_y = ctx.cache[spec.test_split]
    test_logits = _frozen_trunk_logits(split, test_x, device=ctx.device)
    val_logits = _frozen_trunk_logits(split, val_x, device=ctx.device)
    sa_maps = _frozen_trunk_attention(split, test_x, device=ctx.device) if row.use_sa else None
    eval_seconds = time.perf_counter() - t1
    run_config = dict(trainer='frozen-trunk', model=cfg.model, backbone=model.backbone_name,
                      pretrained_backbone=cfg.pretrained_backbone, **row.model_kwargs(), oe=row.oe, oe_topk=topk,
                      oe_alpha=alpha, seed=seed, epochs=cfg.epochs, amp='bfloat16' if cfg.amp else None, batch_size=cfg.batch_size, optimizer='adamw',
                      lr=cfg.lr, weight_decay=cfg.weight_decay, schedule='linear warm-up + cosine to 0 (per step)',
                      warmup_epochs=cfg.warmup_epochs, train_stages=cfg.train_stages,
                      backbone_units=split.num_units, frozen_units=split.num_units - split.train_stages,
                      batchnorm='running statistics (eval mode), not updated', augmentation='none',
                      input_size=list(ctx.data_config['input_size']),
                      interpolation=ctx.data_config.get('interpolation'), mean=list(ctx.data_config['mean']),
                      std=list(ctx.data_config['std']),
                      num_trained_parameters=sum(p.numel() for p in split.trainable_parameters()))
    return (model, run_config, history, train_seconds, eval_seconds, (test_logits, test_y), (val_logits, val_y),
            sa_maps)


def _fit_config(ctx: _Context, row: Row, seed: int, topk: int, alpha: float, output: Path) -> Any:
    from srdl_timm.train import TrainConfig
    cfg, spec = ctx.cfg, ctx.spec
    kwargs: Dict[str, Any] = dict(
        data=spec.dataset, root=spec.root, train_split=spec.train_split, val_split=spec.val_split,
        model=cfg.model, pretrained_backbone=cfg.pretrained_backbone, use_gcn=row.use_gcn, use_ca=row.use_ca,
        use_sa=row.use_sa, oe=row.oe, oe_topk=topk, oe_alpha=alpha, seed=seed, output=str(output),
        workers=cfg.workers, progress=False, label_embeddings=cfg.label_embeddings,
        amp=bool(cfg.amp), channels_last=ctx.device.type == 'cuda', device=str(ctx.device),
        model_kwargs={'backbone': cfg.backbone} if cfg.backbone else {})
    if cfg.mode == 'paper':
        kwargs['recipe'] = 'paper'
    else:
        kwargs.update(opt='adam', sched='cosine', aug='paper', pretrained_backbone=cfg.pretrained_backbone)
    for key in ('epochs', 'batch_size', 'lr', 'weight_decay', 'img_size'):
        value = getattr(cfg, key)
        if value is not None:
            kwargs[key] = value
    if cfg.img_size is None and spec.source == 'fashion-scenes':
        kwargs['img_size'] = int(spec.info['params']['image_size'])  # the images' own size
    if cfg.warmup_epochs is not None:
        kwargs['warmup_epochs'] = int(math.ceil(cfg.warmup_epochs))
    return TrainConfig(**kwargs)


def _run_fit(ctx: _Context, row: Row, seed: int, topk: int, alpha: float) -> Tuple[Any, ...]:
    from srdl_timm.hub import load_checkpoint_model
    from srdl_timm.train import fit
    spec = ctx.spec
    output = ctx.out / 'runs' / _run_name(row.key, seed, topk, alpha)
    config = _fit_config(ctx, row, seed, topk, alpha, output)
    t0 = time.perf_counter()
    result = fit(config)
    train_seconds = time.perf_counter() - t0
    if not result.get('model_path'):
        raise RuntimeError(f'training {output} stopped early; no final weights to evaluate')
    model, _ = load_checkpoint_model(result['model_path'])
    model.to(ctx.device)
    resolved = result['config']
    data_config = resolve_data_config({}, model=model)
    data_config['input_size'] = (3, int(resolved['img_size']), int(resolved['img_size']))
    ctx.data_config = data_config
    transform = create_transform(data_config, is_training=False)
    amp_dtype = torch.bfloat16 if (ctx.cfg.amp and ctx.device.type == 'cuda') else None
    t1 = time.perf_counter()
    outputs = []
    for split_name in (spec.test_split, spec.val_split):
        loader = create_loader(spec.create(split_name, transform), int(resolved['batch_size']), is_training=False,
                               num_workers=ctx.cfg.workers, pin_memory=ctx.device.type == 'cuda')
        outputs.append(predict_logits(model, loader, ctx.device, amp_dtype))
    sa_maps = None
    if row.use_sa and ctx.test_boxes() is not None:
        test = spec.create(spec.test_split, transform)
        subset = torch.utils.data.Subset(test, range(min(len(test), _MAX_POINTING_IMAGES)))
        sa_maps = _pixel_attention(model, create_loader(subset, int(resolved['batch_size']), is_training=False,
                                                        num_workers=ctx.cfg.workers), ctx.device)
    eval_seconds = time.perf_counter() - t1
    run_config = dict(resolved, trainer='fit', output=str(output), model_path=result['model_path'])
    return model, run_config, result['history'], train_seconds, eval_seconds, outputs[0], outputs[1], sa_maps


def _pixel_attention(model: nn.Module, loader: Any, device: torch.device) -> np.ndarray:
    """Spatial attention maps ``[N, C, h, w]`` of ``model`` over ``loader`` (float32)."""
    model.eval()
    out = []
    with torch.inference_mode():
        for images, _ in loader:
            out.append(model.attention_maps(images.to(device))['spatial_attention'].float().cpu().numpy())
    return np.concatenate(out)


def _run_name(row: str, seed: int, topk: int, alpha: float) -> str:
    return f'{row}-seed{seed}-top{topk}-alpha{alpha:g}'


def _execute(ctx: _Context, row_key: str, seed: int, topk: int, alpha: float, purpose: str,
             keep_model: bool) -> RunResult:
    row = ROWS[row_key]
    t0 = time.perf_counter()
    _logger.info('run %s (%s), seed %d%s', row.name, purpose, seed,
                 f', OE top-{topk} alpha {alpha:g}' if row.oe else '')
    runner = _run_frozen_trunk if ctx.cfg.trainer == 'frozen-trunk' else _run_fit
    model, run_config, history, train_s, eval_s, (test_logits, test_y), (val_logits, val_y), sa_maps = runner(
        ctx, row, seed, topk, alpha)
    names = ctx.spec.label_names
    test = metrics_from_logits(test_logits, test_y, names)
    val = metrics_from_logits(val_logits, val_y, names) if ctx.spec.val_split != ctx.spec.test_split else None
    name = _run_name(row_key, seed, topk, alpha)
    logits_dir = ctx.out / 'logits'
    logits_dir.mkdir(parents=True, exist_ok=True)
    logits_file = logits_dir / f'{name}.npz'
    np.savez_compressed(logits_file, test_logits=test_logits.numpy(), test_targets=test_y.numpy())
    result = RunResult(row=row_key, seed=seed, oe_topk=topk, oe_alpha=alpha, purpose=purpose,
                       config=_jsonable(run_config), test=test, val=val, history=_jsonable(history),
                       train_seconds=train_s, eval_seconds=eval_s, wall_seconds=time.perf_counter() - t0,
                       logits_file=str(logits_file.relative_to(ctx.out)))
    boxes = ctx.test_boxes()
    if sa_maps is not None and boxes is not None:
        n = sa_maps.shape[0]
        result.pointing_game = pointing_game(sa_maps, test_y.numpy()[:n], boxes[:n])
    if keep_model:
        ctx.models[(row_key, seed, topk, alpha)] = model
    _logger.info('%s seed %d: test mAP %.2f (interpolated) / %.2f (non-interpolated), CF1 %.2f, OF1 %.2f '
                 '(train %.1fs, eval %.1fs)', row.name, seed, test['mAP_interpolated'], test['mAP_non_interpolated'],
                 test['CF1'], test['OF1'], train_s, eval_s)
    return result


# ----------------------------------------------------------------------------------------------------------------
# aggregation and reports
# ----------------------------------------------------------------------------------------------------------------
def summarize(values: Sequence[float]) -> Dict[str, Any]:
    """Mean, sample standard deviation (ddof=1; 0 for one value), n and the values."""
    v = np.asarray(values, dtype=np.float64)
    return {'mean': float(v.mean()), 'std': float(v.std(ddof=1)) if len(v) > 1 else 0.0, 'n': int(len(v)),
            'values': v.tolist()}


def _table_rows(runs: Sequence[RunResult], cfg: BenchmarkConfig) -> Dict[str, Dict[str, Any]]:
    table: Dict[str, Dict[str, Any]] = {}
    for key in cfg.rows:
        chosen = [r for r in runs if r.row == key and r.purpose == 'table']
        if not chosen:
            continue
        table[key] = {'name': ROWS[key].name, 'paper': ROWS[key].paper, 'seeds': [r.seed for r in chosen],
                      'metrics': {m: summarize([r.test[m] for r in chosen]) for m in _SCALAR_METRICS}}
        games = [r.pointing_game for r in chosen if r.pointing_game and r.pointing_game['num_pairs']]
        if games:
            table[key]['pointing_game'] = {'hit_rate': summarize([g['hit_rate'] for g in games]),
                                           'chance': float(np.mean([g['chance'] for g in games])),
                                           'num_pairs': games[0]['num_pairs'],
                                           'sa_mean': float(np.mean([g['sa_mean'] for g in games])),
                                           'sa_peak_to_peak': float(np.mean([g['sa_peak_to_peak'] for g in games]))}
    return table


def _fmt_cell(stat: Mapping[str, Any]) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}" if stat['n'] > 1 else f"{stat['mean']:.2f}"


def format_table(table: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = TABLE_METRICS,
                 reference: Optional[str] = 'baseline', switches: bool = True) -> str:
    """Markdown table: one line per row with mean ± std over seeds (percent), switches and the change of the first
    metric against ``reference``."""
    heads = ['Line', 'Method']
    if switches:
        heads += ['GCN', 'CA', 'SA', 'OE']
    heads += [_METRIC_LABELS.get(m, m) for m in metrics]
    if reference in table:
        heads.append(f'Δ {_METRIC_LABELS.get(metrics[0], metrics[0])} vs baseline')
    lines = ['| ' + ' | '.join(heads) + ' |', '|' + '---|' * len(heads)]
    ref = table.get(reference)
    for i, (key, entry) in enumerate(table.items(), start=1):
        row = ROWS[key]
        car = row.use_ca or row.use_sa
        cells = [str(i), entry['name']]
        if switches:
            cells += ['✓' if car and row.use_gcn else '', '✓' if row.use_ca else '', '✓' if row.use_sa else '',
                      '✓' if row.oe else '']
        cells += [_fmt_cell(entry['metrics'][m]) for m in metrics]
        if ref is not None:
            delta = entry['metrics'][metrics[0]]['mean'] - ref['metrics'][metrics[0]]['mean']
            cells.append('—' if key == reference else f'{delta:+.2f}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


_COMPARISONS = (('car', 'baseline'), ('car_oe', 'car'), ('car_oe', 'baseline'), ('car', 'car_no_gcn'),
                ('car', 'car_no_ca'), ('car', 'car_no_sa'))


def _comparisons(runs: Sequence[RunResult], out: Path, num_resamples: int) -> List[Dict[str, Any]]:
    by_key: Dict[Tuple[str, int], RunResult] = {(r.row, r.seed): r for r in runs if r.purpose == 'table'}
    results = []
    for a, b in _COMPARISONS:
        seeds = sorted(s for (row, s) in by_key if row == a and (b, s) in by_key)
        if not seeds:
            continue
        la, lb, targets = [], [], None
        for s in seeds:
            da, db = np.load(out / by_key[(a, s)].logits_file), np.load(out / by_key[(b, s)].logits_file)
            la.append(da['test_logits'])
            lb.append(db['test_logits'])
            targets = da['test_targets']
        entry = {'a': a, 'b': b, 'seeds': seeds}
        for mode in ('interpolated', 'non_interpolated'):
            entry[mode] = paired_bootstrap(la, lb, targets, num_resamples=num_resamples, mode=mode)
        results.append(entry)
    return results


def _format_comparisons(comparisons: Sequence[Mapping[str, Any]]) -> str:
    lines = ['| Comparison | Δ mAP (interp.) | 95% bootstrap interval | Δ mAP (non-interp.) | 95% bootstrap interval |',
             '|---|---|---|---|---|']
    for c in comparisons:
        i, n = c['interpolated'], c['non_interpolated']
        lines.append(f"| {ROWS[c['a']].name} − {ROWS[c['b']].name} | {i['diff']:+.2f} | "
                     f"[{i['ci_low']:+.2f}, {i['ci_high']:+.2f}] | {n['diff']:+.2f} | "
                     f"[{n['ci_low']:+.2f}, {n['ci_high']:+.2f}] |")
    return '\n'.join(lines)


def _sweep_summary(runs: Sequence[RunResult], cfg: BenchmarkConfig) -> Dict[str, Any]:
    def points(param: str, values: Sequence[Any], fixed: Tuple[str, Any]) -> List[Dict[str, Any]]:
        out = []
        for v in values:
            chosen = [r for r in runs if r.row == 'car_oe' and r.seed in cfg.sweep_seeds
                      and math.isclose(getattr(r, param), v) and math.isclose(getattr(r, fixed[0]), fixed[1])]
            if chosen:
                out.append({param: v, 'seeds': [r.seed for r in chosen],
                            **{m: summarize([r.test[m] for r in chosen]) for m in TABLE_METRICS}})
        return out
    return {'topk': points('oe_topk', cfg.sweep_topk, ('oe_alpha', DEFAULT_OE_ALPHA)),
            'alpha': points('oe_alpha', cfg.sweep_alpha, ('oe_topk', DEFAULT_OE_TOPK))}


def _plot_table(table: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = list(table)
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(1.6 * len(keys) + 2, 4.2))
    for j, (metric, colour) in enumerate((('mAP_interpolated', '#1f77b4'), ('mAP_non_interpolated', '#ff7f0e'))):
        means = [table[k]['metrics'][metric]['mean'] for k in keys]
        stds = [table[k]['metrics'][metric]['std'] for k in keys]
        ax.bar(x + (j - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3, color=colour,
               label=_METRIC_LABELS[metric])
    lows = [table[k]['metrics']['mAP_non_interpolated']['mean'] for k in keys]
    ax.set_ylim(max(0.0, min(lows) - 10), min(100.0, max(t['metrics']['mAP_interpolated']['mean']
                                                           for t in table.values()) + 5))
    ax.set_xticks(x)
    ax.set_xticklabels([table[k]['name'].replace(' (', '\n(') for k in keys], fontsize=8)
    ax.set_ylabel('test mAP (%)')
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: smallest mAP range (points) on the y axis of the sweep plots
_MIN_SWEEP_SPAN = 5.0


def _plot_sweeps(sweeps: Mapping[str, Any], reference: Optional[Mapping[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, param, label in ((axes[0], 'topk', 'oe_topk', 'topK (α = 0.5)'),
                                  (axes[1], 'alpha', 'oe_alpha', 'α (topK = 3)')):
        pts = sweeps[key]
        if pts:
            xs = [p[param] for p in pts]
            for metric, marker in (('mAP_interpolated', 'o'), ('mAP_non_interpolated', 's')):
                ax.errorbar(xs, [p[metric]['mean'] for p in pts], yerr=[p[metric]['std'] for p in pts],
                            marker=marker, capsize=3, label=_METRIC_LABELS[metric])
            ax.set_xticks(xs)
        if reference is not None:
            ax.axhline(reference['metrics']['mAP_interpolated']['mean'], color='gray', ls='--', lw=1,
                       label='CAR without OE (interp.)')
        low, high = ax.get_ylim()
        if high - low < _MIN_SWEEP_SPAN:  # do not blow sub-point (within-noise) changes up to the full height
            middle = (low + high) / 2
            ax.set_ylim(middle - _MIN_SWEEP_SPAN / 2, middle + _MIN_SWEEP_SPAN / 2)
        ax.set_xlabel(label)
        ax.set_ylabel('test mAP (%)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _overlays(ctx: _Context, model: nn.Module, count: int) -> List[str]:
    """Figure 5: SA maps of the top-3 categories (with the OE rectangle) on the first ``count`` test images."""
    from PIL import Image
    from srdl_timm.data.images import open_image
    from srdl_timm.explain import explain, render_panel, save_explanation
    dataset = ctx.spec.create(ctx.spec.test_split)
    count = min(count, len(dataset))
    if count == 0:
        return []
    transform = create_transform(ctx.data_config, is_training=False)
    paths = dataset.image_paths[:count]
    images = [open_image(p) for p in paths]
    results = explain(model, images, topk=3, erase=True, transform=transform)
    out_dir = ctx.out / 'figure5'
    written, panels = [], []
    for i, (image, result, path) in enumerate(zip(images, results, paths)):
        truth = dataset.labels(i)
        stem = f'{i:02d}_{Path(path).stem}'
        written += save_explanation(image, result, out_dir, stem, erase=True)
        panels.append((render_panel(image, result, erase=True), truth))
    width = max(p.width for p, _ in panels)
    caption_h = 18
    grid = Image.new('RGB', (width, sum(p.height + caption_h for p, _ in panels)), (255, 255, 255))
    from PIL import ImageDraw
    draw = ImageDraw.Draw(grid)
    y = 0
    for panel, truth in panels:
        draw.text((4, y + 3), 'ground truth: ' + ', '.join(truth), fill=(0, 0, 0))
        grid.paste(panel, (0, y + caption_h))
        y += panel.height + caption_h
    grid_path = ctx.out / 'figure5_attention.png'
    grid.save(grid_path, format='PNG')
    return [str(grid_path)] + written


# ----------------------------------------------------------------------------------------------------------------
# shipping weights
# ----------------------------------------------------------------------------------------------------------------
def _evaluation_protocol(ctx: _Context, split: str, num_images: int, evaluated: int, notes: str) -> Dict[str, Any]:
    dc = ctx.data_config
    info = ctx.spec.info
    dataset = info['name'] + (f" v{info['version']} (preset {info['preset']}, seed {info['seed']})"
                              if ctx.spec.source == 'fashion-scenes' else '')
    return dict(ap_definitions=AP_DEFINITIONS, units='percent', split=split, dataset=dataset,
                num_images=num_images, num_images_evaluated=evaluated, input_size=list(dc['input_size']),
                resize='squash to input_size (no centre crop)', interpolation=dc.get('interpolation'),
                mean=list(dc['mean']), std=list(dc['std']), threshold=0.5, top_k=3,
                checkpoint_reported='final (declared before training)', versions=software_versions(), notes=notes)


def export_weights(ctx: _Context, model: nn.Module, folder: Path, recipe: str, register: Optional[str] = None,
                   manifest: Optional[str] = None, replace: bool = False) -> Dict[str, Any]:
    """Write ``model`` as a timm Hub folder with float16 weights, evaluated from pixels on the test split.

    The reported metrics are those of the shipped float16 weights loaded into a float32 model (what
    ``timm.create_model(..., pretrained=True)`` gives), computed with :class:`~srdl_timm.metrics.MultiLabelMetrics`
    on every test image; the written folder is loaded back through timm and checked to reproduce those logits.
    With ``register``, :func:`srdl_timm.hub.register_weights` copies the weights into ``weights/`` and lists them in
    the manifest (``manifest``, default the repository's) under that tag.

    Returns:
        ``{'folder', 'sha256', 'size_bytes', 'metrics', 'protocol', 'entry'}`` (``entry``: the manifest entry or None).

    Raises:
        FileExistsError: ``folder`` holds other files.
    """
    import copy
    from srdl_timm.hub import WEIGHTS_FILENAME, register_weights, save_pretrained_dir, sha256_file
    spec = ctx.spec
    shipped = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        for tensor in list(shipped.parameters()) + list(shipped.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())  # exactly what loading the float16 file into float32 gives
    transform = create_transform(ctx.data_config, is_training=False)
    test = spec.create(spec.test_split, transform)
    loader = create_loader(test, 64, is_training=False, num_workers=ctx.cfg.workers)
    logits, targets = predict_logits(shipped, loader, torch.device('cpu'))
    metrics = metrics_from_logits(logits, targets, spec.label_names)
    protocol = _evaluation_protocol(
        ctx, spec.test_split, len(test), metrics['num_samples'],
        notes='float16 weights loaded into a float32 model, evaluated from the JPEG files (eval transform); '
              'training protocol in the recipe and benchmarks/RESULTS.md')
    report = {'metrics': {k: v for k, v in metrics.items() if k != 'per_class_AP'}, 'protocol': protocol,
              'label_names': spec.label_names, 'per_class_AP': metrics['per_class_AP']}
    half = copy.deepcopy(shipped).half()
    data_config = {k: ctx.data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std')}
    data_config.update(crop_pct=1.0, crop_mode='squash')
    description = ('SRDL (CAR + OE) trained on the offline Fashion Scenes benchmark by `srdl-benchmark`: a demo of '
                   'the method and of the package, not a general-purpose model.')
    folder.mkdir(parents=True, exist_ok=True)
    save_pretrained_dir(half, folder, metrics=report, dataset=protocol['dataset'], license='apache-2.0',
                        recipe=recipe, data_config=data_config, description=description)
    # the folder must load through timm and reproduce the evaluated logits
    reloaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    images = torch.stack([test[i][0] for i in range(min(8, len(test)))])
    with torch.inference_mode():
        if not torch.allclose(reloaded(images), shipped(images), rtol=1e-4, atol=1e-4):
            raise RuntimeError(f'{folder} does not reproduce the evaluated model when loaded through timm')
    entry = None
    if register:
        entry = register_weights(
            folder, tag=register, dataset=protocol['dataset'], recipe=recipe,
            label_names_source='srdl_timm.data.fashion_scenes.FASHION_SCENES_CLASSES (category-id order)',
            metrics=report, ship=True, manifest=manifest, replace=replace,
            notes='float16 weights; metrics on the Fashion Scenes test split, final checkpoint; '
                  'reproduce with the recipe command')
    weights = folder / WEIGHTS_FILENAME
    return {'folder': str(folder), 'sha256': sha256_file(weights), 'size_bytes': weights.stat().st_size,
            'metrics': report['metrics'], 'per_class_AP': metrics['per_class_AP'], 'protocol': protocol,
            'entry': entry}


# ----------------------------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------------------------
def _jobs(cfg: BenchmarkConfig) -> List[Tuple[str, int, int, float, str]]:
    jobs: List[Tuple[str, int, int, float, str]] = []
    seen = set()

    def add(row: str, seed: int, topk: int, alpha: float, purpose: str) -> None:
        key = (row, seed, topk, round(alpha, 6))
        if key not in seen:
            seen.add(key)
            jobs.append((row, seed, topk, alpha, purpose))

    for row in cfg.rows:
        for seed in cfg.seeds:
            add(row, seed, cfg.oe_topk, cfg.oe_alpha, 'table')
    if cfg.sweeps:
        for seed in cfg.sweep_seeds:
            for k in cfg.sweep_topk:
                add('car_oe', seed, int(k), DEFAULT_OE_ALPHA, 'sweep')
            for a in cfg.sweep_alpha:
                add('car_oe', seed, DEFAULT_OE_TOPK, float(a), 'sweep')
    return jobs


def _title(cfg: BenchmarkConfig, spec: DataSpec) -> str:
    if spec.source == 'fashion-scenes':
        return f"Fashion Scenes ({cfg.preset} preset), {cfg.mode} protocol"
    return f"{spec.info['name']}, paper recipe"


def _protocol_text(cfg: BenchmarkConfig, spec: DataSpec, ctx: _Context) -> str:
    size = ctx.data_config['input_size'][-1] if ctx.data_config else cfg.img_size
    n = spec.info.get('num_images', {})
    parts = [f"{spec.info['name']} at `{spec.root}`: train {n.get(spec.train_split, '?')} / "
             f"{'val ' + str(n.get(spec.val_split, '?')) + ' / ' if spec.val_split != spec.test_split else ''}"
             f"test {n.get(spec.test_split, '?')} images ({spec.test_split} split reported), {len(spec.label_names)} classes."]
    if cfg.trainer == 'frozen-trunk':
        parts.append(f'{cfg.model} with ImageNet backbone, {size} px, no augmentation; backbone frozen except its last '
                     f'{cfg.train_stages} unit(s), BatchNorm on running statistics, frozen part cached; AdamW lr '
                     f'{cfg.lr:g}, weight decay {cfg.weight_decay:g}, batch {cfg.batch_size}, {cfg.epochs} epochs '
                     f'(warm-up {cfg.warmup_epochs:g} epoch + cosine).')
    else:
        parts.append(f'{cfg.model}, srdl_timm.train.fit ' + ('(--recipe paper)' if cfg.mode == 'paper' else
                     f'(Adam lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, batch {cfg.batch_size}, '
                     f'{cfg.epochs} epochs, cosine, paper augmentation)') + f', {size} px.')
    parts.append(f'OE top-K {cfg.oe_topk}, α {cfg.oe_alpha:g}. Final checkpoint (declared in advance); '
                 f'mean ± sample std over seeds {list(cfg.seeds)}; metrics in percent.')
    return ' '.join(parts)


def _markdown(report: Mapping[str, Any]) -> str:
    cfg = report['config']
    lines = [f"# srdl-benchmark: {report['title']}", '', report['protocol'], '',
             f"## Ablations (Tables 5 and 6 style), test split, mean ± std over {len(cfg['seeds'])} seed(s)", '',
             format_table(report['table']), '', '## Table 2 style (threshold 0.5)', '',
             format_table(report['table'], TABLE2_METRICS, reference=None, switches=False)]
    if report.get('comparisons'):
        lines += ['', f"## Paired bootstrap over test images ({report['comparisons'][0]['interpolated']['resamples']} "
                      'resamples; mAP difference averaged over the paired seeds)', '',
                  _format_comparisons(report['comparisons'])]
    games = {k: v['pointing_game'] for k, v in report['table'].items() if v.get('pointing_game')}
    if games:
        first = next(iter(games.values()))
        lines += ['', f"## Spatial attention pointing game (test split, {first['num_pairs']} image-class pairs)", '',
                  'Hit: the grid cell where a present class\'s SA map peaks overlaps a ground-truth box of that class; '
                  'chance: a uniformly random cell. SA values: mean, and mean over maps of max - min.', '',
                  '| Method | hit rate (%) | chance (%) | SA mean | SA max - min |', '|---|---|---|---|---|']
        lines += [f"| {report['table'][k]['name']} | {_fmt_cell(g['hit_rate'])} | {g['chance']:.2f} | "
                  f"{g['sa_mean']:.3g} | {g['sa_peak_to_peak']:.3g} |" for k, g in games.items()]
    sweeps = report.get('sweeps')
    if sweeps and (sweeps['topk'] or sweeps['alpha']):
        lines += ['', '## Figure 6 style sweeps (CAR + OE, test mAP interp. / non-interp.)', '']
        for key, param, label in (('topk', 'oe_topk', 'topK (α = 0.5)'), ('alpha', 'oe_alpha', 'α (topK = 3)')):
            if sweeps[key]:
                lines += [f'| {label} | ' + ' | '.join(f'{p[param]:g}' for p in sweeps[key]) + ' |',
                          '|---|' + '---|' * len(sweeps[key]),
                          '| mAP (interp.) | ' + ' | '.join(_fmt_cell(p['mAP_interpolated']) for p in sweeps[key]) + ' |',
                          '| mAP (non-interp.) | ' + ' | '.join(_fmt_cell(p['mAP_non_interpolated'])
                                                                 for p in sweeps[key]) + ' |', '']
    t = report['timing']
    hw = report['hardware']
    lines += ['', '## Run', '',
              f"- wall time: {t['total_seconds']:.0f} s (data {t['data_seconds']:.0f} s, trunk cache "
              f"{t['trunk_cache_seconds']:.0f} s, {t['num_runs']} training runs {t['runs_seconds']:.0f} s, "
              f"figures {t['figures_seconds']:.0f} s)",
              f"- hardware: {hw['summary']}; load average at start {hw.get('load_average_1_5_15min')}, at end "
              f"{report['hardware_end'].get('load_average_1_5_15min')}",
              '- versions: ' + ', '.join(f'{k} {v}' for k, v in report['versions'].items()),
              f"- date: {report['date']}", f"- command: `{report['command']}`"]
    return '\n'.join(lines) + '\n'


def run_benchmark(config: BenchmarkConfig, replace: bool = False) -> Dict[str, Any]:
    """Run the whole benchmark described by ``config`` and write its outputs (see the module docstring).

    Args:
        config: the benchmark configuration (unresolved fields take the mode's defaults).
        replace: with ``config.register``, replace an existing manifest entry of that tag.

    Returns:
        The report written to ``results.json``.
    """
    t_start = time.perf_counter()
    cfg = config.resolved()
    device = torch.device(cfg.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    hardware = hardware_info(device)
    date = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    _logger.info('srdl-benchmark on %s: rows %s, seeds %s, trainer %s, output %s', hardware['summary'],
                 ', '.join(cfg.rows), list(cfg.seeds), cfg.trainer, out)
    load = hardware.get('load_average_1_5_15min')
    if device.type == 'cpu' and load and load[0] > 0.5 * (os.cpu_count() or 1):
        _logger.warning('the machine is busy (load average %.2f on %d CPUs): wall times will be longer than on an idle '
                        'machine, and %d torch threads competing for the cores can be several times slower than 1 '
                        '(--threads 1)', load[0], os.cpu_count() or 1, torch.get_num_threads())
    spec = prepare_data(cfg)
    t_data = time.perf_counter() - t_start
    ctx = _Context(cfg, spec, out, device)
    if cfg.trainer == 'frozen-trunk':
        _prepare_frozen_trunk(ctx)
    jobs = _jobs(cfg)
    figure_model_key = ('car_oe', cfg.seeds[0], cfg.oe_topk, cfg.oe_alpha)
    need_model = cfg.overlays > 0 or bool(cfg.export)
    report: Dict[str, Any] = {
        'title': _title(cfg, spec), 'status': 'running', 'date': date, 'command': cfg.command,
        'config': cfg.to_dict(), 'data': spec.info, 'label_names': spec.label_names, 'hardware': hardware,
        'versions': software_versions(), 'runs': []}
    runs: List[RunResult] = []
    t_runs = time.perf_counter()
    for i, (row, seed, topk, alpha, purpose) in enumerate(jobs, start=1):
        _logger.info('[%d/%d]', i, len(jobs))
        keep = need_model and (row, seed, topk, alpha) == figure_model_key
        runs.append(_execute(ctx, row, seed, topk, alpha, purpose, keep))
        report['runs'] = [r.to_dict() for r in runs]
        _write_json(out / 'results.json', report)
    runs_seconds = time.perf_counter() - t_runs
    if ctx.data_config is None:  # no run executed (cannot happen with validated rows); keep reports well-formed
        raise RuntimeError('no training run was executed')
    report['protocol'] = _protocol_text(cfg, spec, ctx)
    report['table'] = _table_rows(runs, cfg)
    report['comparisons'] = _comparisons(runs, out, cfg.bootstrap)
    report['sweeps'] = _sweep_summary(runs, cfg) if cfg.sweeps else None
    t_fig = time.perf_counter()
    figures = []
    table_png = out / 'table.png'
    _plot_table(report['table'], table_png, report['title'])
    figures.append(str(table_png))
    if cfg.sweeps:
        sweep_png = out / 'figure6_sweeps.png'
        _plot_sweeps(report['sweeps'], report['table'].get('car'), sweep_png, report['title'])
        figures.append(str(sweep_png))
    model = ctx.models.get(figure_model_key)
    if cfg.overlays > 0 and model is not None:
        figures += _overlays(ctx, model, cfg.overlays)
    report['figures'] = [os.path.relpath(f, out) for f in figures]
    figures_seconds = time.perf_counter() - t_fig
    if cfg.export and model is not None:
        recipe = cfg.command or 'srdl-benchmark (Python API)'
        report['export'] = export_weights(ctx, model, Path(cfg.export), recipe, cfg.register, cfg.manifest, replace)
    report['timing'] = {'total_seconds': time.perf_counter() - t_start, 'data_seconds': t_data,
                        'trunk_cache_seconds': ctx.cache_seconds, 'runs_seconds': runs_seconds,
                        'num_runs': len(runs), 'figures_seconds': figures_seconds}
    report['hardware_end'] = hardware_info(device)
    report['status'] = 'complete'
    markdown = _markdown(report)
    (out / 'results.md').write_text(markdown, encoding='utf-8')
    report['markdown'] = markdown
    _write_json(out / 'results.json', report)
    _logger.info('wrote %s and %s in %.1fs', out / 'results.json', out / 'results.md', report['timing']['total_seconds'])
    return report


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------
def _rows_arg(values: Sequence[str]) -> List[str]:
    return [v for item in values for v in item.split(',') if v]


def build_parser() -> argparse.ArgumentParser:
    """The ``srdl-benchmark`` argument parser."""
    p = argparse.ArgumentParser(
        prog='srdl-benchmark',
        description="The SRDL paper's ablations (Tables 5/6, Figures 5/6) on the embedded Fashion Scenes benchmark "
                    '(default) or on COCO / VOC.',
        epilog='Defaults per mode are in srdl_timm.benchmark.MODES; an explicit flag always wins.')
    g = p.add_argument_group('mode')
    m = g.add_mutually_exclusive_group()
    m.add_argument('--quick', dest='mode', action='store_const', const='quick',
                   help='(default) a 2-core CPU in < 10 min: quick preset, frozen-trunk trainer, 3 seeds')
    m.add_argument('--full', dest='mode', action='store_const', const='full',
                   help='a GPU: full preset (224 px), end-to-end training with srdl_timm.train.fit, 3 seeds')
    p.set_defaults(mode='quick')
    g = p.add_argument_group('data')
    g.add_argument('--data', default='fashion-scenes', choices=DATA_SOURCES,
                   help='fashion-scenes (embedded, built on first use), coco (2014 layout) or voc (VOC2007 devkit)')
    g.add_argument('--root', default=None, help='dataset folder (fashion-scenes: built there if missing; default '
                                                '$SRDL_BENCHMARK_DATA or ~/.cache/srdl_timm/benchmark/...)')
    g.add_argument('--preset', default=None, choices=('tiny', 'quick', 'full'), help='Fashion Scenes preset')
    g.add_argument('--dataset-seed', type=int, default=0, help='Fashion Scenes build seed')
    g.add_argument('--set', nargs='*', default=[], metavar='KEY=JSON', help='Fashion Scenes parameter overrides')
    g = p.add_argument_group('model')
    g.add_argument('--model', default='srdl_efficientnet_lite0', help='srdl_* architecture')
    g.add_argument('--backbone', default=None, help='override the architecture\'s timm backbone')
    g.add_argument('--no-pretrained-backbone', dest='pretrained_backbone', action='store_false',
                   help='random backbone init instead of ImageNet weights')
    g.add_argument('--label-embeddings', default='auto', help='auto (coco/voc arrays, else GloVe 6B-50d), none, or a '
                                                              'source/path understood by srdl_timm.embeddings')
    g = p.add_argument_group('protocol')
    g.add_argument('--trainer', default=None, choices=_TRAINERS, help='default: frozen-trunk (--quick), fit otherwise')
    g.add_argument('--rows', nargs='+', default=list(ROW_ORDER), metavar='ROW',
                   help=f'rows to train (comma or space separated): {", ".join(ROW_ORDER)}')
    g.add_argument('--seeds', type=int, nargs='+', default=None, help='training seeds (quick/full: 0 1 2; coco/voc: 0)')
    g.add_argument('--epochs', type=int, default=None)
    g.add_argument('-b', '--batch-size', type=int, default=None)
    g.add_argument('--lr', type=float, default=None)
    g.add_argument('--weight-decay', type=float, default=None)
    g.add_argument('--warmup-epochs', type=float, default=None)
    g.add_argument('--img-size', type=int, default=None, help='input size (quick: the images\' own 128 px)')
    g.add_argument('--train-stages', type=int, default=None,
                   help='frozen-trunk: trailing backbone units trained (EfficientNet units: stem, 7 block stages, '
                        'head conv)')
    g.add_argument('--oe-topk', type=int, default=DEFAULT_OE_TOPK, help='OE top-K of the table rows')
    g.add_argument('--oe-alpha', type=float, default=DEFAULT_OE_ALPHA, help='OE alpha of the table rows')
    g.add_argument('--amp', action='store_true', help='bfloat16 autocast in training (evaluation in float32)')
    g.add_argument('--val-every-epoch', action='store_true',
                   help='frozen-trunk: val mAP after every epoch in the history (fit always does it)')
    g = p.add_argument_group('figures')
    g.add_argument('--sweeps', action='store_true', help='also train the Figure 6 top-K and alpha sweeps of CAR + OE')
    g.add_argument('--sweep-topk', type=int, nargs='+', default=None)
    g.add_argument('--sweep-alpha', type=float, nargs='+', default=None)
    g.add_argument('--sweep-seeds', type=int, nargs='+', default=None)
    g.add_argument('--overlays', type=int, default=None, help='test images with Figure 5 attention overlays (0: none)')
    g.add_argument('--bootstrap', type=int, default=None, help='paired bootstrap resamples (0: point estimates only)')
    g = p.add_argument_group('weights')
    g.add_argument('--export', default=None, metavar='DIR',
                   help='write the CAR + OE model of the first seed as a timm Hub folder (float16)')
    g.add_argument('--register', default=None, metavar='TAG',
                   help='list the exported weights in weights/manifest.json as <model>.TAG (copies them into weights/)')
    g.add_argument('--manifest', default=None, help='manifest to edit (default: the repository\'s weights/manifest.json)')
    g.add_argument('--replace', action='store_true', help='replace an existing manifest entry of the same tag')
    g = p.add_argument_group('run')
    g.add_argument('--output', default=None, help='output folder (default benchmark-results/<data>-<mode>)')
    g.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    g.add_argument('-j', '--workers', type=int, default=None, help='data loader workers')
    g.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: all logical CPUs)')
    g.add_argument('--log-level', default='INFO')
    return p


def config_from_args(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> BenchmarkConfig:
    """A :class:`BenchmarkConfig` from parsed ``srdl-benchmark`` arguments."""
    overrides: Dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition('=')
        if not sep:
            raise ValueError(f'--set expects KEY=JSON, got {item!r}')
        try:
            overrides[key] = json.loads(value)
        except ValueError as e:
            raise ValueError(f'--set {key}: {value!r} is not valid JSON') from e
    mode = 'paper' if args.data in ('coco', 'voc') else args.mode
    output = args.output or os.path.join('benchmark-results', f'{args.data}-{mode}')
    command = 'srdl-benchmark ' + ' '.join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return BenchmarkConfig(
        data=args.data, root=args.root, preset=args.preset, dataset_seed=args.dataset_seed,
        dataset_overrides=overrides, model=args.model, backbone=args.backbone,
        pretrained_backbone=args.pretrained_backbone, label_embeddings=args.label_embeddings, mode=args.mode,
        trainer=args.trainer, rows=tuple(_rows_arg(args.rows)), seeds=args.seeds, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        img_size=args.img_size, train_stages=args.train_stages, oe_topk=args.oe_topk, oe_alpha=args.oe_alpha,
        amp=args.amp, val_every_epoch=args.val_every_epoch, sweeps=args.sweeps, sweep_topk=args.sweep_topk, sweep_alpha=args.sweep_alpha,
        sweep_seeds=args.sweep_seeds, overlays=args.overlays, bootstrap=args.bootstrap, export=args.export,
        register=args.register, manifest=args.manifest, output=output, device=args.device, workers=args.workers,
        threads=args.threads or torch.get_num_threads(), command=command.strip())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``srdl-benchmark``. Exit status: 0 done, 2 bad input, 1 failure."""
    t0 = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    args.threads = threads
    try:
        config = config_from_args(args, argv)
        report = run_benchmark(config, replace=args.replace)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f'srdl-benchmark: error: {e}', file=sys.stderr)
        return 2
    print(report['markdown'])
    out = Path(config.output)
    print(f'results: {out / "results.json"}, {out / "results.md"}; figures: '
          + ', '.join(str(out / f) for f in report['figures'][:3]) + (' ...' if len(report['figures']) > 3 else ''))
    if report.get('export'):
        e = report['export']
        print(f"exported weights: {e['folder']} (sha256 {e['sha256']}, {e['size_bytes'] / 1e6:.1f} MB), test mAP "
              f"{e['metrics']['mAP_interpolated']:.2f} (interpolated)"
              + (f"; registered as {config.model}.{config.register}" if e.get('entry') else ''))
    print(f'total wall time: {time.perf_counter() - t0:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
