"""Run (or resume) a whole ``srdl-train`` run: :func:`fit`."""
import json
import logging
import os
from typing import Any, Dict, Optional, Tuple

import torch

from ..data import init_distributed_from_env
from ..labels import LabelThresholds, store_label_thresholds, tune_thresholds
from ..layers.depthwise import restore_depthwise
from ..loading import model_args
from ..utils import atomic_write_json, jsonable
from .checkpoint import (
    CONFIG_FILE, LAST_LINK, CheckpointError, find_last_checkpoint, load_checkpoint, restore_rng_state,
    save_safetensors_atomic, state_dict_for_save)
from .config import SUMMARY_KEYS, TrainConfig, resolve_config
from .loop import (
    NonFiniteLossError, TrainState, TrainingError, all_gather_objects, barrier, evaluate, make_train_loader,
    prepare_for_training, setup_training, train_one_epoch)
from .run_folder import OutputDirError, claim_output_dir, format_summary, write_logs

__all__ = ['fit', 'is_oom', 'oom_message']

_logger = logging.getLogger(__name__)

_RESUME_MUST_MATCH = ('model', 'data', 'num_classes', 'use_gcn', 'use_ca', 'use_sa', 'model_ema')
_RESUME_SHOULD_MATCH = ('seed', 'opt', 'lr', 'weight_decay', 'sched', 'epochs', 'decay_epochs', 'decay_rate', 'oe',
                        'oe_topk', 'oe_alpha', 'loss', 'asl_gamma_neg', 'asl_gamma_pos', 'asl_clip', 'era_scope',
                        'era_weight', 'loss_reduction', 'img_size', 'aug', 'amp',
                        'amp_dtype', 'freeze_bn', 'report_checkpoint')


def is_oom(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error or the CPU allocator's failure to allocate."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ('out of memory' in text or "can't allocate memory" in text)


def oom_message(cfg: TrainConfig, device: torch.device, where: str) -> str:
    """What to try after running out of memory (same global batch via accumulation, AMP, smaller input)."""
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


def _resume_path(cfg: TrainConfig) -> Optional[str]:
    if not cfg.resume:
        return None
    if cfg.resume == 'auto':
        last = find_last_checkpoint(cfg.output) if os.path.isdir(cfg.output) else None
        if last is None:
            _logger.info('--resume auto: no checkpoint in %s, starting a new run', cfg.output)
        return last
    return cfg.resume


def _continues_output(cfg: TrainConfig, resume_path: Optional[str]) -> bool:
    """True when this run continues the run in ``cfg.output`` (``--resume auto`` or a checkpoint inside it)."""
    if cfg.resume == 'auto':
        return True
    if not resume_path or not os.path.exists(resume_path):
        return False
    out = os.path.realpath(cfg.output)
    return os.path.commonpath([out, os.path.realpath(resume_path)]) == out


def _claim_output(cfg: TrainConfig, resume_path: Optional[str], is_main: bool):
    """Rank 0 claims (locks) the output folder; every rank raises the same error if it cannot (a collective)."""
    lock, message = None, None
    if is_main:
        try:
            lock = claim_output_dir(cfg.output, resume_here=_continues_output(cfg, resume_path),
                                    overwrite=cfg.overwrite)
        except OutputDirError as e:
            message = str(e)
    message = all_gather_objects(message)[0]
    if message is not None:
        raise OutputDirError(message)
    return lock


def _apply_resume(state: TrainState, path: str) -> Tuple[int, int]:
    cfg = state.config
    ckpt = load_checkpoint(path)
    saved = ckpt.config
    for key in _RESUME_MUST_MATCH:
        if key in saved and saved[key] != getattr(cfg, key):
            raise CheckpointError(f'cannot resume from {ckpt.path}: it was trained with {key}={saved[key]!r}, this run '
                                  f'has {key}={getattr(cfg, key)!r}; use the same value or another --output')
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
        raise CheckpointError(f'cannot resume mid-epoch from {ckpt.path}: it used batch {ckpt.state["batch_size"]} x '
                              f'{ckpt.state["world_size"]} process(es) x {ckpt.state["grad_accum_steps"]} accumulation, '
                              f'this run {cfg.batch_size} x {state.world_size} x {cfg.grad_accum_steps}; resume from an '
                              'epoch-end checkpoint or use the same geometry')
    if saved_global != global_batch:
        _logger.warning('global batch changed on resume: %d -> %d', saved_global, global_batch)
    state.task.load_checkpoint_state(ckpt.model)
    if state.task.has_ema():
        if ckpt.ema is None:
            raise CheckpointError(f'{ckpt.path} has no EMA weights but this run uses --model-ema')
        state.task.load_checkpoint_state(ckpt.ema, ema=True)
    state.optimizer.load_state_dict(ckpt.state['optimizer'])
    if state.loss_scaler is not None and ckpt.state.get('scaler'):
        state.loss_scaler.load_state_dict(ckpt.state['scaler'])
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


def _write_train_config(state: TrainState, data_config: Dict[str, Any]) -> None:
    resolved = state.config.to_dict()
    resolved['data_config'] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()}
    resolved['label_names'] = state.label_names
    resolved['label_vectors'] = state.label_vectors
    resolved['unknown_entries'] = state.unknown_entries
    resolved['model_args'] = model_args(state.model)
    print('srdl-train configuration:\n' + json.dumps(jsonable(resolved), indent=2), flush=True)
    atomic_write_json(os.path.join(state.config.output, 'train_config.json'), resolved)


def _tune_thresholds(state: TrainState, val_loader: Any) -> Optional[LabelThresholds]:
    """Per-class thresholds tuned on the validation split, put on the model and into ``train_config.json``."""
    if not state.config.tune_thresholds:
        return None
    if state.val_outputs is None:
        evaluate(state, val_loader)
    logits, targets = state.val_outputs
    thresholds = tune_thresholds(logits, targets, label_names=state.label_names, tuned_on=state.val_split,
                                 tool='srdl-train')
    store_label_thresholds(state.report_model, thresholds)
    if state.is_main:
        path = os.path.join(state.config.output, CONFIG_FILE)
        with open(path, encoding='utf-8') as f:
            config = json.load(f)
        config.update(thresholds.to_json())
        atomic_write_json(path, config)
        _logger.info('decision thresholds %s; written to %s', thresholds.describe(), path)
    return thresholds


def _train_epochs(state: TrainState, train_ds: Any, val_loader: Any, start_epoch: int, start_batch: int) -> bool:
    """The epoch loop; returns True when it stopped early (``max_steps``)."""
    cfg = state.config
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.max_steps is not None and state.global_step >= cfg.max_steps:
            _logger.info('--max-steps %d already reached (step %d); nothing to train', cfg.max_steps, state.global_step)
            return True
        if state.scheduler is not None:
            if cfg.sched_on_updates:
                state.scheduler.step_update(num_updates=state.global_step)
            else:
                state.scheduler.step(epoch)
        first = start_batch if epoch == start_epoch else 0
        try:
            stats = train_one_epoch(state, make_train_loader(state, train_ds, epoch, first), epoch, start_batch=first)
            if stats['stopped'] and (first + stats['micro_batches']) < state.micro_batches_per_epoch:
                _logger.info('stopped after %d optimizer steps (--max-steps); resume with --resume %s',
                             state.global_step, os.path.join(cfg.output, LAST_LINK))
                return True
            metrics = evaluate(state, val_loader)
        except NonFiniteLossError:
            raise
        except Exception as e:
            if is_oom(e):
                raise TrainingError(oom_message(cfg, state.device, f'epoch {epoch + 1}')) from e
            raise
        row: Dict[str, Any] = {
            'epoch': epoch + 1, 'global_step': state.global_step, 'lr': stats['lr'],
            'train_loss': stats['loss'], 'train_loss_ori': stats['loss_ori'], 'train_loss_era': stats['loss_era'],
            'epoch_time_s': stats['time_s'], 'resumed_mid_epoch': bool(first), 'evaluated': cfg.report_checkpoint,
        }
        row.update({f'val_{k}': metrics[k] for k in SUMMARY_KEYS})
        row.update({f'val_{k}_top3': metrics.get(f'{k}_top3') for k in ('CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')})
        row['val_num_samples'] = metrics.get('num_samples')
        state.history.append(jsonable(row))
        if state.is_main:
            _logger.info('epoch %d: loss %.4f, mAP %.2f (interpolated) / %.2f (non-interpolated), CF1 %.2f, OF1 %.2f',
                         epoch + 1, stats['loss'], metrics['mAP_interpolated'], metrics['mAP_non_interpolated'],
                         metrics['CF1'], metrics['OF1'])
            write_logs(cfg.output, state.history)
        state.save(epoch + 1, 0)
        if stats['stopped']:
            return epoch + 1 < cfg.epochs
    return False


def fit(config: TrainConfig, model: Optional[torch.nn.Module] = None) -> Dict[str, Any]:
    """Run (or resume) a training run end to end (``model``: train this instance instead of ``config.model``).

    Returns:
        ``{'final_metrics', 'history', 'model_path', 'last_checkpoint', 'output', 'reported', 'global_step',
        'epochs_completed', 'stopped_early', 'config'}``.

    Raises:
        InputError: bad configuration, data, output folder or checkpoint (before anything is trained).
        NonFiniteLossError / TrainingError: NaN/inf loss / out of memory.
    """
    device_name = config.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    device, rank, world_size = init_distributed_from_env(device_name)
    cfg = resolve_config(config, world_size, model=model)
    cfg.device = str(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    is_main = rank == 0
    resume_path = _resume_path(cfg)
    lock = _claim_output(cfg, resume_path, is_main)
    try:
        state, train_ds, val_loader, data_config = setup_training(cfg, device, rank, world_size, model=model)
        start_epoch, start_batch = _apply_resume(state, resume_path) if resume_path else (0, 0)
        prepare_for_training(state)
        if is_main:
            _write_train_config(state, data_config)
        stopped = _train_epochs(state, train_ds, val_loader, start_epoch, start_batch)
        thresholds = None if stopped else _tune_thresholds(state, val_loader)
        result: Dict[str, Any] = {
            'history': state.history, 'output': os.path.abspath(cfg.output), 'reported': cfg.report_checkpoint,
            'global_step': state.global_step, 'epochs_completed': len(state.history), 'stopped_early': stopped,
            'last_checkpoint': state.last_checkpoint, 'config': cfg.to_dict(), 'model_path': None,
            'final_metrics': {k[4:]: v for k, v in state.history[-1].items() if k.startswith('val_')}
            if state.history else None,
            'unknown_entries': state.unknown_entries,
            'label_thresholds': thresholds.to_json() if thresholds is not None else None,
        }
        if not stopped and is_main:
            model_path = os.path.join(cfg.output, 'model.safetensors')
            save_safetensors_atomic(state_dict_for_save(state.report_model), model_path,
                                    metadata={'format': 'pt', 'reported': cfg.report_checkpoint,
                                              'epochs': str(len(state.history)), 'model': cfg.model})
            result['model_path'] = os.path.abspath(model_path)
            atomic_write_json(os.path.join(cfg.output, 'summary.json'), result)
            print(format_summary(state.history), flush=True)
            if result['final_metrics']:
                fm = result['final_metrics']
                print(f'reported ({cfg.report_checkpoint}) weights: {model_path}\n'
                      f'final mAP {fm["mAP_interpolated"]:.2f} (interpolated) / {fm["mAP_non_interpolated"]:.2f} '
                      f'(non-interpolated), CF1 {fm["CF1"]:.2f}, OF1 {fm["OF1"]:.2f} (at 0.5)', flush=True)
            if thresholds is not None:
                print(f'decision thresholds {thresholds.describe()}; in {os.path.join(cfg.output, CONFIG_FILE)} '
                      '(report metrics at them on another split: srdl-validate --thresholds from-weights)',
                      flush=True)
        barrier()
        return result
    finally:
        if model is not None:
            restore_depthwise(model)  # the caller's model leaves as it came (scriptable, exportable)
        if lock is not None:
            lock.release()
