"""Reading what a weights folder holds: the one weight-file reader, the one Hub download, the one config reader.

Weights are read as safetensors or with ``torch.load(weights_only=True)``; every error is a :class:`ModelLoadError`
naming the file, field and fix.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
from numbers import Real
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor

from .errors import InputError
from .labels.thresholds import LabelThresholds
from .utils import PathLike

__all__ = [
    'ModelLoadError', 'WEIGHTS_FILENAME', 'WEIGHT_FILES', 'CONFIG_FILES', 'MODEL_ARG_TYPES', 'read_weight_file',
    'load_state_dict', 'weights_in', 'check_class_count', 'hub_download', 'hub_folder', 'read_config_json',
]

_logger = logging.getLogger(__name__)

#: The one weights file a published folder / Hub repo holds (timm's safetensors name).
WEIGHTS_FILENAME = 'model.safetensors'
#: weight files looked for in a folder, in this order
WEIGHT_FILES = (WEIGHTS_FILENAME, 'pytorch_model.bin', 'model.pth', 'checkpoint.pth.tar')
#: configuration files read beside weights, in this order: timm's (save_for_hf / srdl-publish), srdl-train's
CONFIG_FILES = ('config.json', 'train_config.json')
#: JSON types of the model arguments a config records (:func:`srdl_timm.loading.model_args` writes these)
MODEL_ARG_TYPES: Dict[str, Tuple[type, ...]] = {
    'backbone': (str,), 'num_classes': (int,), 'in_chans': (int,), 'global_pool': (str,), 'embed_dim': (int,),
    'graph_layers': (int,), 'graph_kind': (str,), 'graph_neighbors': (int,), 'use_gcn': (bool,), 'use_ca': (bool,),
    'use_sa': (bool,), 'oe_topk': (int,), 'oe_alpha': (Real,), 'attention': (str,), 'oe_erase': (str,),
    'attention_impl': (str,), 'backbone_kwargs': (dict,), 'img_size': (int, list),
}
_TYPE_WORDS = {str: 'a string', int: 'an integer', bool: 'true or false', Real: 'a number', dict: 'a JSON object',
               list: 'a list'}
_CROP_MODES = ('center', 'squash', 'border')  # timm.data.create_transform's crop_mode values


class ModelLoadError(InputError):
    """Weights or their configuration do not describe a loadable model; the message names the file and the
    tensors or config field at fault."""


def read_weight_file(path: PathLike, error: Type[InputError] = ModelLoadError,
                     keys: Optional[Sequence[str]] = None) -> Any:
    """The one reader of weight files: safetensors, else ``torch.load(weights_only=True)`` with only
    ``argparse.Namespace`` allow-listed (a timm ``train.py`` checkpoint's ``args``).

    Unlike ``timm.models.load_state_dict`` it keeps a checkpoint's other entries and names the file in its errors.

    Args:
        path: the file.
        error: the :class:`InputError` subclass raised.
        keys: only these entries.

    Returns:
        What the file holds, on the CPU.
    """
    import safetensors.torch

    path = Path(path)
    if not path.is_file():
        raise error(f'weights file not found: {path}')
    if path.suffix == '.safetensors':
        try:
            if keys is None:
                return safetensors.torch.load_file(os.fspath(path), device='cpu')
            with safetensors.safe_open(os.fspath(path), framework='pt', device='cpu') as f:
                return {k: f.get_tensor(k) for k in keys if k in f.keys()}
        except Exception as e:  # SafetensorError (truncated header/data), OSError
            raise error(f'{path} is not a readable safetensors file ({e}): it is truncated or corrupt; '
                        'copy or download it again') from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise error(f'{path} is a pickle holding more than tensors, so it was not loaded (unpickling it could run '
                    'code). Where it was written, save its weights as safetensors: '
                    'safetensors.torch.save_file(model.state_dict(), "model.safetensors")') from e
    except Exception as e:  # truncated zip, EOF, not a torch file
        raise error(f'{path} is not a readable PyTorch file ({type(e).__name__}: {e}): it is truncated or corrupt; '
                    'copy or download it again') from e
    if keys is not None and isinstance(obj, dict):
        return {k: obj[k] for k in keys if k in obj}
    return obj


def load_state_dict(path: PathLike, error: Type[InputError] = ModelLoadError) -> Dict[str, Tensor]:
    """The state dict of a weight file: a checkpoint's ``state_dict`` / ``model`` / ``state_dict_ema`` entry,
    cleaned by timm's ``clean_state_dict``."""
    from timm.models import clean_state_dict

    state = read_weight_file(path, error)
    if isinstance(state, dict):
        for key in ('state_dict', 'model', 'state_dict_ema'):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise error(f'{path} holds no state dict of tensors (got {type(state).__name__})')
    return clean_state_dict(state)


def weights_in(folder: PathLike) -> Path:
    """The weight file of a folder: the first of :data:`WEIGHT_FILES` it holds (else :class:`ModelLoadError`)."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(f'{folder} holds no weights ({", ".join(WEIGHT_FILES)}): give the weights file itself, or '
                         'a folder written by srdl-train (--output) or srdl-publish')


def check_class_count(weights: PathLike, state: Mapping[str, Tensor], config_file: PathLike,
                      num_classes: Optional[int]) -> None:
    """Raise a :class:`ModelLoadError` naming both files when ``config_file``'s ``num_classes`` is not the class count
    of the weights' classifier (``classifier.bias`` in ``state``, the tensors of ``weights``)."""
    held = state.get('classifier.bias')
    if held is not None and held.ndim == 1 and num_classes is not None and num_classes != held.shape[0]:
        raise ModelLoadError(f'{weights} holds weights for {held.shape[0]} classes (classifier.bias) but the model '
                             f'was asked for {num_classes} by {config_file} (its num_classes): that config does not '
                             'belong to these weights; restore the config.json / train_config.json written with them')


def hub_download(repo: str, filename: str, cache_dir: Optional[PathLike] = None) -> Path:
    """``filename`` of Hub ``repo`` (``org/name[@revision]``) through timm's ``download_from_hf``; a failure is a
    :class:`ModelLoadError` naming the repo, the file and offline mode."""
    from huggingface_hub import constants
    from timm.models._hub import download_from_hf

    try:
        return Path(download_from_hf(repo, filename, cache_dir=cache_dir))
    except Exception as e:  # huggingface_hub's errors: not cached, not found, no network, bad id
        if constants.HF_HUB_OFFLINE:
            raise ModelLoadError(
                f'{filename} of hf-hub:{repo} is not in the Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}) '
                'and offline mode (HF_HUB_OFFLINE=1) forbids downloading it: run once with network access (unset '
                'HF_HUB_OFFLINE), or point HF_HUB_CACHE at a cache that holds it') from e
        raise ModelLoadError(f'{filename} of hf-hub:{repo} could not be fetched ({type(e).__name__}: {e}); check the '
                             'repo id and your connection, or set HF_HUB_OFFLINE=1 to use the cache only') from e


def hub_folder(repo: str) -> Path:
    """The cache snapshot folder of ``hf-hub:repo`` holding its config.json and weights (model.safetensors, else
    pytorch_model.bin), downloaded by :func:`hub_download` where not cached."""
    folder = hub_download(repo, 'config.json').parent
    first = None
    for name in (WEIGHTS_FILENAME, 'pytorch_model.bin'):
        try:
            hub_download(repo, name)
            return folder
        except ModelLoadError as e:
            first = first or e
    raise first


def _is(value: Any, types: Tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true/false is no number
    return isinstance(value, types)


class _Fields:
    """Field checks of one config file; every error names the file, the field, the value and the fix."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, field: str, value: Any, expected: str) -> None:
        raise ModelLoadError(f'{self.file}: "{field}" is {json.dumps(value)}, not {expected}; correct that field or '
                             f'restore the {self.file.name} written with the weights')

    def typed(self, field: str, value: Any, types: Tuple[type, ...]) -> None:
        if value is not None and not _is(value, types):
            self.fail(field, value, ' or '.join(_TYPE_WORDS[t] for t in types))

    def count(self, field: str, value: Any) -> Optional[int]:
        if value is not None and not (_is(value, (int,)) and value >= 0):
            self.fail(field, value, 'a class count (an integer >= 0)')
        return value

    def obj(self, field: str, value: Any) -> Dict[str, Any]:
        if value is not None and not isinstance(value, dict):
            self.fail(field, value, 'a JSON object')
        return value or {}

    def numbers(self, field: str, value: Any, positive: bool = False) -> None:
        values = value if isinstance(value, list) else [value]
        if not values or not all(_is(v, (Real,)) and (v > 0 or not positive) for v in values):
            self.fail(field, value, f'a list of per-channel {"positive numbers" if positive else "numbers"}')

    def data_config(self, prefix: str, data: Dict[str, Any]) -> None:
        """The pre-processing fields (timm's pretrained_cfg / srdl-train's data_config)."""
        from timm.data.transforms import str_to_interp_mode

        size = data.get('input_size')
        if size is not None and not (isinstance(size, list) and len(size) == 3
                                     and all(_is(v, (int,)) and v > 0 for v in size)):
            self.fail(f'{prefix}.input_size', size, '[channels, height, width] of positive integers')
        for key, positive in (('mean', False), ('std', True)):
            if data.get(key) is not None:
                self.numbers(f'{prefix}.{key}', data[key], positive)
        interpolation = data.get('interpolation')
        if interpolation is not None:
            try:
                str_to_interp_mode(interpolation)
            except (KeyError, TypeError):
                self.fail(f'{prefix}.interpolation', interpolation,
                          'an interpolation timm knows (nearest, bilinear, bicubic, ...)')
        crop_pct = data.get('crop_pct')
        if crop_pct is not None and not (_is(crop_pct, (Real,)) and crop_pct > 0):
            self.fail(f'{prefix}.crop_pct', crop_pct, 'a positive number (eval crop / resize, e.g. 0.875)')
        crop_mode = data.get('crop_mode')
        if crop_mode is not None and crop_mode not in _CROP_MODES:
            self.fail(f'{prefix}.crop_mode', crop_mode, f'one of {", ".join(_CROP_MODES)}')


def _check_fields(config: Dict[str, Any], file: Path) -> None:
    """Every field the loaders use, in timm's config.json layout or srdl-train's train_config.json layout."""
    fields = _Fields(file)
    timm_layout = 'architecture' in config
    name_key = 'architecture' if timm_layout else 'model'
    arch = config.get(name_key)
    if not arch:
        raise ModelLoadError(f'{file} names no model ("architecture" in config.json, "model" in train_config.json)')
    fields.typed(name_key, arch, (str,))
    # class counts: top level, then the argument records; every one given must agree
    counts: List[Tuple[str, int]] = []
    top = fields.count('num_classes', config.get('num_classes'))
    if top is not None:
        counts.append(('num_classes', top))
    records = ('model_args',) if timm_layout else ('model_kwargs', 'model_args')
    names_key, names = 'label_names', config.get('label_names')
    for record in records:
        args = fields.obj(record, config.get(record))
        for key, types in MODEL_ARG_TYPES.items():
            fields.typed(f'{record}.{key}', args.get(key), types)
        if args.get('num_classes') is not None:
            counts.append((f'{record}.num_classes', fields.count(f'{record}.num_classes', args['num_classes'])))
        if not config.get('label_names') and args.get('label_names'):
            names_key, names = f'{record}.label_names', args['label_names']
    if not timm_layout:  # srdl-train's top-level model flags
        for key, types in MODEL_ARG_TYPES.items():
            fields.typed(key, config.get(key), types)
    for (first, a), (other, b) in zip(counts, counts[1:]):
        if a != b:
            raise ModelLoadError(f'{file}: "{first}" is {a} but "{other}" is {b}; the file contradicts itself: '
                                 f'restore the {file.name} written with the weights')
    if names:
        if not (isinstance(names, list) and all(_is(n, (str, Real)) for n in names)):
            fields.fail(names_key, names, 'a list of class names')
        if counts and counts[-1][1] and len(names) != counts[-1][1]:
            raise ModelLoadError(f'{file}: "{names_key}" lists {len(names)} names but "{counts[-1][0]}" is '
                                 f'{counts[-1][1]}: give one name per class, in output order, or restore the '
                                 f'{file.name} written with the weights')
    data_key = 'pretrained_cfg' if timm_layout else 'data_config'
    fields.data_config(data_key, fields.obj(data_key, config.get(data_key)))
    try:
        LabelThresholds.from_json(config, str(file), counts[-1][1] if counts and counts[-1][1] else None)
    except InputError as e:
        raise ModelLoadError(f'{e}; correct that field or restore the {file.name} written with the weights') from e


def read_config_json(file: PathLike) -> Dict[str, Any]:
    """The one reader of the config beside weights (``config.json``, ``train_config.json``), every field the
    loaders use checked (unlike timm's ``load_model_config_from_path``).

    Raises:
        ModelLoadError: missing file, invalid JSON, or a field of the wrong type or value (naming file and field).
    """
    file = Path(file)
    try:
        config = json.loads(file.read_text(encoding='utf-8-sig'))
    except FileNotFoundError:
        raise ModelLoadError(f'{file} not found: a published folder holds config.json beside model.safetensors '
                             '(srdl-publish --local-dir)') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f'{file} is not valid JSON ({e}); restore the file the run or srdl-publish wrote') from e
    if not isinstance(config, dict):
        raise ModelLoadError(f'{file} must hold a JSON object, got {type(config).__name__}')
    _check_fields(config, file)
    return config
