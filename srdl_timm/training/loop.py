"""The training loop of ``srdl-train`` on timm's task API (:class:`~srdl_timm.training.task.SRDLTask`: loss of
eqs. 11-13, DDP, compile, EMA) and timm's optimizer, scheduler and ``NativeScaler``, with exact resumption (a
data stream that is a pure function of ``(seed, epoch, position)``, checkpoints at any optimizer step)."""
import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.data import resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import NativeScaler, dispatch_clip_grad, reduce_tensor, unwrap_model
from torch.utils.data import DataLoader
from tqdm import tqdm

import srdl_timm
from ..data import (
    LABELS_FROM_FILE, EpochBatchSampler, SeededDataset, create_multilabel_dataset, create_multilabel_loader,
    create_paper_transform, is_dist_initialized)
from ..errors import InputError, OperationError
from ..labels import DEFAULT_SOURCE, label_vectors, split_fingerprint
from ..layers.depthwise import convert_depthwise
from ..loss import SRDLLoss
from ..validate import validate
from .checkpoint import capture_rng_state, save_checkpoint, state_dict_for_save
from .config import TrainConfig, is_srdl_model_name
from .task import SRDLTask

__all__ = ['TrainingError', 'NonFiniteLossError', 'TrainState', 'setup_training', 'prepare_for_training',
           'make_train_loader', 'train_one_epoch', 'evaluate', 'amp_dtype', 'all_reduce_mean', 'all_gather_objects',
           'barrier']

_logger = logging.getLogger(__name__)


class TrainingError(OperationError):
    """Training cannot go on (out of memory, …); the message says what to do. Exit status 1."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the weights were not updated with it. Exit status 3."""

    exit_code = 3

    def __init__(self, message: str, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


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


def _resolve_label_embeddings(cfg: TrainConfig, label_names: List[str]) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """The model's ``label_embeddings=``, logging each name that was not an exact word."""
    spec = cfg.label_embeddings
    if spec in (None, 'none', 'random'):
        return (None if spec == 'none' else spec), None
    if spec == 'auto' and cfg.data not in ('coco', 'voc'):
        try:
            found = label_vectors(DEFAULT_SOURCE, label_names)
        except (ValueError, ImportError, OSError) as e:
            _logger.warning('label embeddings: GloVe 6B-50d unavailable for these label names (%s); the label-graph '
                            'nodes start from a seeded random init. Pass --label-embeddings PATH to use your own word '
                            'vectors.', e)
            return None, None
    else:
        found = label_vectors(cfg.data if spec == 'auto' else spec, label_names)
    assert found is not None
    found.log_fallbacks(_logger)
    return found.vectors, found.report()


def _create_model(cfg: TrainConfig, num_classes: int, label_names: List[str]
                  ) -> Tuple[nn.Module, Optional[Dict[str, Any]]]:
    kwargs: Dict[str, Any] = dict(cfg.model_kwargs)
    label_report = None
    kwargs.setdefault('drop_rate', cfg.drop_rate)
    named_srdl = is_srdl_model_name(cfg.model) and not cfg.model.startswith(('hf-hub:', 'local-dir:'))
    if named_srdl:
        kwargs.update(
            label_names=label_names, use_gcn=cfg.use_gcn, use_ca=cfg.use_ca, use_sa=cfg.use_sa,
            oe_topk=cfg.oe_topk, oe_alpha=cfg.oe_alpha, pretrained_backbone=bool(cfg.pretrained_backbone))
        if not cfg.pretrained or cfg.label_embeddings not in (None, 'auto'):
            kwargs['label_embeddings'], label_report = _resolve_label_embeddings(cfg, label_names)
    # a plain timm baseline: its own ImageNet weights are the "pretrained backbone"
    pretrained = cfg.pretrained or (not named_srdl and bool(cfg.pretrained_backbone))
    model = timm.create_model(cfg.model, pretrained=pretrained, num_classes=num_classes, **kwargs)
    if getattr(model, 'num_classes', None) != num_classes:
        raise InputError(f'model {cfg.model!r} has {getattr(model, "num_classes", "?")} outputs but the dataset has '
                         f'{num_classes} classes')
    if cfg.oe and not hasattr(model, 'set_object_erasing'):
        raise InputError(f'--oe needs an SRDL model; {cfg.model!r} is a {type(model).__name__}: add --no-oe')
    return model, label_report


def _dataset_options(cfg: TrainConfig, training: bool) -> Dict[str, Any]:
    options: Dict[str, Any] = dict(keep_empty=cfg.keep_empty, on_corrupt=cfg.on_corrupt)
    if cfg.data == 'voc':
        options['difficult'] = cfg.voc_difficult if training else 'ignore'
    return options


def _set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def amp_dtype(cfg: TrainConfig) -> Optional[torch.dtype]:
    """The autocast dtype, None without ``--amp``."""
    return getattr(torch, cfg.amp_dtype) if cfg.amp else None


@dataclass
class TrainState:
    """The live objects of a run: config, task, model, optimizer, data geometry, labels and resumable counters."""
    config: TrainConfig
    task: SRDLTask
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_scaler: Optional[NativeScaler]
    device: torch.device
    rank: int
    world_size: int
    micro_batches_per_epoch: int
    updates_per_epoch: int
    label_names: List[str]
    label_vectors: Optional[Dict[str, Any]] = None
    unknown_entries: Dict[str, int] = field(default_factory=dict)
    val_split: Optional[Dict[str, Any]] = None
    val_outputs: Optional[Tuple[np.ndarray, np.ndarray]] = None
    global_step: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Optional[str] = None
    epoch_loss_sums: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    epoch_micro_batches: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 (writes files, shows progress)."""
        return self.rank == 0

    @property
    def ema_model(self) -> Optional[nn.Module]:
        """The plain EMA model, None without ``--model-ema``."""
        ema = self.task.get_trainable_module(ema=True)
        return unwrap_model(ema) if ema is not None else None

    @property
    def report_model(self) -> nn.Module:
        """The model that is evaluated and reported (declared with ``--report-checkpoint``)."""
        return self.ema_model if self.config.report_checkpoint == 'ema' else self.model

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
            'scaler': self.loss_scaler.state_dict() if self.loss_scaler is not None else None,
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
            ema = self.ema_model
            path = save_checkpoint(
                self.config.output, state_dict_for_save(self.model), self.training_state(epoch, batch_in_epoch, rng),
                self.config.to_dict(), ema_state=state_dict_for_save(ema) if ema is not None else None,
                keep_last=self.config.keep_checkpoints)
            self.last_checkpoint = path
        barrier()
        return path


def setup_training(cfg: TrainConfig, device: torch.device, rank: int, world_size: int,
                   model: Optional[nn.Module] = None) -> Tuple[TrainState, Any, Any, Dict[str, Any]]:
    """Datasets, model (``model``, or built from ``cfg.model``), task, optimizer, scheduler and AMP scaler for a
    resolved config; returns ``(state, train_dataset, val_loader, data_config)``."""
    train_ds, val_ds = _datasets(cfg)
    num_classes = train_ds.num_classes
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2 ** 32)
    if model is None:
        model, label_report = _create_model(cfg, num_classes, train_ds.label_names)
    elif getattr(model, 'num_classes', None) != num_classes:
        raise InputError(f'the model to train has {getattr(model, "num_classes", "?")} outputs but {cfg.data} at '
                         f'{cfg.root} has {num_classes} classes')
    else:
        label_report = None
    data_config = _set_transforms(cfg, model, train_ds, val_ds)
    micro = _micro_batches_per_epoch(cfg, len(train_ds), world_size)
    updates_per_epoch = micro // cfg.grad_accum_steps
    model, task = _place_model(cfg, model, device, rank, world_size)
    optimizer, scheduler = _optimizer_and_scheduler(cfg, model, updates_per_epoch)
    loss_scaler = NativeScaler(device.type) if cfg.amp and cfg.amp_dtype == 'float16' else None
    unknown = {'train': int((train_ds.targets == -1).sum()), 'val': int((val_ds.targets == -1).sum())}
    if any(unknown.values()) and rank == 0:
        _logger.info('entries (image, class) not annotated, left out of the loss and the metrics: %s of %s in the '
                     'training split, %s of %s in the validation split', f'{unknown["train"]:,}',
                     f'{train_ds.targets.size:,}', f'{unknown["val"]:,}', f'{val_ds.targets.size:,}')
    state = TrainState(
        config=cfg, task=task, model=model, optimizer=optimizer, scheduler=scheduler, loss_scaler=loss_scaler,
        device=device, rank=rank, world_size=world_size, micro_batches_per_epoch=micro,
        updates_per_epoch=updates_per_epoch, label_names=list(train_ds.label_names), label_vectors=label_report,
        unknown_entries=unknown,
        val_split=split_fingerprint(val_ds.image_paths, cfg.root, cfg.data, cfg.val_split))
    val_loader = create_multilabel_loader(val_ds, cfg.val_batch_size or cfg.batch_size, is_training=False,
                                          num_workers=cfg.workers, distributed=world_size > 1,
                                          pin_memory=device.type == 'cuda')
    return state, train_ds, val_loader, data_config


def _datasets(cfg: TrainConfig) -> Tuple[Any, Any]:
    """The training and validation datasets, with the same classes; sets ``cfg.num_classes``."""
    train_ds = create_multilabel_dataset(
        cfg.data, cfg.root, cfg.train_split, **_dataset_options(cfg, True),
        **{k: v for k, v in (('ann_file', cfg.ann_file), ('image_dir', cfg.image_dir)) if v})
    val_options = _dataset_options(cfg, False)
    if train_ds.info.get('label_names_from') == LABELS_FROM_FILE:
        # a CSV without classes.txt: the validation split may lack a class, and must not name new ones
        val_options.update(label_names=train_ds.label_names,
                           label_names_from=f'the training split ({train_ds.info["csv_file"]})')
    val_ds = create_multilabel_dataset(cfg.data, cfg.root, cfg.val_split, **val_options)
    if train_ds.label_names != val_ds.label_names:
        raise InputError(f'the {cfg.train_split!r} and {cfg.val_split!r} splits have different classes '
                         f'({train_ds.num_classes} vs {val_ds.num_classes})')
    num_classes = train_ds.num_classes
    if cfg.num_classes is not None and cfg.num_classes != num_classes:
        raise InputError(f'--num-classes {cfg.num_classes} does not match the dataset: {cfg.data} at {cfg.root} has '
                         f'{num_classes} classes ({", ".join(train_ds.label_names[:5])}'
                         f'{", ..." if num_classes > 5 else ""}); drop --num-classes or fix the data')
    cfg.num_classes = num_classes
    if cfg.oe and cfg.oe_topk > num_classes:
        _logger.warning('--oe-topk %d exceeds the %d classes; OE erases all of them', cfg.oe_topk, num_classes)
    return train_ds, val_ds


def _set_transforms(cfg: TrainConfig, model: nn.Module, train_ds: Any, val_ds: Any) -> Dict[str, Any]:
    """Give both datasets their transforms from timm's data config of ``model``; returns the data config."""
    data_config = resolve_data_config({}, model=model)
    size = cfg.img_size or int(data_config['input_size'][-1])
    cfg.img_size = size
    data_config['input_size'] = (data_config['input_size'][0], size, size)
    if cfg.aug == 'paper':
        resize = cfg.train_resize or int(round(size * 512 / 448))
        cfg.train_resize = resize
        train_ds.transform = create_paper_transform(data_config, is_training=True, resize=resize, size=size)
    else:
        train_ds.transform = create_paper_transform(data_config, is_training=False, size=size)
    val_ds.transform = create_paper_transform(data_config, is_training=False, size=size)
    return data_config


def _micro_batches_per_epoch(cfg: TrainConfig, num_images: int, world_size: int) -> int:
    """Micro-batches per epoch and process (a multiple of ``grad_accum_steps``)."""
    global_batch = cfg.batch_size * world_size
    micro = num_images // global_batch
    micro -= micro % cfg.grad_accum_steps
    fitting = num_images // (world_size * cfg.grad_accum_steps)
    if micro == 0 and 'batch_size' not in cfg.explicit and not cfg.global_batch_size and fitting >= 2:
        # the default batch on a split smaller than one step: a batch that fits (>= 2 images for BatchNorm)
        _logger.warning('the training split has %d images, fewer than one step of the default --batch-size %d: '
                        'training with --batch-size %d', num_images, cfg.batch_size, fitting)
        cfg.batch_size = fitting
        global_batch = cfg.batch_size * world_size
        micro = (num_images // global_batch) // cfg.grad_accum_steps * cfg.grad_accum_steps
    if micro == 0:
        raise InputError(f'the training split has {num_images} images, fewer than one optimizer step needs '
                         f'(batch size {cfg.batch_size} x {world_size} process(es) x {cfg.grad_accum_steps} '
                         f'accumulation steps = {global_batch * cfg.grad_accum_steps}); lower --batch-size')
    return micro


def _place_model(cfg: TrainConfig, model: nn.Module, device: torch.device, rank: int,
                 world_size: int) -> Tuple[nn.Module, SRDLTask]:
    """The model on ``device`` (SyncBatchNorm, channels-last as asked) and its task with loss and EMA."""
    model.to(device)
    if cfg.sync_bn and world_size > 1:
        if device.type != 'cuda':
            raise InputError('--sync-bn needs CUDA (torch.nn.SyncBatchNorm); on CPU use --freeze-bn')
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.fast_depthwise == 'on' or (cfg.fast_depthwise == 'auto' and device.type == 'cpu'):
        _logger.info('--fast-depthwise: %d depthwise convolutions use the faster backward',
                     convert_depthwise(model))
    loss = SRDLLoss(erased_weight=cfg.era_weight, era_scope=cfg.era_scope,
                    topk=cfg.oe_topk if cfg.era_scope == 'erased' else None, reduction=cfg.loss_reduction,
                    loss=cfg.loss, asl=cfg.asl_params())
    task = SRDLTask(model, object_erasing=bool(cfg.oe), loss=loss, device=device, verbose=rank == 0)
    if cfg.model_ema:
        task.setup_ema(decay=cfg.model_ema_decay)
    return model, task


def _optimizer_and_scheduler(cfg: TrainConfig, model: nn.Module, updates_per_epoch: int) -> Tuple[Any, Any]:
    """timm's optimizer and lr scheduler (None for ``--sched none``) for ``cfg``."""
    optimizer = create_optimizer_v2(
        model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
        filter_bias_and_bn=bool(cfg.wd_exclude_bias_norm),
        **{k: v for k, v in (('betas', cfg.opt_betas), ('eps', cfg.opt_eps)) if v is not None})
    if cfg.sched == 'none':
        return optimizer, None
    sched_kwargs: Dict[str, Any] = dict(
        sched=cfg.sched, num_epochs=cfg.epochs, decay_rate=cfg.decay_rate, min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs, step_on_epochs=not cfg.sched_on_updates,
        updates_per_epoch=updates_per_epoch)
    if cfg.decay_epochs is not None:
        sched_kwargs['decay_epochs'] = cfg.decay_epochs
    if cfg.decay_milestones:
        sched_kwargs['decay_milestones'] = list(cfg.decay_milestones)
    return optimizer, create_scheduler_v2(optimizer, **sched_kwargs)[0]


def prepare_for_training(state: TrainState) -> None:
    """``torch.compile`` (``--compile``) then DDP (several processes), both through the task (timm's order)."""
    if state.config.compile:
        state.task.compile()
    if state.world_size > 1:
        state.task.prepare_distributed(device_ids=[state.device.index] if state.device.type == 'cuda' else None)


def make_train_loader(state: TrainState, dataset: Any, epoch: int, start_batch: int) -> DataLoader:
    """This rank's loader for ``epoch`` from micro-batch ``start_batch`` (resumable, per-sample seeded)."""
    cfg = state.config
    sampler = EpochBatchSampler(len(dataset), cfg.batch_size, cfg.seed, epoch, rank=state.rank,
                                world_size=state.world_size, num_batches=state.micro_batches_per_epoch,
                                start_batch=start_batch)
    return DataLoader(SeededDataset(dataset), batch_sampler=sampler, num_workers=cfg.workers,
                      pin_memory=state.device.type == 'cuda', generator=torch.Generator().manual_seed(cfg.seed))


def _backward_step(state: TrainState, loss: torch.Tensor, update: bool) -> None:
    """Backward of ``loss``; on the last micro-batch of a step also clip and step."""
    cfg = state.config
    params = state.task.get_clip_parameters() if cfg.clip_grad is not None else None
    if state.loss_scaler is not None:
        state.loss_scaler(loss, state.optimizer, clip_grad=cfg.clip_grad, parameters=params, need_update=update)
        return
    loss.backward()
    if update:
        if cfg.clip_grad is not None:
            dispatch_clip_grad(params, cfg.clip_grad)
        state.optimizer.step()


def _check_finite(state: TrainState, first_bad: torch.Tensor, epoch: int) -> None:
    """The deferred non-finite-loss check (a host sync): raise if any rank saw a NaN/inf loss since the last check
    (``first_bad``: the first such optimizer step, 0: none)."""
    if is_dist_initialized() and dist.get_world_size() > 1:
        first_bad = first_bad.clone()
        dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
    step = int(first_bad.item())
    if step:
        raise NonFiniteLossError(
            f'the loss became NaN or infinite at optimizer step {step} (epoch {epoch + 1}, 1-based; found at step '
            f'{state.global_step}); training stopped, nothing after step {step - 1} was saved. Last good '
            f'checkpoint: {state.last_checkpoint or "none written yet"}. Try a lower --lr, --clip-grad, or '
            '--amp-dtype bfloat16 instead of float16.', epoch=epoch, step=step)


def _epoch_means(state: TrainState, sums: torch.Tensor, count: int) -> List[float]:
    """Mean loss terms of the epoch so far over micro-batches and ranks (a host sync)."""
    sums = all_reduce_mean(sums)
    state.epoch_loss_sums, state.epoch_micro_batches = sums.tolist(), count
    return [v / max(count, 1) for v in state.epoch_loss_sums]


def train_one_epoch(state: TrainState, loader: DataLoader, epoch: int, start_batch: int = 0) -> Dict[str, Any]:
    """Train over ``loader`` (this rank's micro-batches of ``epoch`` from ``start_batch`` on).

    Loss sums and the finiteness check stay on the device; the host syncs only at log intervals, checkpoints, the
    ``max_steps`` stop and the epoch's end, where a NaN/inf loss raises :class:`NonFiniteLossError` before any save.

    Returns:
        ``{'loss', 'loss_ori', 'loss_era', 'lr', 'steps', 'stopped', 'time_s', 'micro_batches'}``.
    """
    cfg, task = state.config, state.task
    accum = cfg.grad_accum_steps
    task.trainable_module.train()
    if cfg.freeze_bn:
        _set_bn_eval(state.model)
    dtype = amp_dtype(cfg)
    if start_batch == 0:  # else: the partial sums of the interrupted epoch, restored from the checkpoint
        state.epoch_loss_sums, state.epoch_micro_batches = [0.0, 0.0, 0.0], 0
    sums = torch.tensor(state.epoch_loss_sums, dtype=torch.float64, device=state.device)
    first_bad = torch.zeros((), dtype=torch.int64, device=state.device)
    count = state.epoch_micro_batches
    micro_this_call = steps = 0
    stopped = False
    start = time.time()
    total = state.micro_batches_per_epoch
    bar = tqdm(total=total, initial=start_batch, desc=f'train {epoch + 1}/{cfg.epochs}', dynamic_ncols=True,
               disable=not (cfg.progress and state.is_main and sys.stderr.isatty()), leave=False)
    state.optimizer.zero_grad(set_to_none=True)
    for batch_index, (images, targets) in enumerate(loader, start=start_batch):
        images = images.to(state.device, non_blocking=True)
        targets = targets.to(state.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        last_micro = (batch_index + 1) % accum == 0
        with contextlib.nullcontext() if last_micro else task.no_sync():
            with torch.autocast(device_type=state.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                result = task(images, targets)
            loss = result['loss']
            values = torch.stack([loss.detach(), result['loss_ori'].detach(),
                                  result.get('loss_era', torch.zeros_like(result['loss_ori'])).detach()]).double()
            first_bad.masked_fill_((first_bad == 0) & ~torch.isfinite(values).all(), state.global_step + 1)
            _backward_step(state, loss / accum, update=last_micro)
        sums += values
        count += 1
        micro_this_call += 1
        bar.update(1)
        if not last_micro:
            continue
        state.optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        steps += 1
        task.update_ema(step=state.global_step)
        if state.scheduler is not None and cfg.sched_on_updates:
            state.scheduler.step_update(num_updates=state.global_step)
        done = batch_index + 1
        at_max = cfg.max_steps is not None and state.global_step >= cfg.max_steps
        at_checkpoint = bool(cfg.checkpoint_interval_steps) and state.global_step % cfg.checkpoint_interval_steps == 0
        if state.global_step % cfg.log_interval == 0 or ((at_max or at_checkpoint) and done < total):
            _check_finite(state, first_bad, epoch)
            means = _epoch_means(state, sums, count)
            if state.global_step % cfg.log_interval == 0 and state.is_main:
                bar.set_postfix(loss=f'{means[0]:.4f}', lr=f'{state.current_lr():.2e}')
                _logger.info('epoch %d step %d (%d/%d): epoch mean loss %.5f (ori %.5f, era %.5f) lr %.3e', epoch + 1,
                             state.global_step, batch_index + 1, total, means[0], means[1], means[2],
                             state.current_lr())
        if at_max:
            if done < total:
                state.save(epoch, done)
            stopped = True
            break
        if at_checkpoint and done < total:
            state.save(epoch, done)
    bar.close()
    _check_finite(state, first_bad, epoch)
    means = _epoch_means(state, sums, count)
    return {
        'loss': means[0], 'loss_ori': means[1], 'loss_era': means[2] if cfg.oe else None,
        'lr': state.current_lr(), 'steps': steps, 'stopped': stopped, 'time_s': time.time() - start,
        'micro_batches': micro_this_call,
    }


def evaluate(state: TrainState, loader: DataLoader) -> Dict[str, Any]:
    """Validation metrics of the reported model on ``loader``, keeping the outputs in ``state.val_outputs``."""
    cfg = state.config
    result = validate(state.report_model, loader, state.device, amp_dtype=amp_dtype(cfg),
                      channels_last=cfg.channels_last, progress=cfg.progress, label_names=state.label_names,
                      return_outputs=True)
    state.val_outputs = (result.pop('logits'), result.pop('targets'))
    state.task.trainable_module.train()
    if cfg.freeze_bn:
        _set_bn_eval(state.model)
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
