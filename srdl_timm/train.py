"""``srdl-train``: train or fine-tune SRDL (or any timm classifier, as a multi-label baseline) on COCO, VOC or your data.

Single process::

    srdl-train --recipe paper --data coco --root /data/coco --output runs/coco_r101

Several GPUs / nodes (torchrun sets RANK/WORLD_SIZE; one process per GPU, DDP)::

    torchrun --nproc_per_node 8 -m srdl_timm.train --recipe paper --data coco --root /data/coco --output runs/x

Python API (what the console script wraps)::

    from srdl_timm.train import TrainConfig, fit
    result = fit(TrainConfig(recipe='paper', data='voc', root='/data/VOCdevkit', output='runs/voc'))
    result['final_metrics']['mAP_interpolated'], result['model_path']

``--recipe paper`` is §4.2 of the paper: Adam with betas (0.9, 0.999), lr 1e-5, weight decay 5e-4 (on every
parameter, as ``torch.optim.Adam(model.parameters(), weight_decay=5e-4)``), a global batch of 16, 20 epochs, lr ÷10
every 10 epochs, 448×448 input with the paper's augmentation (resize 512, random square crop of side
{512, 448, 384, 320, 256}, resize 448, horizontal flip), an ImageNet-pretrained backbone, OE with top-K 3 and
α 0.5. An explicit flag overrides the recipe's value; the resolved configuration is printed at start and written to
``train_config.json`` in the output directory and in every checkpoint.

Outputs (``--output DIR``): ``train_config.json``; ``log.csv`` / ``log.json`` (per-epoch losses, lr and validation
metrics); ``checkpoints/…`` + the ``last`` link (see :mod:`srdl_timm.checkpoint`); at the end ``model.safetensors``
(the reported weights — the final model, or its EMA when ``--report-checkpoint ema`` was declared up front) and
``summary.json``.
"""
import argparse
import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader
from tqdm import tqdm

import srdl_timm
from srdl_timm.checkpoint import (
    CheckpointError, LAST_LINK, atomic_write_bytes, atomic_write_json, capture_rng_state, find_last_checkpoint,
    load_checkpoint, remove_stale_tmp, restore_rng_state, save_checkpoint, save_safetensors_atomic,
    state_dict_for_save)
from srdl_timm.data import DATASETS, create_dataset, create_loader, create_transform
from srdl_timm.data.distributed import init_distributed_from_env, is_dist_initialized
from srdl_timm.distributed import EpochBatchSampler, SeededDataset, all_gather_objects, all_reduce_mean, barrier
from srdl_timm.loss import masked_bce_with_logits
from srdl_timm.validate import validate
from .utils import parse_model_kwargs

__all__ = [
    'TrainConfig', 'TrainState', 'RECIPES', 'TrainingError', 'NonFiniteLossError', 'resolve_config', 'fit',
    'setup_training', 'train_one_epoch', 'evaluate', 'build_parser', 'config_from_args', 'main',
]

_logger = logging.getLogger('srdl_timm.train')

_DEFAULT_SPLITS = {'coco': ('train', 'val'), 'voc': ('trainval', 'test'), 'csv': ('train', 'val'),
                   'coco-json': ('train', 'val')}
SCHEDULERS = ('step', 'multistep', 'cosine', 'poly', 'none')
SUMMARY_KEYS = ('mAP_interpolated', 'mAP_non_interpolated', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')

#: Values a recipe sets (a field left at None takes the recipe's value, else the default below).
RECIPES: Dict[str, Dict[str, Any]] = {
    'paper': dict(
        opt='adam', opt_betas=(0.9, 0.999), lr=1e-5, weight_decay=5e-4, wd_exclude_bias_norm=False,
        global_batch_size=16, epochs=20, sched='step', decay_epochs=10, decay_rate=0.1, warmup_epochs=0,
        img_size=448, train_resize=512, aug='paper', pretrained_backbone=True, oe=True, oe_topk=3, oe_alpha=0.5,
        label_embeddings='auto',
    ),
}

#: Defaults of the recipe-controlled fields when no recipe (or the recipe does not set them).
_DEFAULTS: Dict[str, Any] = dict(
    opt='adam', opt_betas=None, lr=1e-5, weight_decay=5e-4, wd_exclude_bias_norm=True, batch_size=16,
    global_batch_size=None, epochs=20, sched='step', decay_epochs=10, decay_rate=0.1, warmup_epochs=0, img_size=None,
    train_resize=None, aug='paper', pretrained_backbone=False, oe=None, oe_topk=3, oe_alpha=0.5,
    label_embeddings='auto',
)


class TrainingError(RuntimeError):
    """Training cannot go on (out of memory, empty data, incompatible resume, …); the message says what to do."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the weights were not updated with it."""

    def __init__(self, message: str, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


# ----------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything that defines a training run. Fields left at None are filled by :func:`resolve_config` from the
    recipe (``recipe='paper'``) or the defaults; explicitly set fields always win.

    Data: ``data`` (coco | voc | csv | coco-json), ``root``, ``train_split`` / ``val_split`` (default train/val,
    VOC trainval/test), ``voc_difficult`` (training policy for VOC difficult-only labels; evaluation always
    ignores them), ``ann_file`` / ``image_dir`` (csv/coco-json overrides for the train split), ``keep_empty``,
    ``on_corrupt``.

    Model: ``model`` (timm name; ``srdl_*`` or any timm classifier as a baseline), ``pretrained`` (SRDL weights),
    ``pretrained_backbone`` (ImageNet backbone), ``num_classes`` (checked against the dataset), ``label_embeddings``
    ('auto' | 'none' | 'coco' | 'voc' | 'glove-6b-50d' | path), ``use_gcn`` / ``use_ca`` / ``use_sa`` (Table 6
    ablations), ``oe`` / ``oe_topk`` / ``oe_alpha`` (§3.3), ``drop_rate``, ``model_kwargs``.

    Input: ``img_size``, ``train_resize`` (first resize of the paper's augmentation; default img_size·512/448),
    ``aug`` ('paper' or 'none' = eval transform for training).

    Optimisation: ``opt``, ``opt_betas``, ``opt_eps``, ``momentum``, ``lr``, ``weight_decay``,
    ``wd_exclude_bias_norm`` (timm's habit of no decay on biases/norms; the paper's recipe decays everything),
    ``batch_size`` (per process), ``global_batch_size`` (recipe: batch per process = global / (world × accum)),
    ``val_batch_size``, ``epochs``, ``sched`` (step | multistep | cosine | poly | none), ``decay_epochs``,
    ``decay_milestones``, ``decay_rate``, ``warmup_epochs``, ``warmup_lr``, ``min_lr``, ``sched_on_updates``,
    ``clip_grad``, ``grad_accum_steps``.

    Precision / speed: ``amp`` + ``amp_dtype`` (bfloat16 | float16; float16 uses a GradScaler), ``channels_last``,
    ``compile``, ``freeze_bn`` (BatchNorm uses its running statistics and does not update them: batch-size
    independent, exactly equivalent under DDP), ``sync_bn`` (CUDA DDP).

    EMA: ``model_ema``, ``model_ema_decay``, ``report_checkpoint`` ('final' | 'ema', declared before training:
    the reported metrics and ``model.safetensors`` come from that model only).

    Run: ``output``, ``resume`` (checkpoint dir, output dir, or 'auto' = ``output/last`` if present), ``seed``,
    ``workers``, ``device``, ``log_interval`` (optimizer steps), ``checkpoint_interval_steps`` (0 = only at epoch
    ends), ``keep_checkpoints``, ``max_steps`` (stop, with a checkpoint, after this many optimizer steps in total),
    ``progress``, ``deterministic``.
    """
    # data
    data: str = 'csv'
    root: str = ''
    train_split: Optional[str] = None
    val_split: Optional[str] = None
    voc_difficult: str = 'ignore'
    ann_file: Optional[str] = None
    image_dir: Optional[str] = None
    keep_empty: bool = False
    on_corrupt: str = 'error'
    # model
    model: str = 'srdl_resnet101'
    pretrained: bool = False
    pretrained_backbone: Optional[bool] = None
    num_classes: Optional[int] = None
    label_embeddings: Optional[str] = None
    use_gcn: bool = True
    use_ca: bool = True
    use_sa: bool = True
    oe: Optional[bool] = None
    oe_topk: Optional[int] = None
    oe_alpha: Optional[float] = None
    drop_rate: float = 0.0
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # input
    img_size: Optional[int] = None
    train_resize: Optional[int] = None
    aug: Optional[str] = None
    # optimisation
    recipe: Optional[str] = None
    opt: Optional[str] = None
    opt_betas: Optional[Tuple[float, float]] = None
    opt_eps: Optional[float] = None
    momentum: float = 0.9
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    wd_exclude_bias_norm: Optional[bool] = None
    batch_size: Optional[int] = None
    global_batch_size: Optional[int] = None
    val_batch_size: Optional[int] = None
    epochs: Optional[int] = None
    sched: Optional[str] = None
    decay_epochs: Optional[float] = None
    decay_milestones: Optional[List[int]] = None
    decay_rate: Optional[float] = None
    warmup_epochs: Optional[int] = None
    warmup_lr: float = 1e-7
    min_lr: float = 0.0
    sched_on_updates: bool = False
    clip_grad: Optional[float] = None
    grad_accum_steps: int = 1
    # precision / speed
    amp: bool = False
    amp_dtype: str = 'bfloat16'
    channels_last: bool = False
    compile: bool = False
    freeze_bn: bool = False
    sync_bn: bool = False
    # EMA
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    report_checkpoint: str = 'final'
    # run
    output: str = 'output/srdl-train'
    resume: Optional[str] = None
    seed: int = 42
    workers: int = 4
    device: Optional[str] = None
    log_interval: int = 50
    checkpoint_interval_steps: int = 0
    keep_checkpoints: int = 1
    max_steps: Optional[int] = None
    progress: bool = True
    deterministic: bool = False
    # filled by resolve_config
    world_size: int = 1
    explicit: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict of every field."""
        out = dataclasses.asdict(self)
        if out.get('opt_betas') is not None:
            out['opt_betas'] = list(out['opt_betas'])
        return out


def _is_srdl_model_name(name: str) -> bool:
    if name.startswith(('hf-hub:', 'local-dir:')):
        return True  # decided after creation
    try:
        return timm.models.model_entrypoint(name).__module__.startswith('srdl_timm')
    except RuntimeError:
        return False


def resolve_config(config: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Fill the recipe-controlled fields (explicit > recipe > default) and validate every value.

    Args:
        config: the requested configuration (not modified).
        world_size: number of training processes (the recipe's global batch is split over them).

    Returns:
        A new, fully resolved :class:`TrainConfig`.

    Raises:
        ValueError: an unknown choice or an out-of-range value, naming the flag.
    """
    cfg = dataclasses.replace(config, model_kwargs=dict(config.model_kwargs))
    if cfg.recipe is not None and cfg.recipe not in RECIPES:
        raise ValueError(f'unknown --recipe {cfg.recipe!r}; choose one of {sorted(RECIPES)}')
    recipe = RECIPES.get(cfg.recipe or '', {})
    explicit = []
    for key, default in _DEFAULTS.items():
        value = getattr(cfg, key)
        if value is not None:
            explicit.append(key)
            continue
        setattr(cfg, key, recipe.get(key, default))
    cfg.explicit = sorted(set(explicit) | set(config.explicit))
    cfg.world_size = int(world_size)
    is_srdl = _is_srdl_model_name(cfg.model)
    if cfg.oe is None:
        cfg.oe = is_srdl and cfg.use_sa
    if cfg.data not in DATASETS:
        raise ValueError(f'unknown --data {cfg.data!r}; choose one of {sorted(DATASETS)}')
    default_train, default_val = _DEFAULT_SPLITS[cfg.data]
    cfg.train_split = cfg.train_split or default_train
    cfg.val_split = cfg.val_split or default_val
    if 'batch_size' not in cfg.explicit and cfg.global_batch_size:
        per_step = world_size * cfg.grad_accum_steps
        if cfg.global_batch_size % per_step:
            raise ValueError(f'the recipe\'s global batch {cfg.global_batch_size} is not divisible by world size '
                             f'{world_size} x --grad-accum-steps {cfg.grad_accum_steps}; set --batch-size explicitly')
        cfg.batch_size = cfg.global_batch_size // per_step
    elif 'batch_size' in cfg.explicit:
        cfg.global_batch_size = None

    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    check(isinstance(cfg.lr, (int, float)) and 0.0 < cfg.lr <= 1.0 and math.isfinite(cfg.lr),
          f'--lr must be in (0, 1], got {cfg.lr}')
    check(isinstance(cfg.epochs, int) and 1 <= cfg.epochs <= 100_000, f'--epochs must be in [1, 100000], got {cfg.epochs}')
    check(isinstance(cfg.batch_size, int) and 1 <= cfg.batch_size <= 65_536,
          f'--batch-size must be in [1, 65536], got {cfg.batch_size}')
    check(cfg.val_batch_size is None or cfg.val_batch_size >= 1, f'--val-batch-size must be >= 1, got {cfg.val_batch_size}')
    check(0.0 <= cfg.weight_decay <= 1.0, f'--weight-decay must be in [0, 1], got {cfg.weight_decay}')
    check(isinstance(cfg.grad_accum_steps, int) and cfg.grad_accum_steps >= 1,
          f'--grad-accum-steps must be >= 1, got {cfg.grad_accum_steps}')
    check(cfg.workers >= 0, f'--workers must be >= 0, got {cfg.workers}')
    check(cfg.log_interval >= 1, f'--log-interval must be >= 1, got {cfg.log_interval}')
    check(cfg.checkpoint_interval_steps >= 0,
          f'--checkpoint-interval-steps must be >= 0, got {cfg.checkpoint_interval_steps}')
    check(cfg.keep_checkpoints >= 1, f'--keep-checkpoints must be >= 1, got {cfg.keep_checkpoints}')
    check(cfg.max_steps is None or cfg.max_steps >= 1, f'--max-steps must be >= 1, got {cfg.max_steps}')
    check(cfg.oe_topk >= 1, f'--oe-topk must be >= 1, got {cfg.oe_topk}')
    check(0.0 < cfg.oe_alpha < 1.0, f'--oe-alpha must be in (0, 1), got {cfg.oe_alpha}')
    check(cfg.amp_dtype in ('bfloat16', 'float16'), f'--amp-dtype must be bfloat16 or float16, got {cfg.amp_dtype}')
    check(cfg.report_checkpoint in ('final', 'ema'),
          f'--report-checkpoint must be final or ema, got {cfg.report_checkpoint}')
    check(cfg.report_checkpoint != 'ema' or cfg.model_ema, '--report-checkpoint ema needs --model-ema')
    check(0.0 < cfg.model_ema_decay < 1.0, f'--model-ema-decay must be in (0, 1), got {cfg.model_ema_decay}')
    check(cfg.aug in ('paper', 'none'), f'--aug must be paper or none, got {cfg.aug}')
    check(cfg.sched in SCHEDULERS, f'--sched must be one of {SCHEDULERS}, got {cfg.sched}')
    check(cfg.decay_rate is None or 0.0 < cfg.decay_rate <= 1.0, f'--decay-rate must be in (0, 1], got {cfg.decay_rate}')
    check(cfg.warmup_epochs >= 0, f'--warmup-epochs must be >= 0, got {cfg.warmup_epochs}')
    check(cfg.img_size is None or 32 <= cfg.img_size <= 4096, f'--img-size must be in [32, 4096], got {cfg.img_size}')
    check(cfg.train_resize is None or cfg.train_resize >= 32, f'--train-resize must be >= 32, got {cfg.train_resize}')
    check(cfg.clip_grad is None or cfg.clip_grad > 0, f'--clip-grad must be > 0, got {cfg.clip_grad}')
    check(cfg.num_classes is None or cfg.num_classes >= 1, f'--num-classes must be >= 1, got {cfg.num_classes}')
    check(not cfg.oe or cfg.use_sa, 'object erasing (--oe) needs the spatial attention: drop --no-sa or add --no-oe')
    check(not cfg.oe or is_srdl, f'--oe needs an SRDL model, {cfg.model!r} is not one: add --no-oe')
    check(0.0 <= cfg.drop_rate < 1.0, f'--drop must be in [0, 1), got {cfg.drop_rate}')
    check(bool(cfg.root), '--root (dataset folder) is required')
    check(cfg.voc_difficult in ('positive', 'negative', 'ignore'),
          f'--voc-difficult must be positive, negative or ignore, got {cfg.voc_difficult}')
    if cfg.opt_betas is not None:
        cfg.opt_betas = tuple(float(b) for b in cfg.opt_betas)
        check(len(cfg.opt_betas) == 2 and all(0.0 <= b < 1.0 for b in cfg.opt_betas),
              f'--opt-betas must be two values in [0, 1), got {cfg.opt_betas}')
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------------
def _resolve_label_embeddings(cfg: TrainConfig, label_names: List[str]) -> Any:
    spec = cfg.label_embeddings
    if spec in (None, 'none'):
        return None
    if spec != 'auto':
        return spec
    if cfg.data in ('coco', 'voc'):
        return cfg.data
    from srdl_timm.embeddings import resolve_label_embeddings
    try:
        return resolve_label_embeddings('glove-6b-50d', label_names)
    except (ValueError, ImportError, OSError) as e:
        _logger.warning('label embeddings: GloVe 6B-50d unavailable for these label names (%s); the label-graph nodes '
                        'start from a seeded random init. Pass --label-embeddings PATH to use your own word vectors.', e)
        return None


def _create_model(cfg: TrainConfig, num_classes: int, label_names: List[str]) -> nn.Module:
    kwargs: Dict[str, Any] = dict(cfg.model_kwargs)
    kwargs.setdefault('drop_rate', cfg.drop_rate)
    named_srdl = _is_srdl_model_name(cfg.model) and not cfg.model.startswith(('hf-hub:', 'local-dir:'))
    if named_srdl:
        kwargs.update(
            label_names=label_names, use_gcn=cfg.use_gcn, use_ca=cfg.use_ca, use_sa=cfg.use_sa,
            oe_topk=cfg.oe_topk, oe_alpha=cfg.oe_alpha, pretrained_backbone=bool(cfg.pretrained_backbone))
        if not cfg.pretrained or cfg.label_embeddings not in (None, 'auto'):
            kwargs['label_embeddings'] = _resolve_label_embeddings(cfg, label_names)
    # a plain timm baseline: its own ImageNet weights are the "pretrained backbone"
    pretrained = cfg.pretrained or (not named_srdl and bool(cfg.pretrained_backbone))
    model = timm.create_model(cfg.model, pretrained=pretrained, num_classes=num_classes, **kwargs)
    if getattr(model, 'num_classes', None) != num_classes:
        raise ValueError(f'model {cfg.model!r} has {getattr(model, "num_classes", "?")} outputs but the dataset has '
                         f'{num_classes} classes')
    if hasattr(model, 'set_object_erasing'):
        model.set_object_erasing(bool(cfg.oe))
    elif cfg.oe:
        raise ValueError(f'--oe needs an SRDL model; {cfg.model!r} is a {type(model).__name__}: add --no-oe')
    return model


def _model_args(model: nn.Module) -> Dict[str, Any]:
    """The architecture arguments needed to rebuild ``model`` for its saved weights (SRDL), for publishing."""
    args: Dict[str, Any] = {'num_classes': int(getattr(model, 'num_classes', 0))}
    if hasattr(model, 'set_object_erasing'):
        args.update(backbone=model.backbone_name, embed_dim=int(model.embed_dim), graph_layers=int(model.graph_layers),
                    use_gcn=bool(model.use_gcn), use_ca=bool(model.use_ca), use_sa=bool(model.use_sa),
                    global_pool=model.global_pool, label_names=list(model.label_names or []))
    return args


def _dataset_options(cfg: TrainConfig, training: bool) -> Dict[str, Any]:
    options: Dict[str, Any] = dict(keep_empty=cfg.keep_empty, on_corrupt=cfg.on_corrupt)
    if cfg.data == 'voc':
        options['difficult'] = cfg.voc_difficult if training else 'ignore'
    return options


def _set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _amp_dtype(cfg: TrainConfig) -> Optional[torch.dtype]:
    return getattr(torch, cfg.amp_dtype) if cfg.amp else None


def _is_oom(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error or the CPU allocator's failure to allocate."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ('out of memory' in text or "can't allocate memory" in text)


def _oom_message(cfg: TrainConfig, device: torch.device, where: str) -> str:
    b, accum = cfg.batch_size, cfg.grad_accum_steps
    smaller = max(1, b // 2)
    tips = [f'a smaller --batch-size (e.g. --batch-size {smaller} --grad-accum-steps {accum * b // smaller} keeps the '
            f'global batch of {b * accum * cfg.world_size})']
    if not cfg.amp:
        tips.append('--amp (bfloat16 activations; the head and loss stay float32)')
    if not cfg.channels_last and device.type == 'cuda':
        tips.append('--channels-last')
    tips.append('a smaller --img-size')
    return (f'out of {device.type} memory during {where} (batch size {b} per process, {cfg.img_size or "model default"}'
            f' px). Try ' + ', '.join(tips) + '.')


@dataclass
class TrainState:
    """The live objects of a run (what :func:`train_one_epoch` needs).

    Attributes:
        config: resolved configuration.
        model: the plain model (weights that get saved).
        train_model: what the forward pass runs through (DDP and/or torch.compile wrappers of ``model``).
        optimizer, scheduler, scaler, ema: as created by :func:`setup_training` (scheduler/scaler/ema may be None).
        device, rank, world_size: placement.
        global_step: optimizer updates done so far.
        micro_batches_per_epoch / updates_per_epoch: epoch geometry (per rank).
        history: one dict per finished epoch.
        last_checkpoint: newest checkpoint directory written (rank 0).
        label_names: dataset class names.
    """
    config: TrainConfig
    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[Any]
    ema: Optional[Any]
    device: torch.device
    rank: int
    world_size: int
    micro_batches_per_epoch: int
    updates_per_epoch: int
    label_names: List[str]
    global_step: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Optional[str] = None
    epoch_loss_sums: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    epoch_micro_batches: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 (writes files, shows progress)."""
        return self.rank == 0

    def current_lr(self) -> float:
        """Learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]['lr'])

    def training_state(self, epoch: int, batch_in_epoch: int, rng: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The resumable state (``weights_only``-loadable) at the given position."""
        sched_state = None
        if self.scheduler is not None:
            sched_state = {k: v for k, v in self.scheduler.state_dict().items()
                           if isinstance(v, (int, float, str, bool, type(None), list, tuple))}
        return {
            'epoch': int(epoch), 'batch_in_epoch': int(batch_in_epoch), 'global_step': int(self.global_step),
            'optimizer': self.optimizer.state_dict(), 'scheduler': sched_state,
            'scaler': self.scaler.state_dict() if self.scaler is not None else None,
            'rng': rng, 'history': self.history, 'world_size': self.world_size,
            'epoch_loss_sums': [float(v) for v in self.epoch_loss_sums],
            'epoch_micro_batches': int(self.epoch_micro_batches),
            'batch_size': self.config.batch_size, 'grad_accum_steps': self.config.grad_accum_steps,
            'micro_batches_per_epoch': self.micro_batches_per_epoch, 'seed': self.config.seed,
            'sampler': {'epoch': int(epoch), 'start_batch': int(batch_in_epoch), 'seed': self.config.seed},
            'versions': {'srdl_timm': str(srdl_timm.__version__), 'timm': str(timm.__version__),
                         'torch': str(torch.__version__)},
        }

    def save(self, epoch: int, batch_in_epoch: int) -> Optional[str]:
        """Write a checkpoint at (``epoch``, ``batch_in_epoch``) — a collective under DDP; returns the path on rank 0."""
        rng = all_gather_objects(capture_rng_state())
        path = None
        if self.is_main:
            path = save_checkpoint(
                self.config.output, state_dict_for_save(self.model), self.training_state(epoch, batch_in_epoch, rng),
                self.config.to_dict(), ema_state=state_dict_for_save(self.ema.module) if self.ema is not None else None,
                keep_last=self.config.keep_checkpoints)
            self.last_checkpoint = path
        barrier()
        return path


def setup_training(cfg: TrainConfig, device: torch.device, rank: int, world_size: int
                   ) -> Tuple[TrainState, Any, Any, Dict[str, Any]]:
    """Datasets, model, optimizer, scheduler, AMP scaler and EMA for a resolved config.

    Returns:
        ``(state, train_dataset, val_loader, data_config)``.
    """
    train_ds = create_dataset(cfg.data, cfg.root, cfg.train_split, **_dataset_options(cfg, True),
                              **{k: v for k, v in (('ann_file', cfg.ann_file), ('image_dir', cfg.image_dir)) if v})
    val_ds = create_dataset(cfg.data, cfg.root, cfg.val_split, **_dataset_options(cfg, False))
    if train_ds.label_names != val_ds.label_names:
        raise ValueError(f'the {cfg.train_split!r} and {cfg.val_split!r} splits have different classes '
                         f'({train_ds.num_classes} vs {val_ds.num_classes})')
    num_classes = train_ds.num_classes
    if cfg.num_classes is not None and cfg.num_classes != num_classes:
        raise ValueError(f'--num-classes {cfg.num_classes} does not match the dataset: {cfg.data} at {cfg.root} has '
                         f'{num_classes} classes ({", ".join(train_ds.label_names[:5])}'
                         f'{", ..." if num_classes > 5 else ""}); drop --num-classes or fix the data')
    cfg.num_classes = num_classes
    if cfg.oe and cfg.oe_topk > num_classes:
        _logger.warning('--oe-topk %d exceeds the %d classes; OE erases all of them', cfg.oe_topk, num_classes)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2 ** 32)
    model = _create_model(cfg, num_classes, train_ds.label_names)
    data_config = resolve_data_config({}, model=model)
    size = cfg.img_size or int(data_config['input_size'][-1])
    cfg.img_size = size
    data_config['input_size'] = (3, size, size)
    if cfg.aug == 'paper':
        resize = cfg.train_resize or int(round(size * 512 / 448))
        cfg.train_resize = resize
        train_ds.transform = create_transform(data_config, is_training=True, resize=resize, size=size)
    else:
        train_ds.transform = create_transform(data_config, is_training=False, size=size)
    val_ds.transform = create_transform(data_config, is_training=False, size=size)

    global_batch = cfg.batch_size * world_size
    micro = len(train_ds) // global_batch
    micro -= micro % cfg.grad_accum_steps
    if micro == 0:
        raise ValueError(f'the training split has {len(train_ds)} images, fewer than one optimizer step needs '
                         f'(batch size {cfg.batch_size} x {world_size} process(es) x {cfg.grad_accum_steps} '
                         f'accumulation steps = {global_batch * cfg.grad_accum_steps}); lower --batch-size')
    updates_per_epoch = micro // cfg.grad_accum_steps

    model.to(device)
    if cfg.sync_bn and world_size > 1:
        if device.type != 'cuda':
            raise ValueError('--sync-bn needs CUDA (torch.nn.SyncBatchNorm); on CPU use --freeze-bn')
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    optimizer = create_optimizer_v2(
        model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
        filter_bias_and_bn=bool(cfg.wd_exclude_bias_norm),
        **{k: v for k, v in (('betas', cfg.opt_betas), ('eps', cfg.opt_eps)) if v is not None})
    scheduler = None
    if cfg.sched != 'none':
        sched_kwargs: Dict[str, Any] = dict(
            sched=cfg.sched, num_epochs=cfg.epochs, decay_rate=cfg.decay_rate, min_lr=cfg.min_lr,
            warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs, step_on_epochs=not cfg.sched_on_updates,
            updates_per_epoch=updates_per_epoch)
        if cfg.decay_epochs is not None:
            sched_kwargs['decay_epochs'] = cfg.decay_epochs
        if cfg.decay_milestones:
            sched_kwargs['decay_milestones'] = list(cfg.decay_milestones)
        scheduler, _ = create_scheduler_v2(optimizer, **sched_kwargs)
    scaler = None
    if cfg.amp and cfg.amp_dtype == 'float16':
        scaler = torch.amp.GradScaler(device.type)
    ema = None
    if cfg.model_ema:
        ema = ModelEmaV3(model, decay=cfg.model_ema_decay)

    state = TrainState(
        config=cfg, model=model, train_model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema,
        device=device, rank=rank, world_size=world_size, micro_batches_per_epoch=micro,
        updates_per_epoch=updates_per_epoch, label_names=list(train_ds.label_names))
    val_loader = create_loader(val_ds, cfg.val_batch_size or cfg.batch_size, is_training=False,
                               num_workers=cfg.workers, distributed=world_size > 1,
                               pin_memory=device.type == 'cuda')
    return state, train_ds, val_loader, data_config


def _wrap_for_training(state: TrainState) -> None:
    cfg = state.config
    train_model: nn.Module = state.model
    if state.world_size > 1:
        device_ids = [state.device.index] if state.device.type == 'cuda' else None
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=device_ids)
    if cfg.compile:
        train_model = torch.compile(train_model)
    state.train_model = train_model


def _forward_loss(state: TrainState, images: torch.Tensor, targets: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(L, L_ori, L_era)`` of eqs. 11-13 (``L_era`` None without OE), computed in float32 from the logits."""
    amp_dtype = _amp_dtype(state.config)
    ctx = torch.autocast(device_type=state.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with ctx:
        output = state.train_model(images)
    if isinstance(output, (tuple, list)):
        logits, erased = output
        loss_ori = masked_bce_with_logits(logits, targets)
        loss_era = masked_bce_with_logits(erased, targets)
        return loss_ori + loss_era, loss_ori, loss_era
    loss = masked_bce_with_logits(output, targets)
    return loss, loss, None


def _make_train_loader(state: TrainState, dataset: Any, epoch: int, start_batch: int) -> DataLoader:
    cfg = state.config
    sampler = EpochBatchSampler(len(dataset), cfg.batch_size, cfg.seed, epoch, rank=state.rank,
                                world_size=state.world_size, num_batches=state.micro_batches_per_epoch,
                                start_batch=start_batch)
    return DataLoader(SeededDataset(dataset), batch_sampler=sampler, num_workers=cfg.workers,
                      pin_memory=state.device.type == 'cuda', generator=torch.Generator().manual_seed(cfg.seed))


def train_one_epoch(state: TrainState, loader: DataLoader, epoch: int, start_batch: int = 0) -> Dict[str, Any]:
    """Train over ``loader`` (this rank's micro-batches of ``epoch`` from ``start_batch`` on).

    Per micro-batch: forward (autocast when AMP), ``L = L_ori + L_era`` in float32, a global finiteness check
    (NaN/inf → :class:`NonFiniteLossError` before any weight changes), backward of ``L / grad_accum_steps`` (DDP
    gradient sync only on the last micro-batch of a step). Per optimizer step: optional unscale + clipping, step,
    EMA update, per-update lr schedule, logging, checkpoints every ``checkpoint_interval_steps``, and the
    ``max_steps`` stop (with a checkpoint).

    Returns:
        ``{'loss', 'loss_ori', 'loss_era', 'lr', 'steps', 'stopped', 'time_s'}`` (losses: mean over the epoch's
        micro-batches and ranks).
    """
    cfg = state.config
    accum = cfg.grad_accum_steps
    state.train_model.train()
    if cfg.freeze_bn:
        _set_bn_eval(state.model)
    ddp = state.world_size > 1
    if start_batch == 0:  # else: the partial sums of the interrupted epoch, restored from the checkpoint
        state.epoch_loss_sums, state.epoch_micro_batches = [0.0, 0.0, 0.0], 0
    sums = torch.tensor(state.epoch_loss_sums, dtype=torch.float64)
    count = state.epoch_micro_batches
    micro_this_call = 0
    steps = 0
    stopped = False
    start = time.time()
    total = state.micro_batches_per_epoch
    bar = tqdm(total=total, initial=start_batch, desc=f'train {epoch + 1}/{cfg.epochs}', dynamic_ncols=True,
               disable=not (cfg.progress and state.is_main), leave=False)
    state.optimizer.zero_grad(set_to_none=True)
    batch_index = start_batch
    for batch_index, (images, targets) in enumerate(loader, start=start_batch):
        images = images.to(state.device, non_blocking=True)
        targets = targets.to(state.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        last_micro = (batch_index + 1) % accum == 0
        sync = contextlib.nullcontext()
        if ddp and not last_micro and hasattr(state.train_model, 'no_sync'):
            sync = state.train_model.no_sync()
        with sync:
            loss, loss_ori, loss_era = _forward_loss(state, images, targets)
            values = torch.stack([loss.detach(), loss_ori.detach(),
                                  loss_era.detach() if loss_era is not None else torch.zeros_like(loss)]).float()
            values = all_reduce_mean(values).cpu()
            if not torch.isfinite(values).all():
                raise NonFiniteLossError(
                    f'the loss became {values[0].item()} at epoch {epoch + 1} (1-based), optimizer step '
                    f'{state.global_step + 1}, micro-batch {batch_index + 1} of the epoch; training stopped before '
                    f'updating the weights. Last good checkpoint: {state.last_checkpoint or "none written yet"}. '
                    'Try a lower --lr, --clip-grad, or --amp-dtype bfloat16 instead of float16.',
                    epoch=epoch, step=state.global_step + 1)
            scaled = loss / accum
            if state.scaler is not None:
                state.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        sums += values.double()
        count += 1
        micro_this_call += 1
        state.epoch_loss_sums, state.epoch_micro_batches = sums.tolist(), count
        bar.update(1)
        if not last_micro:
            continue
        if cfg.clip_grad is not None:
            if state.scaler is not None:
                state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.clip_grad)
        if state.scaler is not None:
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        steps += 1
        if state.ema is not None:
            state.ema.update(state.model, step=state.global_step)
        if state.scheduler is not None and cfg.sched_on_updates:
            state.scheduler.step_update(num_updates=state.global_step)
        if state.global_step % cfg.log_interval == 0 and state.is_main:
            bar.set_postfix(loss=f'{sums[0].item() / count:.4f}', lr=f'{state.current_lr():.2e}')
            _logger.info('epoch %d step %d (%d/%d): loss %.5f (ori %.5f, era %.5f) lr %.3e', epoch + 1,
                         state.global_step, batch_index + 1, total, values[0].item(), values[1].item(),
                         values[2].item(), state.current_lr())
        done = batch_index + 1
        if cfg.max_steps is not None and state.global_step >= cfg.max_steps:
            if done < total:
                state.save(epoch, done)
            stopped = True
            break
        if cfg.checkpoint_interval_steps and state.global_step % cfg.checkpoint_interval_steps == 0 and done < total:
            state.save(epoch, done)
    bar.close()
    n = max(count, 1)
    return {
        'loss': sums[0].item() / n, 'loss_ori': sums[1].item() / n,
        'loss_era': sums[2].item() / n if cfg.oe else None,
        'lr': state.current_lr(), 'steps': steps, 'stopped': stopped, 'time_s': time.time() - start,
        'micro_batches': micro_this_call,
    }


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False, label_names: Optional[Sequence[str]] = None,
             progress: bool = True) -> Dict[str, Any]:
    """Validation metrics of ``model`` on ``loader`` (:func:`srdl_timm.validate.validate`, OE off in eval mode).

    Returns:
        Scalars in percent: ``mAP_interpolated``, ``mAP_non_interpolated``, CP/CR/CF1/OP/OR/OF1 (threshold 0.5) and
        their top-3 variants, counts; per-class APs as lists under ``AP_interpolated`` / ``AP_non_interpolated``.
        Under DDP every rank must call it (the logits are gathered without padding).
    """
    result = validate(model, loader, device, amp_dtype=amp_dtype, channels_last=channels_last, progress=progress,
                      label_names=label_names)
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}


# ----------------------------------------------------------------------------------------------------------------
# logs
# ----------------------------------------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    """NumPy scalars/arrays and str subclasses as plain Python values (JSON- and weights_only-friendly)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    return obj


def _write_logs(output: str, history: List[Dict[str, Any]]) -> None:
    atomic_write_json(os.path.join(output, 'log.json'), history)
    keys: List[str] = []
    for row in history:
        for k in row:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction='ignore')
    writer.writeheader()
    for row in history:
        writer.writerow({k: ('' if v is None else v) for k, v in row.items()})
    atomic_write_bytes(os.path.join(output, 'log.csv'), buf.getvalue().encode('utf-8'))


def format_summary(history: List[Dict[str, Any]]) -> str:
    """A plain-text table: one row per epoch with loss, lr and the validation metrics (percent)."""
    heads = ['epoch', 'step', 'lr', 'loss', 'L_ori', 'L_era', 'mAP(interp)', 'mAP(non-interp)', 'CF1', 'OF1', 'time']
    rows = []
    for h in history:
        def f(key: str, fmt: str) -> str:
            v = h.get(key)
            return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)
        rows.append([str(h['epoch']), str(h['global_step']), f('lr', '.2e'), f('train_loss', '.4f'),
                     f('train_loss_ori', '.4f'), f('train_loss_era', '.4f'), f('val_mAP_interpolated', '.2f'),
                     f('val_mAP_non_interpolated', '.2f'), f('val_CF1', '.2f'), f('val_OF1', '.2f'),
                     f('epoch_time_s', '.1f')])
    widths = [max(len(heads[i]), *(len(r[i]) for r in rows)) if rows else len(heads[i]) for i in range(len(heads))]
    line = ' | '.join(h.rjust(w) for h, w in zip(heads, widths))
    sep = '-+-'.join('-' * w for w in widths)
    return '\n'.join([line, sep] + [' | '.join(c.rjust(w) for c, w in zip(r, widths)) for r in rows])


# ----------------------------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------------------------
def _resume_path(cfg: TrainConfig) -> Optional[str]:
    if not cfg.resume:
        return None
    if cfg.resume == 'auto':
        last = find_last_checkpoint(cfg.output) if os.path.isdir(cfg.output) else None
        if last is None:
            _logger.info('--resume auto: no checkpoint in %s, starting a new run', cfg.output)
        return last
    return cfg.resume


_RESUME_MUST_MATCH = ('model', 'data', 'num_classes', 'use_gcn', 'use_ca', 'use_sa', 'model_ema')
_RESUME_SHOULD_MATCH = ('seed', 'opt', 'lr', 'weight_decay', 'sched', 'epochs', 'decay_epochs', 'decay_rate', 'oe',
                        'oe_topk', 'oe_alpha', 'img_size', 'aug', 'amp', 'amp_dtype', 'freeze_bn', 'report_checkpoint')


def _apply_resume(state: TrainState, path: str) -> Tuple[int, int]:
    cfg = state.config
    ckpt = load_checkpoint(path)
    saved = ckpt.config
    for key in _RESUME_MUST_MATCH:
        if key in saved and saved[key] != getattr(cfg, key):
            raise TrainingError(f'cannot resume {ckpt.path}: it was trained with {key}={saved[key]!r}, this run has '
                                f'{key}={getattr(cfg, key)!r}')
    diffs = [f'{k}: {saved[k]!r} -> {getattr(cfg, k)!r}' for k in _RESUME_SHOULD_MATCH
             if k in saved and saved[k] != getattr(cfg, k)]
    if diffs:
        _logger.warning('resuming %s with a changed configuration (the run will not match an uninterrupted one): %s',
                        ckpt.path, '; '.join(diffs))
    saved_global = ckpt.state['batch_size'] * ckpt.state['world_size'] * ckpt.state['grad_accum_steps']
    global_batch = cfg.batch_size * state.world_size * cfg.grad_accum_steps
    batch_in_epoch = ckpt.batch_in_epoch
    if batch_in_epoch and (saved_global != global_batch or ckpt.state['batch_size'] * ckpt.state['world_size']
                           != cfg.batch_size * state.world_size):
        raise TrainingError(f'cannot resume mid-epoch from {ckpt.path}: it used batch {ckpt.state["batch_size"]} x '
                            f'{ckpt.state["world_size"]} process(es) x {ckpt.state["grad_accum_steps"]} accumulation, '
                            f'this run {cfg.batch_size} x {state.world_size} x {cfg.grad_accum_steps}; resume from an '
                            'epoch-end checkpoint or use the same geometry')
    if saved_global != global_batch:
        _logger.warning('global batch changed on resume: %d -> %d', saved_global, global_batch)
    state.model.load_state_dict(ckpt.model, strict=True)
    if state.ema is not None:
        if ckpt.ema is None:
            raise TrainingError(f'{ckpt.path} has no EMA weights but this run uses --model-ema')
        state.ema.module.load_state_dict(ckpt.ema, strict=True)
    state.optimizer.load_state_dict(ckpt.state['optimizer'])
    if state.scaler is not None and ckpt.state.get('scaler'):
        state.scaler.load_state_dict(ckpt.state['scaler'])
    state.global_step = ckpt.global_step
    state.history = list(ckpt.state.get('history') or [])
    if batch_in_epoch:
        state.epoch_loss_sums = [float(v) for v in ckpt.state.get('epoch_loss_sums', [0.0, 0.0, 0.0])]
        state.epoch_micro_batches = int(ckpt.state.get('epoch_micro_batches', 0))
    rng = ckpt.state['rng']
    if ckpt.state['world_size'] == state.world_size:
        restore_rng_state(rng[state.rank])
    else:
        _logger.warning('world size changed (%d -> %d): RNG states not restored exactly', ckpt.state['world_size'],
                        state.world_size)
        restore_rng_state(rng[0])
    state.last_checkpoint = ckpt.path
    _logger.info('resuming at epoch %d, micro-batch %d, optimizer step %d', ckpt.epoch + 1, batch_in_epoch,
                 state.global_step)
    return ckpt.epoch, batch_in_epoch


def fit(config: TrainConfig) -> Dict[str, Any]:
    """Run (or resume) a training run end to end.

    Initialises torch.distributed from torchrun's environment when ``WORLD_SIZE`` > 1, trains with per-epoch
    validation, writes logs and checkpoints, and finally the reported weights (``output/model.safetensors``).

    Returns:
        ``{'final_metrics', 'history', 'model_path', 'last_checkpoint', 'output', 'reported', 'global_step',
        'epochs_completed', 'stopped_early', 'config'}``.

    Raises:
        ValueError: bad configuration or data (before anything is trained).
        NonFiniteLossError: NaN/inf loss (the last checkpoint is left intact).
        TrainingError: out of memory (with advice) and other unrecoverable conditions.
        CheckpointError: ``resume`` points at a missing/incomplete/corrupt checkpoint.
    """
    device_name = config.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    device, rank, world_size = init_distributed_from_env(device_name)
    cfg = resolve_config(config, world_size)
    cfg.device = str(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    is_main = rank == 0
    if is_main:
        os.makedirs(cfg.output, exist_ok=True)
        remove_stale_tmp(cfg.output)
    barrier()

    state, train_ds, val_loader, data_config = setup_training(cfg, device, rank, world_size)
    start_epoch, start_batch = 0, 0
    resume_path = _resume_path(cfg)
    if resume_path:
        start_epoch, start_batch = _apply_resume(state, resume_path)
    _wrap_for_training(state)
    if is_main:
        resolved = cfg.to_dict()
        resolved['data_config'] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()}
        resolved['label_names'] = state.label_names
        resolved['model_args'] = _model_args(state.model)
        print('srdl-train configuration:\n' + json.dumps(resolved, indent=2, default=str), flush=True)
        atomic_write_json(os.path.join(cfg.output, 'train_config.json'), resolved)
    report_model = state.ema.module if cfg.report_checkpoint == 'ema' else state.model
    amp_dtype = _amp_dtype(cfg)
    stopped = False
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if cfg.max_steps is not None and state.global_step >= cfg.max_steps:
                stopped = True
                _logger.info('--max-steps %d already reached (step %d); nothing to train', cfg.max_steps,
                             state.global_step)
                break
            if state.scheduler is not None:
                if cfg.sched_on_updates:
                    state.scheduler.step_update(num_updates=state.global_step)
                else:
                    state.scheduler.step(epoch)
            first = start_batch if epoch == start_epoch else 0
            loader = _make_train_loader(state, train_ds, epoch, first)
            stats = train_one_epoch(state, loader, epoch, start_batch=first)
            if stats['stopped'] and (first + stats['micro_batches']) < state.micro_batches_per_epoch:
                stopped = True
                _logger.info('stopped after %d optimizer steps (--max-steps); resume with --resume %s',
                             state.global_step, os.path.join(cfg.output, LAST_LINK))
                break
            metrics = evaluate(report_model, val_loader, device, amp_dtype=amp_dtype,
                               channels_last=cfg.channels_last, label_names=state.label_names,
                               progress=cfg.progress)
            row: Dict[str, Any] = {
                'epoch': epoch + 1, 'global_step': state.global_step, 'lr': stats['lr'],
                'train_loss': stats['loss'], 'train_loss_ori': stats['loss_ori'], 'train_loss_era': stats['loss_era'],
                'epoch_time_s': stats['time_s'], 'resumed_mid_epoch': bool(first), 'evaluated': cfg.report_checkpoint,
            }
            row.update({f'val_{k}': metrics[k] for k in SUMMARY_KEYS})
            row.update({f'val_{k}_top3': metrics.get(f'{k}_top3') for k in ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')})
            row['val_num_samples'] = metrics.get('num_samples')
            state.history.append(_plain(row))
            state.train_model.train()
            if cfg.freeze_bn:
                _set_bn_eval(state.model)
            if is_main:
                _logger.info('epoch %d: loss %.4f, mAP %.2f (interpolated) / %.2f (non-interpolated), CF1 %.2f, '
                             'OF1 %.2f', epoch + 1, stats['loss'], metrics['mAP_interpolated'],
                             metrics['mAP_non_interpolated'], metrics['CF1'], metrics['OF1'])
                _write_logs(cfg.output, state.history)
            state.save(epoch + 1, 0)
            if stats['stopped']:
                stopped = epoch + 1 < cfg.epochs
                break
    except NonFiniteLossError:
        raise
    except Exception as e:
        if _is_oom(e):
            raise TrainingError(_oom_message(cfg, device, f'epoch {epoch + 1}')) from e
        raise

    result: Dict[str, Any] = {
        'history': state.history, 'output': os.path.abspath(cfg.output), 'reported': cfg.report_checkpoint,
        'global_step': state.global_step, 'epochs_completed': len(state.history), 'stopped_early': stopped,
        'last_checkpoint': state.last_checkpoint, 'config': cfg.to_dict(), 'model_path': None,
        'final_metrics': {k[4:]: v for k, v in state.history[-1].items() if k.startswith('val_')}
        if state.history else None,
    }
    if not stopped and is_main:
        model_path = os.path.join(cfg.output, 'model.safetensors')
        save_safetensors_atomic(state_dict_for_save(report_model), model_path,
                                metadata={'format': 'pt', 'reported': cfg.report_checkpoint,
                                          'epochs': str(len(state.history)), 'model': cfg.model})
        result['model_path'] = os.path.abspath(model_path)
        atomic_write_json(os.path.join(cfg.output, 'summary.json'), result)
        print(format_summary(state.history), flush=True)
        if result['final_metrics']:
            fm = result['final_metrics']
            print(f'reported ({cfg.report_checkpoint}) weights: {model_path}\n'
                  f'final mAP {fm["mAP_interpolated"]:.2f} (interpolated) / {fm["mAP_non_interpolated"]:.2f} '
                  f'(non-interpolated), CF1 {fm["CF1"]:.2f}, OF1 {fm["OF1"]:.2f}', flush=True)
    barrier()
    return result


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The ``srdl-train`` argument parser (timm's flag names where the concept exists)."""
    p = argparse.ArgumentParser(
        prog='srdl-train', description='Train or fine-tune SRDL (multi-label) on COCO, VOC or your own data.',
        epilog='Recipe-controlled flags default to the recipe (--recipe paper) or to the listed default; an explicit '
               'flag always wins.')
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group('recipe')
    g.add_argument('--recipe', default=None, choices=sorted(RECIPES),
                   help='paper: §4.2 (Adam 0.9/0.999, lr 1e-5, wd 5e-4, global batch 16, 20 epochs, step /10 every 10, '
                        '448 px + paper augmentation, ImageNet backbone, OE top-3 alpha 0.5)')
    g = p.add_argument_group('data')
    g.add_argument('--data', required=True, choices=sorted(DATASETS), help='dataset format')
    g.add_argument('--root', required=True, help='dataset root folder')
    g.add_argument('--train-split', default=None, help='default: train (VOC: trainval)')
    g.add_argument('--val-split', default=None, help='default: val (VOC: test)')
    g.add_argument('--voc-difficult', default='ignore', choices=('positive', 'negative', 'ignore'),
                   help='training label of VOC difficult-only objects (evaluation always ignores them)')
    g.add_argument('--ann-file', default=None, help='csv/coco-json: annotation file of the train split')
    g.add_argument('--image-dir', default=None, help='csv/coco-json: image folder of the train split')
    g.add_argument('--keep-empty', action='store_true', help='keep images without any label')
    g.add_argument('--on-corrupt', default='error', choices=('error', 'skip'), help='unreadable images')
    g = p.add_argument_group('model')
    g.add_argument('--model', default='srdl_resnet101', help='timm model name (srdl_* or any timm classifier)')
    g.add_argument('--pretrained', action='store_true', help='start from the model\'s pretrained SRDL weights')
    g.add_argument('--pretrained-backbone', action=B, default=None,
                   help='ImageNet-pretrained backbone (recipe paper: on; default: off)')
    g.add_argument('--num-classes', type=int, default=None, help='must match the dataset (checked)')
    g.add_argument('--label-embeddings', default=None,
                   help="label-graph node init: auto (coco/voc arrays, else GloVe 6B-50d), none, coco, voc, "
                        "glove-6b-50d, or a word-vector file")
    g.add_argument('--oe', action=B, default=None, help='object erasing (default: on for SRDL)')
    g.add_argument('--oe-topk', type=int, default=None, help='OE top-K categories (default 3)')
    g.add_argument('--oe-alpha', type=float, default=None, help='OE threshold alpha (default 0.5)')
    g.add_argument('--no-gcn', dest='use_gcn', action='store_false', help='ablation: no label graph convolution')
    g.add_argument('--no-ca', dest='use_ca', action='store_false', help='ablation: no channel attention')
    g.add_argument('--no-sa', dest='use_sa', action='store_false', help='ablation: no spatial attention')
    g.add_argument('--drop', type=float, default=0.0, dest='drop_rate', help='dropout before the classifier')
    g.add_argument('--model-kwargs', nargs='*', default=None, metavar='K=V', help='extra timm.create_model kwargs')
    g.add_argument('--img-size', type=int, default=None, help='input size (recipe paper: 448; default: model cfg)')
    g.add_argument('--train-resize', type=int, default=None, help='first resize of the paper augmentation '
                                                                   '(default img-size*512/448)')
    g.add_argument('--aug', default=None, choices=('paper', 'none'), help='training augmentation (default paper)')
    g = p.add_argument_group('optimisation')
    g.add_argument('--opt', default=None, help='timm optimizer name (default adam)')
    g.add_argument('--opt-betas', type=float, nargs=2, default=None, help='(default: optimizer\'s; paper 0.9 0.999)')
    g.add_argument('--opt-eps', type=float, default=None)
    g.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    g.add_argument('--lr', type=float, default=None, help='learning rate (default 1e-5)')
    g.add_argument('--weight-decay', type=float, default=None, help='weight decay (default 5e-4)')
    g.add_argument('--wd-exclude-bias-norm', action=B, default=None,
                   help='no weight decay on biases and norm weights (timm default: on; recipe paper: off)')
    g.add_argument('-b', '--batch-size', type=int, default=None, help='batch size per process (default 16)')
    g.add_argument('--val-batch-size', type=int, default=None)
    g.add_argument('--epochs', type=int, default=None, help='(default 20)')
    g.add_argument('--sched', default=None, choices=SCHEDULERS, help='lr schedule (default step)')
    g.add_argument('--decay-epochs', type=float, default=None, help='step: epochs between decays (default 10)')
    g.add_argument('--decay-milestones', type=int, nargs='+', default=None, help='multistep milestones')
    g.add_argument('--decay-rate', type=float, default=None, help='lr multiplier per decay (default 0.1)')
    g.add_argument('--warmup-epochs', type=int, default=None, help='(default 0)')
    g.add_argument('--warmup-lr', type=float, default=1e-7)
    g.add_argument('--min-lr', type=float, default=0.0)
    g.add_argument('--sched-on-updates', action='store_true', help='update the lr every optimizer step')
    g.add_argument('--clip-grad', type=float, default=None, help='clip the gradient norm')
    g.add_argument('--grad-accum-steps', type=int, default=1, help='micro-batches per optimizer step')
    g = p.add_argument_group('precision and speed')
    g.add_argument('--amp', action='store_true', help='mixed precision (autocast); loss in float32')
    g.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'),
                   help='float16 adds a GradScaler')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--compile', action='store_true', help='torch.compile the model')
    g.add_argument('--freeze-bn', action='store_true', help='BatchNorm in eval mode (running statistics) in training')
    g.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm under multi-GPU DDP')
    g = p.add_argument_group('EMA')
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights (timm ModelEmaV3)')
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g.add_argument('--report-checkpoint', default='final', choices=('final', 'ema'),
                   help='which weights are evaluated and reported, declared before training')
    g = p.add_argument_group('run')
    g.add_argument('--output', default='output/srdl-train', help='output directory')
    g.add_argument('--resume', default=None, help='checkpoint dir, output dir, or "auto" (OUTPUT/last if present)')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('-j', '--workers', type=int, default=4, help='data loader workers per process')
    g.add_argument('--device', default=None, help='cuda or cpu (default: cuda when available)')
    g.add_argument('--log-interval', type=int, default=50, help='optimizer steps between log lines')
    g.add_argument('--checkpoint-interval-steps', type=int, default=0,
                   help='also checkpoint every N optimizer steps (0: at epoch ends only)')
    g.add_argument('--keep-checkpoints', type=int, default=1, help='newest checkpoints kept')
    g.add_argument('--max-steps', type=int, default=None,
                   help='stop (with a checkpoint) after N optimizer steps in total; resume later')
    g.add_argument('--deterministic', action='store_true', help='torch deterministic algorithms')
    g.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bars')
    g.add_argument('--log-level', default='INFO')
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A :class:`TrainConfig` from parsed ``srdl-train`` arguments (unresolved: recipe fields may be None)."""
    values = vars(args).copy()
    values.pop('log_level', None)
    values['model_kwargs'] = parse_model_kwargs(values.get('model_kwargs'))
    if values.get('opt_betas') is not None:
        values['opt_betas'] = tuple(values['opt_betas'])
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f'internal: arguments without a TrainConfig field: {sorted(unknown)}')
    return TrainConfig(**values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``srdl-train``. Exit status: 0 done, 2 bad input, 3 non-finite loss, 1 other failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    status = 0
    try:
        fit(config_from_args(args))
    except NonFiniteLossError as e:
        _logger.error('%s', e)
        print(f'srdl-train: error: {e}', file=sys.stderr)
        status = 3
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        _logger.error('%s', e)
        print(f'srdl-train: error: {e}', file=sys.stderr)
        status = 2
    except TrainingError as e:
        _logger.error('%s', e)
        print(f'srdl-train: error: {e}', file=sys.stderr)
        status = 1
    finally:
        if is_dist_initialized():
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()
    return status


if __name__ == '__main__':
    sys.exit(main())
