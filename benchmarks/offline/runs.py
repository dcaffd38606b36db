"""One training run of one row and seed: build the model, train it, evaluate it, keep its logits."""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config

from srdl_timm.data import create_multilabel_loader, create_paper_transform
from srdl_timm.loss import SRDLLoss
from srdl_timm.training import TrainConfig, fit
from srdl_timm.utils import jsonable

from ..peer_heads import create_peer_model, ml_gcn_adjacency
from .config import MAX_POINTING_IMAGES, ROWS, BenchmarkConfig, Row
from .data import DataSpec, label_embeddings_for
from .attention_stats import attention_statistics
from .stats import load_boxes, metrics_from_logits, predict_logits
from .trunk import FrozenTrunk, extract_trunk_features, frozen_trunk_attention, frozen_trunk_logits, train_frozen_trunk

_logger = logging.getLogger(__name__)


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
        return jsonable(dataclasses.asdict(self))


def create_model(cfg: BenchmarkConfig, spec: DataSpec, row: Row, topk: int, alpha: float, embeddings: Any,
                 backbone: Optional[str] = None, adjacency: Any = None) -> nn.Module:
    """The row's model: ``timm.create_model(cfg.model, <row switches>)`` (SRDL rows) or the peer head on the same
    backbone (``backbone``: the SRDL model's backbone name; ``adjacency``: ML-GCN's, from the training labels)."""
    backbone_kwargs = _backbone_kwargs(cfg, backbone or cfg.backbone)
    if row.peer:
        return create_peer_model(row.peer, backbone or cfg.backbone, len(spec.label_names),
                                 pretrained_backbone=cfg.pretrained_backbone, backbone_kwargs=backbone_kwargs,
                                 label_embeddings=embeddings if row.peer == 'ml_gcn' else None,
                                 adjacency=adjacency if row.peer == 'ml_gcn' else None)
    kwargs: Dict[str, Any] = dict(num_classes=len(spec.label_names), label_names=spec.label_names,
                                  pretrained_backbone=cfg.pretrained_backbone, oe_topk=topk, oe_alpha=alpha,
                                  zero_init_spatial=cfg.zero_init_spatial, graph_kind=cfg.graph_kind,
                                  graph_neighbors=cfg.graph_neighbors, **row.model_kwargs())
    if row.use_ca or row.use_sa:
        kwargs['label_embeddings'] = embeddings
    if cfg.backbone:
        kwargs['backbone'] = cfg.backbone
    if backbone_kwargs:
        kwargs['backbone_kwargs'] = backbone_kwargs
    model = timm.create_model(cfg.model, **kwargs)
    model.set_object_erasing(row.oe)
    return model


def _backbone_kwargs(cfg: BenchmarkConfig, backbone: Optional[str]) -> Dict[str, Any]:
    """The mode's ``output_stride`` for a backbone that takes one (timm's CNNs); others (ViT, Swin) keep their grid."""
    if not cfg.output_stride:
        return {}
    if backbone:
        with torch.device('meta'):
            cls = type(timm.create_model(backbone, num_classes=0))
        if 'output_stride' not in inspect.signature(cls.__init__).parameters:
            _logger.info('backbone %s takes no output_stride: its own feature grid is used', backbone)
            return {}
    return {'output_stride': cfg.output_stride}


class Context:
    """State shared by the runs of one benchmark invocation."""

    def __init__(self, cfg: BenchmarkConfig, spec: DataSpec, out: Path, device: torch.device):
        self.cfg = cfg
        self.spec = spec
        self.out = out
        self.device = device
        self.embeddings = label_embeddings_for(cfg, spec) if any(
            ROWS[r].use_ca or ROWS[r].use_sa or ROWS[r].peer == 'ml_gcn' for r in cfg.rows) else None
        self.backbone_name: Optional[str] = cfg.backbone
        self.feature_grid: Tuple[int, ...] = ()
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


def prepare_frozen_trunk(ctx: Context) -> None:
    """Build the trunk once from a freshly created model and cache its outputs for train/val/test."""
    cfg, spec = ctx.cfg, ctx.spec
    t0 = time.perf_counter()
    model = create_model(cfg, spec, ROWS['baseline'], cfg.oe_topk, cfg.oe_alpha, None).to(ctx.device)
    ctx.backbone_name = model.backbone_name
    data_config = resolve_data_config({}, model=model)
    size = cfg.img_size or spec.info.get('params', {}).get('image_size') or int(data_config['input_size'][-1])
    data_config['input_size'] = (3, int(size), int(size))
    ctx.data_config = data_config
    split = FrozenTrunk(model, cfg.train_stages, image_size=data_config['input_size'][-2:])
    transform = create_paper_transform(data_config, is_training=False)
    for split_name in (spec.train_split, spec.val_split, spec.test_split):
        if split_name in ctx.cache:
            continue
        ctx.cache[split_name] = extract_trunk_features(split.trunk, spec.create(split_name, transform),
                                                       workers=cfg.workers, device=ctx.device)
    ctx.trunk_state = {k: v.detach().clone() for k, v in split.trunk.state_dict().items()}
    with torch.no_grad():
        model.eval()
        ctx.feature_grid = tuple(split.features(ctx.cache[spec.train_split][0][:1].to(ctx.device)).shape[-2:])
    ctx.cache_seconds = time.perf_counter() - t0
    shape = tuple(ctx.cache[spec.train_split][0].shape[1:])
    _logger.info('frozen trunk (%d of %d backbone units frozen) cached for %s in %.1fs: features %s per image, '
                 'head feature grid %s', split.num_units - split.train_stages, split.num_units,
                 ', '.join(f'{k} {v[0].shape[0]}' for k, v in ctx.cache.items()), ctx.cache_seconds, shape,
                 'x'.join(map(str, ctx.feature_grid)))


def _run_frozen_trunk(ctx: Context, row: Row, seed: int, topk: int, alpha: float) -> Tuple[Dict[str, Any], ...]:
    cfg, spec = ctx.cfg, ctx.spec
    train_x, train_y = ctx.cache[spec.train_split]
    adjacency = ml_gcn_adjacency(train_y.numpy()) if row.peer == 'ml_gcn' else None
    torch.manual_seed(seed)
    model = create_model(cfg, spec, row, topk, alpha, ctx.embeddings, ctx.backbone_name, adjacency).to(ctx.device)
    split = FrozenTrunk(model, cfg.train_stages, image_size=ctx.data_config['input_size'][-2:])
    state = split.trunk.state_dict()
    if state.keys() != ctx.trunk_state.keys() or any(not torch.equal(state[k], ctx.trunk_state[k]) for k in state):
        raise RuntimeError('the trunk of a new model differs from the cached one (non-deterministic backbone init?)')
    val_x, val_y = ctx.cache[spec.val_split]

    def evaluate() -> Dict[str, float]:
        m = metrics_from_logits(frozen_trunk_logits(split, val_x, device=ctx.device), val_y, spec.label_names)
        return {'val_mAP_interpolated': m['mAP_interpolated'], 'val_mAP_non_interpolated': m['mAP_non_interpolated']}

    loss_fn = SRDLLoss(era_scope=row.era_scope, topk=topk if row.era_scope == 'erased' else None,
                       reduction=cfg.loss_reduction, loss=cfg.loss_for(row.key))
    t0 = time.perf_counter()
    history = train_frozen_trunk(
        split, train_x, train_y, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr_for(row.key),
        weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs, seed=seed, erasing=row.oe,
        loss_fn=loss_fn, batchnorm=cfg.batchnorm, evaluate=evaluate if cfg.val_every_epoch else None,
        device=ctx.device,
        amp_dtype=torch.bfloat16 if cfg.amp else None)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_x, test_y = ctx.cache[spec.test_split]
    test_logits = frozen_trunk_logits(split, test_x, device=ctx.device)
    val_logits = frozen_trunk_logits(split, val_x, device=ctx.device)
    sa_maps = frozen_trunk_attention(split, test_x, device=ctx.device) if row.use_sa and not row.peer else None
    eval_seconds = time.perf_counter() - t1
    bn = ('running statistics (eval mode), not updated' if cfg.batchnorm == 'frozen' else
          'trained units: batch statistics (train mode); frozen units: running statistics')
    run_config = dict(trainer='frozen-trunk', model=f'peer:{row.peer}' if row.peer else cfg.model,
                      backbone=model.backbone_name, output_stride=cfg.output_stride or 32,
                      feature_grid=list(ctx.feature_grid),
                      pretrained_backbone=cfg.pretrained_backbone, **row.model_kwargs(), oe=row.oe, oe_topk=topk,
                      oe_alpha=alpha, era_scope=row.era_scope, loss=cfg.loss_for(row.key), asl=loss_fn.asl,
                      loss_reduction=cfg.loss_reduction, seed=seed, epochs=cfg.epochs,
                      amp='bfloat16' if cfg.amp else None, batch_size=cfg.batch_size, optimizer='adamw',
                      lr=cfg.lr_for(row.key), weight_decay=cfg.weight_decay,
                      schedule='linear warm-up + cosine to 0 (per step)',
                      warmup_epochs=cfg.warmup_epochs, train_stages=cfg.train_stages,
                      backbone_units=split.num_units, frozen_units=split.num_units - split.train_stages,
                      batchnorm=bn, spatial_init='zero' if cfg.zero_init_spatial else 'torch', augmentation='none', head=repr(getattr(model, 'head', None)) if row.peer else None,
                      input_size=list(ctx.data_config['input_size']),
                      interpolation=ctx.data_config.get('interpolation'), mean=list(ctx.data_config['mean']),
                      std=list(ctx.data_config['std']),
                      num_trained_parameters=sum(p.numel() for p in split.trainable_parameters()))
    return (model, run_config, history, train_seconds, eval_seconds, (test_logits, test_y), (val_logits, val_y),
            sa_maps)


def _fit_config(ctx: Context, row: Row, seed: int, topk: int, alpha: float, output: Path) -> TrainConfig:
    cfg, spec = ctx.cfg, ctx.spec
    kwargs: Dict[str, Any] = dict(
        data=spec.dataset, root=spec.root, train_split=spec.train_split, val_split=spec.val_split,
        model=f'peer:{row.peer}' if row.peer else cfg.model, oe=row.oe, oe_topk=topk, oe_alpha=alpha,
        era_scope=row.era_scope, loss=cfg.loss_for(row.key), loss_reduction=cfg.loss_reduction, seed=seed,
        output=str(output),
        workers=cfg.workers, progress=False, amp=bool(cfg.amp), channels_last=True,
        device=str(ctx.device), resume='auto')
    if cfg.mode == 'paper':
        kwargs['recipe'] = 'paper'
    else:
        kwargs.update(opt=cfg.optimizer, sched='cosine', aug='paper')
    for key in ('epochs', 'batch_size', 'lr', 'weight_decay', 'img_size'):
        value = cfg.lr_for(row.key) if key == 'lr' and cfg.lr is not None else getattr(cfg, key)
        if value is not None:
            kwargs[key] = value
    if cfg.img_size is None and spec.source == 'fashion-scenes':
        kwargs['img_size'] = int(spec.info['params']['image_size'])  # the images' own size
    if cfg.warmup_epochs is not None:
        kwargs['warmup_epochs'] = int(math.ceil(cfg.warmup_epochs))
    return TrainConfig(**kwargs)


def _run_fit(ctx: Context, row: Row, seed: int, topk: int, alpha: float) -> Tuple[Any, ...]:
    """One run of the library's training loop (:func:`srdl_timm.training.fit`) on the row's model, built as the
    frozen-trunk runs build it (:func:`create_model`) and trained in place; resumes its own unfinished run."""
    spec = ctx.spec
    output = ctx.out / 'runs' / run_name(row.key, seed, topk, alpha)
    config = _fit_config(ctx, row, seed, topk, alpha, output)
    adjacency = None
    if row.peer == 'ml_gcn':
        adjacency = ml_gcn_adjacency(spec.create(spec.train_split).targets)
    if ctx.backbone_name is None:  # the architecture's own backbone, for the peer heads (built on 'meta': no weights)
        with torch.device('meta'):
            ctx.backbone_name = timm.create_model(ctx.cfg.model, num_classes=len(spec.label_names), use_ca=False,
                                                  use_sa=False).backbone_name
    torch.manual_seed(seed)
    model = create_model(ctx.cfg, spec, row, topk, alpha, ctx.embeddings, ctx.backbone_name, adjacency)
    t0 = time.perf_counter()
    result = fit(config, model=model)
    train_seconds = time.perf_counter() - t0
    if not result.get('model_path'):
        raise RuntimeError(f'training {output} stopped early; no final weights to evaluate')
    model = model.to(ctx.device)
    resolved = result['config']
    data_config = resolve_data_config({}, model=model)
    data_config['input_size'] = (3, int(resolved['img_size']), int(resolved['img_size']))
    ctx.data_config = data_config
    transform = create_paper_transform(data_config, is_training=False)
    amp_dtype = torch.bfloat16 if (ctx.cfg.amp and ctx.device.type == 'cuda') else None
    t1 = time.perf_counter()
    outputs = []
    for split_name in (spec.test_split, spec.val_split):
        loader = create_multilabel_loader(spec.create(split_name, transform), int(resolved['batch_size']),
                                          is_training=False, num_workers=ctx.cfg.workers,
                                          pin_memory=ctx.device.type == 'cuda')
        outputs.append(predict_logits(model, loader, ctx.device, amp_dtype))
    sa_maps = None
    if row.use_sa and not row.peer and ctx.test_boxes() is not None:
        test = spec.create(spec.test_split, transform)
        subset = torch.utils.data.Subset(test, range(min(len(test), MAX_POINTING_IMAGES)))
        subset_loader = create_multilabel_loader(subset, int(resolved['batch_size']), is_training=False,
                                                 num_workers=ctx.cfg.workers)
        sa_maps = _pixel_attention(model, subset_loader, ctx.device)
    if not ctx.feature_grid:
        with torch.no_grad():
            probe = torch.zeros(1, 3, *data_config['input_size'][1:], device=ctx.device)
            ctx.feature_grid = tuple(model.eval().forward_features(probe).shape[-2:])
    eval_seconds = time.perf_counter() - t1
    run_config = dict(resolved, trainer='fit', output=str(output), model_path=result['model_path'],
                      backbone=getattr(model, 'backbone_name', None), output_stride=ctx.cfg.output_stride or 32,
                      feature_grid=list(ctx.feature_grid),
                      **row.model_kwargs(), head=repr(getattr(model, 'head', None)) if row.peer else None,
                      input_size=list(data_config['input_size']), interpolation=data_config.get('interpolation'),
                      mean=list(data_config['mean']), std=list(data_config['std']))
    return model, run_config, result['history'], train_seconds, eval_seconds, outputs[0], outputs[1], sa_maps


def _pixel_attention(model: nn.Module, loader: Any, device: torch.device) -> np.ndarray:
    """Spatial attention maps ``[N, C, h, w]`` of ``model`` over ``loader`` (float32)."""
    model.eval()
    out = []
    with torch.inference_mode():
        for images, _ in loader:
            out.append(model.attention_maps(images.to(device))['spatial_attention'].float().cpu().numpy())
    return np.concatenate(out)


def run_name(row: str, seed: int, topk: int, alpha: float) -> str:
    """Folder / file stem of one run."""
    return f'{row}-seed{seed}-top{topk}-alpha{alpha:g}'


def execute(ctx: Context, row_key: str, seed: int, topk: int, alpha: float, purpose: str,
            keep_model: bool) -> RunResult:
    """Train and evaluate one run; its test logits go to ``<output>/logits/<run>.npz``."""
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
    name = run_name(row_key, seed, topk, alpha)
    logits_dir = ctx.out / 'logits'
    logits_dir.mkdir(parents=True, exist_ok=True)
    logits_file = logits_dir / f'{name}.npz'
    arrays = dict(test_logits=test_logits.numpy(), test_targets=test_y.numpy())
    if sa_maps is not None:  # kept so that attention statistics can be recomputed from the files (--report-from)
        arrays['test_spatial_attention'] = sa_maps.astype(np.float16)
    np.savez_compressed(logits_file, **arrays)
    result = RunResult(row=row_key, seed=seed, oe_topk=topk, oe_alpha=alpha, purpose=purpose,
                       config=jsonable(run_config), test=test, val=val, history=jsonable(history),
                       train_seconds=train_s, eval_seconds=eval_s, wall_seconds=time.perf_counter() - t0,
                       logits_file=str(logits_file.relative_to(ctx.out)))
    if sa_maps is not None:
        n = sa_maps.shape[0]
        boxes = ctx.test_boxes()
        result.pointing_game = attention_statistics(sa_maps, test_y.numpy()[:n], None if boxes is None else boxes[:n])
    if keep_model:
        ctx.models[(row_key, seed, topk, alpha)] = model
    _logger.info('%s seed %d: test mAP %.2f (interpolated) / %.2f (non-interpolated), CF1 %.2f, OF1 %.2f '
                 '(train %.1fs, eval %.1fs)', row.name, seed, test['mAP_interpolated'], test['mAP_non_interpolated'],
                 test['CF1'], test['OF1'], train_s, eval_s)
    return result
