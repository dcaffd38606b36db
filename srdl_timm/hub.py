"""Publishing SRDL weights in timm's Hugging Face Hub layout (model.safetensors, config.json, model card): a local
folder or a push to the Hub, loadable with ``timm.create_model('local-dir:...' / 'hf-hub:...', pretrained=True)``."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from safetensors import SafetensorError

from .errors import InputError
from .labels import model_label_thresholds, read_thresholds_file, store_label_thresholds
from .loading import load_model, read_model_config
from .loading import model_args as srdl_model_args
from .manifest import manifest_markdown, register_weights, verify_manifest
from .model_card import model_card, normalise_metrics
from .models.pretrained import (
    MANIFEST_SCHEMA_VERSION, REPO_ID_RE, ChecksumMismatchError, MissingPretrainedWeightsError, load_manifest,
    manifest_path, verify_sha256, weights_dir,
)
from .utils import PathLike, atomic_write_bytes, sha256_file
from .weight_files import WEIGHTS_FILENAME, read_config_json, read_weight_file

__all__ = [
    'PublishResult', 'load_for_publishing', 'timm_checkpoint_model', 'save_pretrained_dir', 'publish', 'push_folder',
    'srdl_model_args', 'model_card', 'PUBLISHED_FILES',
    # the registry (srdl_timm.manifest / srdl_timm.models.pretrained), re-exported
    'MANIFEST_SCHEMA_VERSION', 'WEIGHTS_FILENAME', 'ChecksumMismatchError', 'MissingPretrainedWeightsError',
    'weights_dir', 'manifest_path', 'sha256_file', 'verify_sha256', 'load_manifest', 'register_weights',
    'verify_manifest', 'manifest_markdown',
]

_logger = logging.getLogger(__name__)

#: The files of a published folder (timm's Hub layout), and nothing else.
PUBLISHED_FILES = ('config.json', WEIGHTS_FILENAME, 'README.md')


@dataclasses.dataclass
class PublishResult:
    """What :func:`publish` / :func:`save_pretrained_dir` produced (``url``/``revision`` after a push)."""
    repo_id: Optional[str]
    local_dir: Optional[Path]
    url: Optional[str]
    revision: Optional[str]
    sha256: str
    files: Tuple[str, ...]
    config: Dict[str, Any]


_TIMM_CHECKPOINT_SUFFIXES = ('.pth', '.tar', '.pt', '.bin')


def timm_checkpoint_model(path: PathLike) -> Dict[str, Any]:
    """The ``model``, ``num_classes`` and ``model_kwargs`` a timm ``train.py`` checkpoint records (or empty)."""
    if not os.fspath(path).endswith(_TIMM_CHECKPOINT_SUFFIXES) or not Path(path).is_file():
        return {}
    try:
        checkpoint = read_weight_file(path)
    except InputError:  # load_model reads the file again and names the problem
        return {}
    if not isinstance(checkpoint, dict):
        return {}
    args = checkpoint.get('args')
    args = vars(args) if isinstance(args, argparse.Namespace) else (args if isinstance(args, dict) else {})
    out: Dict[str, Any] = {}
    model = checkpoint.get('arch') or args.get('model')
    if isinstance(model, str) and model:
        out['model'] = model
    if isinstance(args.get('num_classes'), int):
        out['num_classes'] = args['num_classes']
    if isinstance(args.get('model_kwargs'), dict) and args['model_kwargs']:
        out['model_kwargs'] = dict(args['model_kwargs'])
    return out


def load_for_publishing(
        checkpoint: Optional[PathLike] = None,
        model: Optional[str] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        label_names: Optional[Sequence[str]] = None,
        thresholds_file: Optional[PathLike] = None,
) -> torch.nn.Module:
    """The model to publish, loaded strictly by :func:`srdl_timm.loading.load_model`.

    Args:
        checkpoint: weights file or folder; ``None`` loads ``model``'s pretrained weights.
        model, model_kwargs, label_names: override the recorded ones.
        thresholds_file: per-class decision thresholds replacing the weights' own.
    """
    kwargs = dict(model_kwargs or {})
    if label_names is not None:
        kwargs['label_names'] = list(label_names)
    num_classes = None
    if checkpoint is not None and not read_model_config(checkpoint):
        recorded = timm_checkpoint_model(checkpoint)
        model = model or recorded.get('model')
        num_classes = recorded.get('num_classes')
        kwargs = {**recorded.get('model_kwargs', {}), **kwargs}
    net = load_model(model, checkpoint, pretrained=checkpoint is None, num_classes=num_classes, model_kwargs=kwargs)
    if thresholds_file is not None:
        store_label_thresholds(net, read_thresholds_file(os.fspath(thresholds_file), net.num_classes,
                                                         getattr(net, 'label_names', None)))
    return net


def _check_srdl(model: torch.nn.Module) -> None:
    from .models.srdl import SRDL
    if not isinstance(model, SRDL):
        raise InputError(f'expected an SRDL model (timm.create_model("srdl_...")), got {type(model).__name__}')
    if not getattr(model, 'pretrained_cfg', None) or not model.pretrained_cfg.get('architecture'):
        raise InputError('the model has no timm pretrained_cfg/architecture: build it with '
                         'timm.create_model("srdl_<variant>", ...) rather than SRDL(...) so that config.json can '
                         'name its architecture')


def _data_config_from_protocol(protocol: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    out = {}
    if protocol.get('input_size'):
        out['input_size'] = tuple(int(v) for v in protocol['input_size'])
    for key in ('interpolation', 'mean', 'std'):
        if protocol.get(key) is not None:
            out[key] = tuple(protocol[key]) if isinstance(protocol[key], (list, tuple)) else protocol[key]
    return out or None


def save_pretrained_dir(
        model: torch.nn.Module,
        path: PathLike,
        *,
        repo_id: Optional[str] = None,
        metrics: Union[None, PathLike, Mapping[str, Any]] = None,
        protocol: Optional[Mapping[str, Any]] = None,
        dataset: Optional[str] = None,
        hub_dataset: Optional[str] = None,
        license: Optional[str] = None,
        recipe: Optional[str] = None,
        data_config: Optional[Mapping[str, Any]] = None,
        description: Optional[str] = None,
) -> PublishResult:
    """Write ``model`` as a timm Hub folder: model.safetensors, config.json and a README.md model card.

    Args:
        model: an SRDL model built with ``timm.create_model``.
        path: the folder (created; it may hold only the three files written here).
        repo_id: the Hub repo the folder is meant for, if any.
        metrics, protocol: an srdl-validate report (path or dict) or metric values, and protocol overrides.
        data_config: pre-processing to record (default: the protocol's, else the model's).
    """
    _check_srdl(model)
    if repo_id is not None and not REPO_ID_RE.match(repo_id):
        raise InputError(f'repo_id must look like "org/name", got {repo_id!r}')
    values, proto, metric_names = normalise_metrics(metrics, protocol)
    label_names = _publish_label_names(model, metric_names)
    if data_config is None:
        data_config = _data_config_from_protocol(proto)

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    others = sorted(p.name for p in folder.iterdir() if p.name not in PUBLISHED_FILES)
    if others:
        raise FileExistsError(f'{folder} already holds {others}: publish into an empty folder (everything in it '
                              'would be uploaded / found by timm\'s local-dir loader)')

    _save_for_hf(model, folder, label_names, data_config)
    # safetensors writes a private (0600) file; give the weights config.json's (the umask's) permissions
    os.chmod(folder / WEIGHTS_FILENAME, stat.S_IMODE((folder / 'config.json').stat().st_mode))
    config = read_config_json(folder / 'config.json')
    digest = sha256_file(folder / WEIGHTS_FILENAME)
    num_params = sum(p.numel() for p in model.parameters())
    readme = model_card(config, repo_id=repo_id, local_dir=folder, metrics=values, protocol=proto, dataset=dataset,
                        hub_dataset=hub_dataset, license=license, recipe=recipe, sha256=digest, num_params=num_params,
                        description=description)
    atomic_write_bytes(folder / 'README.md', readme.encode('utf-8'))
    files = tuple(sorted(p.name for p in folder.iterdir()))
    _logger.info('wrote %s: %s (model.safetensors sha256 %s)', folder, ', '.join(files), digest)
    return PublishResult(repo_id=repo_id, local_dir=folder, url=None, revision=None, sha256=digest, files=files,
                         config=config)


def publish(
        model: torch.nn.Module,
        repo_id: str,
        *,
        local_dir: Optional[PathLike] = None,
        metrics: Union[None, PathLike, Mapping[str, Any]] = None,
        protocol: Optional[Mapping[str, Any]] = None,
        private: bool = False,
        commit_message: str = 'Add SRDL weights (model.safetensors, config.json, model card)',
        token: Optional[str] = None,
        revision: Optional[str] = None,
        create_pr: bool = False,
        dataset: Optional[str] = None,
        hub_dataset: Optional[str] = None,
        license: Optional[str] = None,
        recipe: Optional[str] = None,
        data_config: Optional[Mapping[str, Any]] = None,
        description: Optional[str] = None,
) -> PublishResult:
    """Push ``model`` to the Hugging Face Hub in timm's layout, or write that folder to ``local_dir``.

    Args:
        model: an SRDL model built with ``timm.create_model``.
        repo_id: ``org/name`` on the Hub.
        local_dir: write the folder here instead of pushing (no network).
        private, commit_message, token, revision, create_pr: Hub options.
        Others: see :func:`save_pretrained_dir`.
    """
    card = dict(metrics=metrics, protocol=protocol, dataset=dataset, hub_dataset=hub_dataset, license=license,
                recipe=recipe, data_config=data_config, description=description)
    if local_dir is not None:
        return save_pretrained_dir(model, local_dir, repo_id=repo_id, **card)
    with tempfile.TemporaryDirectory() as tmp:
        staged = save_pretrained_dir(model, tmp, repo_id=repo_id, **card)
        pushed = push_folder(tmp, repo_id, private=private, commit_message=commit_message, token=token,
                             revision=revision, create_pr=create_pr)
    return dataclasses.replace(pushed, config=staged.config)


def push_folder(
        folder: PathLike,
        repo_id: str,
        *,
        private: bool = False,
        commit_message: str = 'Add SRDL weights (model.safetensors, config.json, model card)',
        token: Optional[str] = None,
        revision: Optional[str] = None,
        create_pr: bool = False,
) -> PublishResult:
    """Upload a folder of :func:`save_pretrained_dir` to the Hub (``create_repo`` + ``upload_folder``)."""
    import timm
    from huggingface_hub import HfApi

    folder = Path(folder)
    files = tuple(sorted(p.name for p in folder.iterdir()))
    if files != tuple(sorted(PUBLISHED_FILES)):
        raise InputError(f'{folder} holds {list(files)}; a published folder holds exactly {sorted(PUBLISHED_FILES)} '
                         '(write it with srdl-publish --local-dir / save_pretrained_dir)')
    config = read_config_json(folder / 'config.json')
    digest = sha256_file(folder / WEIGHTS_FILENAME)
    api = HfApi(token=token, library_name='timm', library_version=timm.__version__)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = repo_url.repo_id
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
                             commit_message=commit_message)
    _logger.info('pushed %s to %s (commit %s)', ', '.join(files), repo_id, info.oid)
    return PublishResult(repo_id=repo_id, local_dir=None, url=info.commit_url, revision=info.oid, sha256=digest,
                         files=files, config=config)


def _publish_label_names(model: torch.nn.Module, metric_names: Optional[List[str]]) -> Optional[List[str]]:
    """The label names to publish: the model's, its pretrained_cfg's, else the metrics' (checked to agree)."""
    label_names = list(model.label_names) if model.label_names is not None else None
    source_names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if label_names is None and source_names and len(source_names) == model.num_classes:
        label_names = [str(n) for n in source_names]  # a model loaded from a published folder / Hub repo
        _logger.info('label_names taken from the model\'s pretrained_cfg (the weights it was loaded from)')
    if metric_names is not None and label_names is not None and metric_names != label_names:
        raise InputError(f'the metrics were computed for classes {metric_names[:5]}... but the model\'s label_names '
                         f'are {label_names[:5]}...: publish metrics of this model on its own classes')
    if label_names is None:
        label_names = metric_names
    if label_names is not None and len(label_names) != model.num_classes:
        raise InputError(f'{len(label_names)} label names for a model with {model.num_classes} classes')
    if label_names is None and model.num_classes:
        _logger.warning('publishing without label_names: users will not know which output is which class '
                        '(build the model with label_names=... or pass an srdl-validate report)')
    return label_names


def _save_for_hf(model: torch.nn.Module, folder: Path, label_names: Optional[List[str]],
                 data_config: Optional[Mapping[str, Any]]) -> None:
    """timm's ``save_for_hf`` with ``model_args`` exactly :func:`srdl_model_args`, label names and thresholds."""
    from timm.models import save_for_hf
    model_args = srdl_model_args(model)
    model_config: Dict[str, Any] = {}
    if label_names is not None:
        model_config['label_names'] = label_names
    thresholds = model_label_thresholds(model)
    if thresholds is not None:
        model_config.update(thresholds.to_json())
    saved_args = model.__dict__.get('_model_args')
    # config.json's model_args must be exactly srdl_model_args(), not merged with the factory's recorded kwargs
    model._model_args = {}
    try:
        save_for_hf(model, folder, model_config=model_config, model_args=model_args, safe_serialization=True,
                    data_config=dict(data_config) if data_config else None)
    except OSError as e:  # config.json (written after the weights), by Python, without naming the file
        raise OSError(e.errno, e.strerror, e.filename or str(folder / 'config.json')) from e
    except SafetensorError as e:  # the weights: a full disk is a Rust I/O error; give the OS error back, named
        code = re.search(r'os error (\d+)', str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(folder / WEIGHTS_FILENAME)) from e
    finally:
        if saved_args is None:
            del model._model_args
        else:
            model._model_args = saved_args
