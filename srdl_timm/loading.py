"""The one strict model loader: a checkpoint, run folder, published folder, Hub repo or tag -> the exact model.

:func:`load_model` rebuilds the architecture the config beside the weights records and loads every tensor
strictly: a tensor or class count that does not fit is a :class:`~srdl_timm.weight_files.ModelLoadError` naming
the file, never a re-initialised head.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .errors import InputError
from .labels import LabelThresholds, store_label_names, store_label_thresholds
from .layers import state_graph_kind
from .models.pretrained import check_pretrained_weights
from .models.srdl import SRDL, check_graph_kind
from .utils import PathLike
from .weight_files import (
    CONFIG_FILES, ModelLoadError, check_class_count, hub_folder, load_state_dict, read_config_json, weights_in,
)

__all__ = ['read_model_config', 'model_args', 'load_model', 'ModelSpec', 'load_model_from_spec']

_logger = logging.getLogger(__name__)

#: ``SRDL.__init__`` arguments that are not architecture: run-time/training switches and category inputs whose
#: values are in the weights (label-graph nodes) or in the config's top-level ``label_names``
_NOT_MODEL_ARGS = frozenset({'pretrained_backbone', 'label_embeddings', 'label_names', 'label_thresholds',
                             'object_erasing', 'drop_rate', 'drop_path_rate', 'device', 'dtype'})
_DATA_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


def _srdl_params() -> Tuple[str, ...]:
    return tuple(p for p in inspect.signature(SRDL.__init__).parameters if p != 'self')


def _config_file(path: Path) -> Optional[Path]:
    folder = path if path.is_dir() else path.parent
    for name in CONFIG_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_model_config(path: PathLike) -> Dict[str, Any]:
    """The model configuration recorded beside weights (``config.json`` or ``train_config.json``).

    Returns:
        ``{'architecture', 'num_classes', 'label_names', 'model_args', 'pretrained_cfg', 'trained_on',
        'label_thresholds', 'config_file'}``; an empty dict when no config exists.

    Raises:
        srdl_timm.weight_files.ModelLoadError: invalid JSON or a field of the wrong type or value.
    """
    file = _config_file(Path(path))
    if file is None:
        return {}
    config = read_config_json(file)
    params = set(_srdl_params())
    trained_on = None
    if 'architecture' in config:  # timm config.json
        arch = config['architecture']
        args = config.get('model_args') or {}
        data = config.get('pretrained_cfg') or {}
    else:  # srdl-train train_config.json: top-level flags, model_kwargs, then the resolved model_args record
        arch = config.get('model')
        if config.get('data') and config.get('root'):
            details = [f'{config["train_split"]} split'] if config.get('train_split') else []
            details += [config['ann_file']] if config.get('ann_file') else []
            trained_on = f'{config["data"]} {config["root"]}' + (f' ({", ".join(details)})' if details else '')
        # --img-size is the data's size there, not SRDL's img_size (that one is in model_args)
        args = {k: v for k, v in config.items() if k in params and k != 'img_size' and v is not None}
        for key in ('model_kwargs', 'model_args'):
            args.update(config.get(key) or {})
        data = config.get('data_config') or {}
    args = dict(args)
    label_names = config.get('label_names') or args.get('label_names') or None
    for key in _NOT_MODEL_ARGS:
        args.pop(key, None)
    num_classes = args.get('num_classes', config.get('num_classes'))
    if num_classes is not None:
        args['num_classes'] = num_classes
    if label_names is not None:  # a list: checked by read_config_json
        label_names = [str(n) for n in label_names]
    return {
        'architecture': arch,
        'num_classes': num_classes,
        'label_names': label_names,
        'model_args': args,
        'pretrained_cfg': {k: tuple(data[k]) if isinstance(data[k], list) else data[k]
                           for k in _DATA_KEYS if data.get(k) is not None},
        'trained_on': trained_on,
        'label_thresholds': LabelThresholds.from_json(config, str(file)),
        'config_file': str(file),
    }


def model_args(model: nn.Module) -> Dict[str, Any]:
    """Construction arguments that rebuild ``model``'s architecture exactly (its weights then load strictly).

    Label names go to the config's top level and label-graph nodes are in the weights, so neither is here; other
    timm models give ``num_classes`` only.

    Raises:
        InputError: ``backbone_kwargs`` that JSON cannot hold.
    """
    if not isinstance(model, SRDL):
        return {'num_classes': int(getattr(model, 'num_classes', 0))}
    args: Dict[str, Any] = dict(
        backbone=model.backbone_name,
        num_classes=int(model.num_classes),
        in_chans=int(model.in_chans),
        global_pool=model.global_pool,
        embed_dim=int(model.embed_dim),
        graph_layers=int(model.graph_layers),
        graph_kind=model.graph_kind,
        graph_neighbors=int(model.graph_neighbors),
        use_gcn=bool(model.use_gcn),
        use_ca=bool(model.use_ca),
        use_sa=bool(model.use_sa),
        oe_topk=int(model.object_eraser.topk),
        oe_alpha=float(model.object_eraser.alpha),
        attention=model.attention,
        oe_erase=model.oe_erase,
        attention_impl=model.attention_impl,
    )
    img_size = getattr(model, 'img_size', None)
    if img_size is not None:
        args['img_size'] = int(img_size) if isinstance(img_size, int) else [int(s) for s in img_size]
    backbone_kwargs = dict(getattr(model, '_model_args', {}).get('backbone_kwargs') or {})
    backbone_kwargs.pop('drop_path_rate', None)
    if backbone_kwargs:
        try:
            json.dumps(backbone_kwargs)
        except (TypeError, ValueError) as e:
            raise InputError(f'backbone_kwargs {backbone_kwargs!r} are not JSON-serialisable, so no config could '
                             'rebuild the model') from e
        args['backbone_kwargs'] = backbone_kwargs
    return args


def _short(args: Mapping[str, Any]) -> str:
    return ', '.join(f'{k}={v!r}' for k, v in args.items()
                     if k not in ('label_names', 'label_embeddings', 'label_thresholds'))


def _names(keys: List[str], limit: int = 6) -> str:
    return ', '.join(keys[:limit]) + (f' (+{len(keys) - limit} more)' if len(keys) > limit else '')


def _check_fit(model: nn.Module, state: Mapping[str, Tensor], file: Path, arch: str, args: Mapping[str, Any],
               where: str) -> None:
    """Raise a ModelLoadError naming ``file`` and the tensors if ``state`` does not fit ``model`` exactly."""
    if isinstance(model, SRDL):
        check_graph_kind(dict(state), model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f'{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model'
                for k in own if k in state and state[k].shape != own[k].shape]
    if not (missing or unexpected or reshaped):
        return
    classes = state.get('classifier.bias')
    if classes is not None and 'classifier.bias' in own and classes.shape != own['classifier.bias'].shape:
        raise ModelLoadError(
            f'{file} holds weights for {classes.shape[0]} classes but the model was asked for '
            f'{own["classifier.bias"].shape[0]} ({where}); loading would re-initialise the classifier. Drop '
            '--num-classes / num_classes to use the weights\' classes (to fine-tune on new classes, build with '
            'timm.create_model(..., pretrained=True, num_classes=N) instead)')
    parts = []
    if reshaped:
        parts.append('reshaped ' + _names(reshaped, 3))
    if missing:
        parts.append('missing ' + _names(missing))
    if unexpected:
        parts.append('unexpected ' + _names(unexpected))
    first_conv = [r for r in reshaped if r.startswith(('backbone.conv1', 'backbone.conv_stem', 'backbone.stem'))]
    hint = (' (the first convolution differs: check in_chans)' if first_conv else '')
    raise ModelLoadError(f'{file} does not fit {arch}({_short(args)}) built from {where}: {"; ".join(parts)}{hint}. '
                         'Pass the model arguments the weights were trained with (the config beside them, '
                         '--model-kwargs)')


def _split_tag(name: str) -> Tuple[str, Optional[str]]:
    from timm.models import split_model_name_tag
    arch, tag = split_model_name_tag(name)
    return arch, (tag or None)


#: pretrained_cfg entries that describe a tag's weights (where they come from, what they were trained on)
_TAG_IDENTITY_KEYS = ('tag', 'file', 'url', 'hf_hub_id', 'hf_hub_filename', 'source', 'description', 'dataset',
                      'label_names', 'notes', 'origin_url', 'paper_ids', 'paper_name', 'license')


def _build_and_load(arch: str, args: Dict[str, Any], file: Path, state: Dict[str, Tensor], where: str,
                    strict: bool, pretrained_cfg: Optional[Mapping[str, Any]] = None) -> nn.Module:
    import timm
    if not timm.is_model(arch):
        raise ModelLoadError(f'{where} names model {arch!r}, which timm does not know (srdl_* names are registered '
                             'by `import srdl_timm`; see timm.list_models())')
    nodes = state.get('label_graph.node_features')
    if nodes is not None:
        args.setdefault('embed_dim', int(nodes.shape[1]))
        if nodes.shape[0] == args.get('num_classes'):
            args['label_embeddings'] = nodes  # the weights' own nodes: nothing random, nothing looked up
    if state_graph_kind(state) is not None:  # a config without graph_kind (weights alone): the weights' own kind
        args.setdefault('graph_kind', state_graph_kind(state))
    if 'label_graph.neighbor_index' in state:
        args.setdefault('graph_neighbors', int(state['label_graph.neighbor_index'].shape[1]))
    try:
        model = timm.create_model(arch, pretrained=False, **args)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f'cannot build {arch}({_short(args)}) from {where}: {e}') from e
    if strict:
        _check_fit(model, state, file, arch, args, where)
    model.load_state_dict(state, strict=strict)
    # timm fills pretrained_cfg from the architecture's default tag even with pretrained=False; these weights are
    # the file's, so keep the tag's pre-processing but nothing that describes the tag's weights, and their own
    # class count
    model.pretrained_cfg = dict({k: v for k, v in (getattr(model, 'pretrained_cfg', None) or {}).items()
                                 if k not in _TAG_IDENTITY_KEYS}, num_classes=model.num_classes)
    if pretrained_cfg:
        model.pretrained_cfg = dict(getattr(model, 'pretrained_cfg', None) or {}, **pretrained_cfg)
    return model


def load_model(
        model: Optional[str],
        checkpoint: Optional[PathLike] = None,
        *,
        pretrained: bool = False,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        strict: bool = True,
        device: Union[str, torch.device] = 'cpu',
) -> nn.Module:
    """Load a model as trained, strictly, in eval mode.

    Args:
        model: an architecture, a pretrained tag, ``hf-hub:org/repo[@rev]``, ``local-dir:PATH``, or None when
            ``checkpoint`` has a config beside it.
        checkpoint: weights file or folder; the config beside it rebuilds the exact architecture.
        pretrained: without ``checkpoint``: load the tag's / Hub's / folder's weights.
        num_classes: the class count expected; must equal the weights'.
        model_kwargs: construction arguments overriding the config's.
        strict: every tensor must match (False only for deliberate partial loads).
        device: where the model goes.

    Returns:
        The model in eval mode, with its label names and decision thresholds when known.
    """
    kwargs = dict(model_kwargs or {})
    label_names = kwargs.pop('label_names', None)
    for prefix in ('local-dir:', 'hf-hub:'):
        if model is not None and model.startswith(prefix):
            if checkpoint is not None:
                raise ModelLoadError(f'--model {model} already names its weights; leave out --checkpoint {checkpoint}')
            rest = model[len(prefix):]
            checkpoint, model = (rest if prefix == 'local-dir:' else hub_folder(rest)), None
    if checkpoint is not None:
        net = _load_checkpoint(model, Path(checkpoint), kwargs, label_names, num_classes, strict)
    else:
        net = _load_named(model, kwargs, label_names, num_classes, pretrained, strict)
    store_label_names(net, getattr(net, 'label_names', None))
    return net.to(device).eval()


def _load_checkpoint(model: Optional[str], path: Path, kwargs: Dict[str, Any], label_names: Optional[List[str]],
                     num_classes: Optional[int], strict: bool) -> nn.Module:
    """:func:`load_model` from a weights file or folder, rebuilt from the config beside it."""
    if not path.exists():
        raise ModelLoadError(f'checkpoint not found: {path}')
    file = weights_in(path) if path.is_dir() else path
    config = read_model_config(path)
    arch = config.get('architecture')
    if model is not None:
        name, _ = _split_tag(model)
        if arch and name != arch:
            raise ModelLoadError(f'--model {model} differs from {config["config_file"]}, which says the weights '
                                 f'are a {arch}: leave out --model, or give the matching config')
        arch = name
    if not arch:
        raise ModelLoadError(f'no model named for {file}: pass --model NAME (no config.json or train_config.json '
                             'beside the weights)')
    where = config.get('config_file') or f'--model {model}'
    args = dict(config.get('model_args') or {})
    args.update(kwargs)
    state = load_state_dict(file)
    check_class_count(file, state, where, (config.get('model_args') or {}).get('num_classes'))
    if num_classes is not None:
        if args.get('num_classes') is not None and args['num_classes'] != num_classes:
            raise ModelLoadError(f'{where} says num_classes={args["num_classes"]} but {num_classes} classes were '
                                 f'asked for (--num-classes or the dataset): the weights in {file} are for '
                                 f'{args["num_classes"]}')
        args['num_classes'] = num_classes
    if 'num_classes' not in args and 'classifier.bias' in state:
        args['num_classes'] = int(state['classifier.bias'].shape[0])
    names = label_names if label_names is not None else config.get('label_names')
    if names is not None and len(names) == args.get('num_classes'):
        args['label_names'] = list(names)
    elif names is not None:
        raise ModelLoadError(f'{len(names)} label names ({where}) for a model with {args.get("num_classes")} '
                             'classes')
    net = _build_and_load(arch, args, file, state, where, strict, config.get('pretrained_cfg'))
    store_label_thresholds(net, config.get('label_thresholds'), where)
    return net


def _load_named(model: Optional[str], kwargs: Dict[str, Any], label_names: Optional[List[str]],
                num_classes: Optional[int], pretrained: bool, strict: bool) -> nn.Module:
    """:func:`load_model` from a model name or pretrained tag (random weights unless ``pretrained``)."""
    import timm
    from timm.models import get_pretrained_cfg
    if model is None:
        raise ModelLoadError('no model: give a model name, pretrained tag, hf-hub:org/repo or local-dir:PATH, or '
                             'a checkpoint with its config')
    arch, tag = _split_tag(model)
    if not timm.is_model(arch):
        raise ModelLoadError(f'unknown model {model!r}: not a registered timm model name (see timm.list_models(); '
                             'srdl_* names are registered by `import srdl_timm`)')
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    if label_names is not None:
        kwargs['label_names'] = list(label_names)
    if not pretrained:
        return timm.create_model(model, pretrained=False, **kwargs)
    cfg = get_pretrained_cfg(model, allow_unregistered=False) if arch.startswith('srdl_') else None
    if cfg is not None and cfg.file and not cfg.hf_hub_id and not cfg.url:
        return _load_shipped(model, arch, tag, cfg, kwargs, num_classes, strict)
    net = timm.create_model(model, pretrained=True, **kwargs)
    cfg_classes = (getattr(net, 'pretrained_cfg', None) or {}).get('num_classes')
    if cfg_classes is not None and cfg_classes != getattr(net, 'num_classes', cfg_classes):
        raise ModelLoadError(f'{model} has weights for {cfg_classes} classes, not {net.num_classes}: its '
                             'classifier would be randomly initialised')
    return net


def _load_shipped(model: str, arch: str, tag: Optional[str], cfg: Any, kwargs: Dict[str, Any],
                  num_classes: Optional[int], strict: bool) -> nn.Module:
    """A shipped SRDL weight: sha256-checked, built with the manifest's model_args, then loaded strictly."""
    resolved = check_pretrained_weights(arch, dict(kwargs, pretrained_cfg=tag))
    file = Path(resolved.pop('pretrained_cfg_overlay', {}).get('file') or cfg.file)
    resolved.pop('pretrained_cfg', None)
    resolved.setdefault('num_classes', cfg.num_classes)
    if resolved['num_classes'] != cfg.num_classes:
        raise ModelLoadError(f'{model} has weights for {cfg.num_classes} classes, not {num_classes}; '
                             'drop --num-classes (fine-tune with timm.create_model(..., pretrained=True, '
                             'num_classes=N) instead)')
    if 'label_names' not in resolved and cfg.label_names:
        resolved['label_names'] = list(cfg.label_names)
    net = _build_and_load(arch, resolved, file, load_state_dict(file), f'the pretrained tag {model}', strict)
    net.pretrained_cfg = dict(cfg.to_dict(), file=str(file))
    return net


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model to load for inference (the model flags of ``srdl-predict``/``-validate``/``-export``);
    ``random_init``: no weights at all (smoke tests only)."""
    model: Optional[str] = None
    checkpoint: Optional[str] = None
    num_classes: Optional[int] = None
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    random_init: bool = False

    @property
    def name(self) -> str:
        """The model or checkpoint, as messages and reports name it."""
        return str(self.model or self.checkpoint)

    def config(self) -> Dict[str, Any]:
        """:func:`read_model_config` of the checkpoint or ``local-dir:`` folder; empty when neither has one."""
        path = self.checkpoint
        if not path and self.model and self.model.startswith('local-dir:'):
            path = self.model[len('local-dir:'):]
        return read_model_config(path) if path else {}


def load_model_from_spec(spec: ModelSpec, num_classes: Optional[int] = None) -> nn.Module:
    """The model ``spec`` describes, loaded strictly by :func:`load_model`, in eval mode, on the CPU
    (``num_classes``: default of ``spec.num_classes``)."""
    classes = spec.num_classes if spec.num_classes is not None else num_classes
    kwargs = dict(spec.model_kwargs)
    if spec.random_init:
        if spec.checkpoint:
            raise InputError('--random-init and --checkpoint exclude each other')
        if not spec.model:
            raise InputError('--random-init needs --model NAME')
        _logger.warning('%s: randomly initialised weights (--random-init): outputs are meaningless', spec.model)
        return load_model(spec.model, None, pretrained=False, num_classes=classes, model_kwargs=kwargs)
    if not spec.model and not spec.checkpoint:
        raise InputError('no model: give --checkpoint FILE (a training run\'s model.safetensors) and/or --model NAME '
                         '(a pretrained tag, hf-hub:org/repo or local-dir:PATH)')
    return load_model(spec.model, spec.checkpoint, pretrained=not spec.checkpoint, num_classes=classes,
                      model_kwargs=kwargs)
