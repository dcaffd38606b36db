"""Atomic, verifiable training checkpoints: safetensors weights + a ``weights_only``-loadable training state.

A checkpoint directory ``checkpoints/epoch-E-batch-B-step-S-<id>/`` holds ``model.safetensors``, ``ema.safetensors``
(with --model-ema), ``training_state.pt``, ``train_config.json`` and, written last, ``manifest.json`` (size and
SHA-256 of every file). Files go to a hidden ``.tmp-…`` directory, are fsync'ed, and the directory is renamed
atomically; the ``last`` link is then re-pointed atomically and only then are older checkpoints pruned (via a
``.trash-…`` rename). A killed process thus leaves ``last`` at a complete checkpoint; loading verifies the manifest
and raises :class:`CheckpointError` naming a truncated or corrupt file.
"""
import io
import json
import logging
import os
import random
import shutil
import uuid
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import save
from timm.utils import unwrap_model

from ..errors import InputError
from ..utils import atomic_write_bytes, fsync_dir, jsonable, sha256_file, write_synced
from ..weight_files import load_state_dict, read_weight_file

__all__ = [
    'CheckpointError', 'Checkpoint', 'MODEL_FILE', 'EMA_FILE', 'STATE_FILE', 'CONFIG_FILE', 'MANIFEST_FILE',
    'LAST_LINK', 'CHECKPOINT_DIR', 'TRASH_PREFIX', 'save_safetensors_atomic', 'save_checkpoint',
    'load_checkpoint', 'resolve_checkpoint_dir', 'find_last_checkpoint', 'verify_checkpoint',
    'capture_rng_state', 'restore_rng_state', 'state_dict_for_save', 'remove_stale_tmp', 'prune_checkpoint_dir',
]

_logger = logging.getLogger(__name__)

MODEL_FILE = 'model.safetensors'
EMA_FILE = 'ema.safetensors'
STATE_FILE = 'training_state.pt'
CONFIG_FILE = 'train_config.json'
MANIFEST_FILE = 'manifest.json'
LAST_LINK = 'last'
CHECKPOINT_DIR = 'checkpoints'
TRASH_PREFIX = '.trash-'
_FORMAT = 'srdl-timm-checkpoint'
_FORMAT_VERSION = 1


class CheckpointError(InputError):
    """A checkpoint is missing, incomplete, truncated or corrupt (the message names the file). Exit status 2."""


def state_dict_for_save(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A module's unwrapped ``state_dict`` as detached, contiguous CPU copies (safetensors-ready)."""
    return {k: v.detach().to('cpu', copy=True).contiguous() for k, v in unwrap_model(module).state_dict().items()}


def save_safetensors_atomic(tensors: Dict[str, torch.Tensor], path: str,
                            metadata: Optional[Dict[str, str]] = None) -> None:
    """Save a flat tensor dict as safetensors at ``path`` atomically (:func:`srdl_timm.utils.atomic_write_bytes`)."""
    atomic_write_bytes(path, save(tensors, metadata=metadata))


# ------------------------------------------------------------------------------------------------------------
# RNG state (weights_only-friendly)
# ------------------------------------------------------------------------------------------------------------
def capture_rng_state() -> Dict[str, Any]:
    """Torch (CPU and every CUDA device), NumPy and Python RNG states as tensors/ints (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: Dict[str, Any] = {
        'torch': torch.get_rng_state(),
        'numpy': {
            'bit_generator': str(np_state[0]),
            'keys': torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            'pos': int(np_state[2]),
            'has_gauss': int(np_state[3]),
            'cached_gaussian': float(np_state[4]),
        },
        'python': {'version': int(py_version), 'state': torch.tensor(py_internal, dtype=torch.int64),
                   'gauss_next': py_gauss},
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only where the device count matches)."""
    torch.set_rng_state(state['torch'].to('cpu', torch.uint8))
    npst = state['numpy']
    np.random.set_state((npst['bit_generator'], npst['keys'].numpy().astype(np.uint32), int(npst['pos']),
                         int(npst['has_gauss']), float(npst['cached_gaussian'])))
    py = state['python']
    random.setstate((int(py['version']), tuple(int(v) for v in py['state'].tolist()), py['gauss_next']))
    cuda_states = state.get('cuda') or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            _logger.warning('checkpoint holds %d CUDA RNG states but %d devices are visible: CUDA RNG not restored',
                            len(cuda_states), torch.cuda.device_count())


# ------------------------------------------------------------------------------------------------------------
# checkpoint directories
# ------------------------------------------------------------------------------------------------------------
class Checkpoint:
    """A loaded, verified checkpoint: directory ``path``, ``model`` / ``ema`` state dicts, training ``state``,
    ``config`` and ``manifest``."""

    def __init__(self, path: str, model: Dict[str, torch.Tensor], ema: Optional[Dict[str, torch.Tensor]],
                 state: Dict[str, Any], config: Dict[str, Any], manifest: Dict[str, Any]) -> None:
        self.path = path
        self.model = model
        self.ema = ema
        self.state = state
        self.config = config
        self.manifest = manifest

    @property
    def epoch(self) -> int:
        """The epoch in progress (0-based) at the time of the checkpoint."""
        return int(self.state['epoch'])

    @property
    def batch_in_epoch(self) -> int:
        """Micro-batches of ``epoch`` already consumed (0 at an epoch boundary)."""
        return int(self.state['batch_in_epoch'])

    @property
    def global_step(self) -> int:
        """Optimizer updates done."""
        return int(self.state['global_step'])


def remove_stale_tmp(output_dir: str) -> List[str]:
    """Delete an interrupted run's ``.tmp-*`` / ``.trash-*`` directories and temporary ``last`` links; return them."""
    removed = []
    ckpt_root = os.path.join(output_dir, CHECKPOINT_DIR)
    if os.path.isdir(ckpt_root):
        for name in os.listdir(ckpt_root):
            if name.startswith(('.tmp-', TRASH_PREFIX)):
                shutil.rmtree(os.path.join(ckpt_root, name), ignore_errors=True)
                removed.append(name)
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        if name.startswith(f'.{LAST_LINK}.tmp-'):
            try:
                os.unlink(os.path.join(output_dir, name))
                removed.append(name)
            except OSError:
                pass
    if removed:
        _logger.info('removed %d leftover temporary or half-pruned checkpoint folder(s) of an interrupted run: %s',
                     len(removed), ', '.join(removed))
    return removed


def _check_weights_only_loadable(state: Dict[str, Any], path: str) -> None:
    """Fail before writing if ``state`` holds objects that ``torch.load(weights_only=True)`` would refuse."""
    allowed = (int, float, str, bool, type(None), bytes)  # exact types: subclasses pickle as other globals

    def walk(obj: Any, where: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if not isinstance(k, (str, int)):
                    raise TypeError(f'{path}: training state key {k!r} at {where} is not a str/int')
                walk(v, f'{where}.{k}')
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f'{where}[{i}]')
        elif not (isinstance(obj, torch.Tensor) or type(obj) in allowed):
            raise TypeError(f'{path}: training state holds a {type(obj).__name__} at {where}, which '
                            'torch.load(weights_only=True) cannot load')

    walk(state, 'state')


def _prune(ckpt_root: str, keep_last: int, protected: set) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (by step, then mtime) and the ``protected`` paths."""
    candidates = [os.path.join(ckpt_root, other) for other in os.listdir(ckpt_root)
                  if not other.startswith('.') and os.path.isdir(os.path.join(ckpt_root, other))]
    candidates.sort(key=_checkpoint_order, reverse=True)
    for path in candidates[keep_last:]:
        if os.path.realpath(path) not in protected:
            prune_checkpoint_dir(path)


def save_checkpoint(
        output_dir: str,
        model_state: Dict[str, torch.Tensor],
        training_state: Dict[str, Any],
        config: Dict[str, Any],
        ema_state: Optional[Dict[str, torch.Tensor]] = None,
        keep_last: int = 1,
        keep: Sequence[str] = (),
) -> str:
    """Write a checkpoint directory atomically, point ``output_dir/last`` at it, prune older ones.

    Args:
        output_dir: the run's output directory.
        training_state: int ``epoch``, ``batch_in_epoch``, ``global_step``; the rest ``weights_only``-loadable.
        config: JSON-serialisable training configuration.
        keep_last: how many of the newest checkpoints to keep (>= 1).
        keep: checkpoint directory paths never to delete.

    Returns:
        The new checkpoint directory.
    """
    if keep_last < 1:
        raise ValueError(f'keep_last must be >= 1, got {keep_last}')
    for key in ('epoch', 'batch_in_epoch', 'global_step'):
        if not isinstance(training_state.get(key), int):
            raise ValueError(f'training_state[{key!r}] must be an int')
    epoch, step = training_state['epoch'], training_state['global_step']
    ckpt_root = os.path.join(output_dir, CHECKPOINT_DIR)
    os.makedirs(ckpt_root, exist_ok=True)
    name = f'epoch-{epoch:04d}-batch-{training_state["batch_in_epoch"]:06d}-step-{step:08d}-{uuid.uuid4().hex[:8]}'
    final_dir = os.path.join(ckpt_root, name)
    tmp_dir = os.path.join(ckpt_root, f'.tmp-{name}')
    os.makedirs(tmp_dir)
    state = dict(training_state, format=_FORMAT, format_version=_FORMAT_VERSION)
    _check_weights_only_loadable(state, os.path.join(final_dir, STATE_FILE))
    try:
        # serialised in memory so that a full disk is an OSError naming the file
        files = {MODEL_FILE: save(model_state, metadata={'format': 'pt'})}
        if ema_state is not None:
            files[EMA_FILE] = save(ema_state, metadata={'format': 'pt'})
        buf = io.BytesIO()
        torch.save(state, buf)
        files[STATE_FILE] = buf.getbuffer()
        files[CONFIG_FILE] = (json.dumps(jsonable(config), indent=2) + '\n').encode('utf-8')
        for fn, data in files.items():
            write_synced(os.path.join(tmp_dir, fn), data)
        manifest = {
            'format': _FORMAT, 'format_version': _FORMAT_VERSION, 'epoch': epoch,
            'batch_in_epoch': training_state['batch_in_epoch'], 'global_step': step,
            'files': {fn: {'size': os.path.getsize(os.path.join(tmp_dir, fn)),
                           'sha256': sha256_file(os.path.join(tmp_dir, fn))} for fn in files},
        }
        write_synced(os.path.join(tmp_dir, MANIFEST_FILE), (json.dumps(manifest, indent=2) + '\n').encode('utf-8'))
        fsync_dir(tmp_dir)
        os.rename(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    fsync_dir(ckpt_root)

    # re-point output_dir/last atomically
    link = os.path.join(output_dir, LAST_LINK)
    tmp_link = os.path.join(output_dir, f'.{LAST_LINK}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}')
    os.symlink(os.path.join(CHECKPOINT_DIR, name), tmp_link)
    os.replace(tmp_link, link)
    fsync_dir(output_dir)
    _logger.info('checkpoint written: %s (epoch %d, step %d)', final_dir, epoch, step)

    _prune(ckpt_root, keep_last, {os.path.realpath(p) for p in keep} | {os.path.realpath(final_dir)})
    return final_dir


def prune_checkpoint_dir(path: str) -> None:
    """Delete a checkpoint directory crash-safely: atomic rename to a hidden ``.trash-…`` name, then delete."""
    parent, name = os.path.split(os.path.abspath(path))
    trash = os.path.join(parent, f'{TRASH_PREFIX}{name}')
    os.rename(path, trash)
    fsync_dir(parent)
    shutil.rmtree(trash, ignore_errors=True)


def _checkpoint_order(path: str) -> tuple:
    """Sort key: (global step, epoch, batch, mtime) from the directory name ``epoch-E-batch-B-step-S-id``."""
    parts = os.path.basename(path).split('-')
    try:
        epoch, batch, step = int(parts[1]), int(parts[3]), int(parts[5])
    except (IndexError, ValueError):
        epoch = batch = step = -1
    return step, epoch, batch, os.path.getmtime(path)


def find_last_checkpoint(output_dir: str) -> Optional[str]:
    """The directory ``output_dir/last`` points at, or None when there is no ``last`` link."""
    link = os.path.join(output_dir, LAST_LINK)
    if not os.path.lexists(link):
        return None
    target = os.path.realpath(link)
    if not os.path.isdir(target):
        raise CheckpointError(f'{link} points at {target}, which does not exist (checkpoint deleted?)')
    return target


def resolve_checkpoint_dir(path: str) -> str:
    """The checkpoint directory of a checkpoint directory, ``last`` link, output directory or file inside one."""
    if not os.path.exists(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    if os.path.isfile(path):
        path = os.path.dirname(os.path.abspath(path))
    path = os.path.realpath(path)
    if os.path.isfile(os.path.join(path, MANIFEST_FILE)) or os.path.isfile(os.path.join(path, STATE_FILE)):
        return path
    last = find_last_checkpoint(path)
    if last is not None:
        return last
    raise CheckpointError(f'{path} is neither a checkpoint directory (no {MANIFEST_FILE}) nor an output directory '
                          f'with a "{LAST_LINK}" checkpoint link')


def verify_checkpoint(ckpt_dir: str) -> Dict[str, Any]:
    """Check every file of the manifest for size and SHA-256; return the manifest, or raise :class:`CheckpointError`
    naming the missing, truncated or corrupt file."""
    manifest_path = os.path.join(ckpt_dir, MANIFEST_FILE)
    if not os.path.isfile(manifest_path):
        raise CheckpointError(f'{manifest_path} is missing: {ckpt_dir} is an incomplete checkpoint (the run was '
                              'interrupted while writing it); resume from the previous one')
    try:
        with open(manifest_path, encoding='utf-8') as f:
            manifest = json.load(f)
        files = manifest['files']
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f'{manifest_path} is corrupt ({e})') from e
    for name, info in files.items():
        path = os.path.join(ckpt_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(f'checkpoint file {path} is missing')
        size = os.path.getsize(path)
        if size != info['size']:
            raise CheckpointError(f'checkpoint file {path} is truncated or corrupt: {size} bytes, the manifest '
                                  f'records {info["size"]}')
        if sha256_file(path) != info['sha256']:
            raise CheckpointError(f'checkpoint file {path} is corrupt: its SHA-256 differs from the manifest')
    return manifest


def _load_state(path: str) -> Dict[str, Any]:
    state = read_weight_file(path, CheckpointError)
    if not isinstance(state, dict) or state.get('format') != _FORMAT:
        raise CheckpointError(f'{path} is not an srdl-timm training state')
    if int(state.get('format_version', 0)) > _FORMAT_VERSION:
        raise CheckpointError(f'{path} has format version {state["format_version"]}; this srdl-timm reads up to '
                              f'{_FORMAT_VERSION}')
    return state


def load_checkpoint(path: str, verify: bool = True) -> Checkpoint:
    """Load a checkpoint (directory, ``last`` link or output directory), first verifying the manifest if ``verify``;
    raise :class:`CheckpointError` naming a missing or corrupt file."""
    ckpt_dir = resolve_checkpoint_dir(path)
    manifest = verify_checkpoint(ckpt_dir) if verify else {}
    model = load_state_dict(os.path.join(ckpt_dir, MODEL_FILE), CheckpointError)
    ema_path = os.path.join(ckpt_dir, EMA_FILE)
    ema = load_state_dict(ema_path, CheckpointError) if os.path.isfile(ema_path) else None
    state = _load_state(os.path.join(ckpt_dir, STATE_FILE))
    config_path = os.path.join(ckpt_dir, CONFIG_FILE)
    try:
        with open(config_path, encoding='utf-8') as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f'{config_path} is missing or corrupt ({e})') from e
    _logger.info('loaded checkpoint %s (epoch %s, batch %s, step %s)', ckpt_dir, state.get('epoch'),
                 state.get('batch_in_epoch'), state.get('global_step'))
    return Checkpoint(ckpt_dir, model, ema, state, config, manifest)
