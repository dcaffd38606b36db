"""The backbone adapter: any timm model as the feature map ``F = [B, d, h, w]`` of eq. 1.

:func:`create_backbone` builds the timm model without classifier and reads its layout from one meta-device
``forward_features``: NCHW as it is, NHWC permuted, NLC tokens with the prefix tokens dropped, else the last map
of ``forward_intermediates``. Parameters ``forward_features`` never uses are frozen (DDP needs gradients).
"""
import copy
import logging
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

import timm

from ..pretrained_backbones import OFFLINE_BACKBONES, imagenet_weights_error, load_pretrained_backbone

__all__ = [
    'LAYOUTS', 'FeatureGrid', 'create_backbone', 'feature_map', 'last_intermediate',
    'tokens_to_grid', 'token_grid_size', 'probe_feature_shape', 'backbone_cfg', 'backbone_group_matcher',
    'default_out_indices',
]

_logger = logging.getLogger(__name__)

#: how a backbone's output becomes ``[B, d, h, w]`` (see the module docstring)
LAYOUTS = ('NCHW', 'NHWC', 'NLC', 'intermediates')


@torch.fx.wrap
def token_grid_size(num_tokens: int, height: int, width: int, reduction: int) -> Tuple[int, int]:
    """``(h, w)`` of ``num_tokens`` patch tokens of an ``height x width`` input at stride ``reduction`` (floor
    of the division, else its ceiling for padded embeddings)."""
    h, w = height // reduction, width // reduction
    if h * w != num_tokens:
        h, w = (height + reduction - 1) // reduction, (width + reduction - 1) // reduction
    if h * w != num_tokens:
        raise ValueError('the backbone gave ' + str(num_tokens) + ' patch tokens for a ' + str(height) + 'x'
                         + str(width) + ' input, which is no grid at stride ' + str(reduction))
    return h, w


@torch.fx.wrap
def tokens_to_grid(tokens: Tensor, height: int, width: int, num_prefix_tokens: int, reduction: int) -> Tensor:
    """Tokens ``[B, N, d]`` (prefix tokens first) -> patch grid ``[B, d, h, w]``, a view without a copy."""
    patches = tokens[:, num_prefix_tokens:]
    h, w = token_grid_size(patches.shape[1], height, width, reduction)
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], h, w)


class FeatureGrid(nn.Module):
    """How a backbone's ``forward_features`` output becomes ``F = [B, d, h, w]`` (``layout``, ``num_features``,
    ``reduction``, ``num_prefix_tokens``; no parameters)."""

    def __init__(self, layout: str, num_features: int, reduction: int, num_prefix_tokens: int = 0):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
        self.layout = layout
        self.num_features = int(num_features)
        self.reduction = int(reduction)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.from_intermediates = layout == 'intermediates'

    def forward(self, features: Tensor, height: int, width: int) -> Tensor:
        """``forward_features``'s output of an ``height x width`` input -> ``[B, d, h, w]``."""
        if self.layout == 'NHWC':
            return features.permute(0, 3, 1, 2)
        if self.layout == 'NLC':
            return tokens_to_grid(features, height, width, self.num_prefix_tokens, self.reduction)
        return features

    def extra_repr(self) -> str:
        return (f'layout={self.layout!r}, num_features={self.num_features}, reduction={self.reduction}, '
                f'num_prefix_tokens={self.num_prefix_tokens}')


def last_intermediate(backbone: nn.Module, x: Tensor) -> Tensor:
    """The last feature map of timm's ``forward_intermediates(x, norm=True, output_fmt='NCHW')``, ``[B, d, h, w]``."""
    return backbone.forward_intermediates(x, indices=1, norm=True, stop_early=True, output_fmt='NCHW',
                                          intermediates_only=True)[-1]


def feature_map(backbone: nn.Module, grid: FeatureGrid, x: Tensor) -> Tensor:
    """``F = [B, d, h, w]`` of an image batch ``x`` (eager; ``SRDL.forward_features`` is the scriptable twin)."""
    if grid.from_intermediates:
        return last_intermediate(backbone, x)
    return grid(backbone.forward_features(x), x.shape[-2], x.shape[-1])


def _meta_copy(backbone: nn.Module) -> nn.Module:
    """The backbone in eval mode with every parameter and buffer on the ``meta`` device (shapes only, no data
    copied; shared modules and tensors stay shared), for shape probes that leave the backbone untouched."""
    with torch.inference_mode(False):  # normal tensors even where the backbone is built under inference_mode
        memo: Dict[int, Any] = {id(b): b.to('meta') for b in backbone.buffers()}
        memo.update({id(p): nn.Parameter(p.to('meta'), p.requires_grad) for p in backbone.parameters()})
        return copy.deepcopy(backbone, memo).eval()


def _infer_grid(meta: nn.Module, name: str, x: Tensor) -> FeatureGrid:
    """The :data:`LAYOUTS` entry of a (meta) backbone's grid: ``forward_features`` if it gives a map or a
    patch-token grid, else the last ``forward_intermediates`` map."""
    d, (height, width) = int(getattr(meta, 'num_features', 0) or 0), x.shape[-2:]
    stride = int(((getattr(meta, 'feature_info', None) or [{}])[-1]).get('reduction', 0))
    prefix = int(getattr(meta, 'num_prefix_tokens', 0) or 0)
    out = meta.forward_features(x)
    described = f'a {out.dim()}-D tensor {list(out.shape)}' if isinstance(out, Tensor) else f'a {type(out).__name__}'
    if isinstance(out, Tensor) and out.dim() == 4:
        nhwc = getattr(meta, 'output_fmt', 'NCHW') == 'NHWC'  # timm's Format is a str enum
        if out.shape[-1 if nhwc else 1] == d:
            return FeatureGrid('NHWC' if nhwc else 'NCHW', d, _reduction(stride, height, out.shape[2 - nhwc]))
    if isinstance(out, Tensor) and out.dim() == 3 and out.shape[-1] == d and stride:
        try:
            token_grid_size(out.shape[1] - prefix, height, width, stride)
            return FeatureGrid('NLC', d, stride, num_prefix_tokens=prefix)
        except ValueError:
            pass
    try:
        last = last_intermediate(meta, x)
    except Exception as e:  # noqa: BLE001  (any model error: reported below)
        raise ValueError(
            f'backbone {name!r} has no spatial feature grid for SRDL: for a {height}x{width} input its '
            f'forward_features gives {described} (num_features={d}, num_prefix_tokens='
            f'{prefix}, feature_info stride {stride}) and forward_intermediates fails ({type(e).__name__}: {e}). '
            'SRDL needs a map [B, d, h, w]: a CNN, a ViT-style patch-token grid, or an NHWC map') from e
    return FeatureGrid('intermediates', last.shape[1], _reduction(stride, height, last.shape[2]))


def _reduction(stride: int, height: int, grid_height: int) -> int:
    """The total stride: ``feature_info``'s when it gives this grid height, else the measured ratio."""
    if stride and grid_height in (height // stride, -(-height // stride)):
        return stride
    return max(1, round(height / grid_height))


def _build(name: str, in_chans: int, device, dtype, pretrained: bool, optional: Dict[str, Any],
           kwargs: Dict[str, Any]) -> Tuple[nn.Module, Dict[str, Any]]:
    """``timm.create_model`` without classifier (timm's ImageNet weights with ``pretrained``); ``optional``
    arguments the model refuses are dropped. Returns the model and the optional arguments it took."""
    optional = dict(optional)
    while True:
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, device=device,
                                     dtype=dtype, **optional, **kwargs), optional
        except TypeError as e:
            refused = [k for k in optional if repr(k) in str(e)]
            if not refused:
                raise
            for key in refused:
                optional.pop(key)
        except Exception as e:  # noqa: BLE001  (hub / network / cache errors of the weights)
            if not pretrained:
                raise
            raise imagenet_weights_error(name, e) from e


def create_backbone(
        name: str,
        in_chans: int = 3,
        img_size: Optional[Union[int, Tuple[int, int]]] = None,
        pretrained: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
) -> Tuple[nn.Module, FeatureGrid, Dict[str, Any]]:
    """``(backbone, grid, build_kwargs)``: the timm model ``name`` without classifier (built for ``img_size`` and
    with ``dynamic_img_size`` where it takes them; ImageNet weights with ``pretrained``, offline ones where known),
    the :class:`FeatureGrid` giving its ``[B, d, h, w]``, and the ``timm.create_model`` arguments it took.
    ValueError for a name that is no timm model or a model without a spatial grid."""
    if not timm.is_model(name):
        raise ValueError(f'Unknown backbone {name!r}: not a timm model name (see timm.list_models())')
    optional = {'dynamic_img_size': True} if 'dynamic_img_size' not in kwargs else {}
    if img_size is not None:
        optional['img_size'] = img_size
    offline = pretrained and name in OFFLINE_BACKBONES
    backbone, taken = _build(name, in_chans, device, dtype, pretrained and not offline, optional, kwargs)
    build_kwargs = dict(kwargs, **taken)
    if img_size is not None:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    else:
        size = tuple(timm.models.get_model_input_config(backbone)['input_size'][-2:])
    meta = _meta_copy(backbone)
    with torch.inference_mode(False), torch.enable_grad():  # the parameters F gets no gradient from are frozen
        x = torch.empty(1, in_chans, *size, device='meta')
        grid = _infer_grid(meta, name, x)
        feature_map(meta, grid, x).float().sum().backward()
    unused = [n for n, p in meta.named_parameters() if p.requires_grad and p.grad is None]
    for param_name in unused:
        backbone.get_parameter(param_name).requires_grad_(False)
    _logger.debug('backbone %s: %d parameters unused by its features frozen: %s', name, len(unused), unused)
    if offline:
        load_pretrained_backbone(backbone, name)
    return backbone, grid, build_kwargs


def probe_feature_shape(backbone: nn.Module, grid: FeatureGrid, in_chans: int, size: Tuple[int, int]
                        ) -> Tuple[int, int, int]:
    """``(d, h, w)`` of ``F`` for an input of ``size = (H, W)``, from a meta-device pass (no compute)."""
    with torch.no_grad():
        out = feature_map(_meta_copy(backbone), grid, torch.empty(1, in_chans, *size, device='meta'))
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


def backbone_cfg(backbone: nn.Module, grid: FeatureGrid, in_chans: int,
                 input_size: Optional[Sequence[int]] = None, prefix: str = 'backbone.') -> Dict[str, Any]:
    """The cfg entries a model holding ``backbone`` under ``prefix`` takes from it: ``first_conv``, and for the
    cfg's ``input_size`` the ``pool_size`` (and the backbone's own input size where it runs only at that one)."""
    cfg: Dict[str, Any] = {}
    first_conv = backbone.pretrained_cfg.get('first_conv')
    if first_conv:
        cfg['first_conv'] = prefix + first_conv if isinstance(first_conv, str) else tuple(
            prefix + name for name in first_conv)
    if input_size is None:
        return cfg
    own = timm.models.get_model_input_config(backbone)
    for size, own_size in ((tuple(input_size[-2:]), False), (tuple(own['input_size'][-2:]), True)):
        try:
            _, height, width = probe_feature_shape(backbone, grid, in_chans, size)
        except Exception as e:  # noqa: BLE001  (not at this size: try the backbone's own)
            _logger.debug('backbone does not run at %s: %s', size, e)
            continue
        cfg['pool_size'] = (height, width)
        if own_size:
            cfg['input_size'] = (in_chans, *size)
            if own['fixed_input_size']:
                cfg['fixed_input_size'] = True
        break
    return cfg


def _prefix_pattern(pattern: str, prefix: str) -> str:
    return '^' + re.escape(prefix) + '(?:' + pattern.replace('^', '') + ')'


def backbone_group_matcher(backbone: nn.Module, coarse: bool = False, prefix: str = 'backbone.'
                           ) -> Tuple[str, List[Tuple[str, Optional[Tuple[int, ...]]]]]:
    """The backbone's own ``group_matcher`` under ``prefix``, its last group catching the parameters the matcher
    leaves out, ordered before ``10 ** 9`` so a head can take that."""
    inner = backbone.group_matcher(coarse=coarse) if hasattr(backbone, 'group_matcher') else {}
    stem = '^' + re.escape(prefix) + '(?!x)x'  # matches nothing when the backbone has no stem group
    blocks: List[Tuple[str, Optional[Tuple[int, ...]]]] = []
    for key, value in inner.items():
        if isinstance(value, str):
            if key == 'stem':
                stem = _prefix_pattern(value, prefix)
            else:
                blocks.append((_prefix_pattern(value, prefix), None))
        else:
            blocks.extend((_prefix_pattern(p, prefix), order) for p, order in value)
    blocks.append(('^' + re.escape(prefix), (10 ** 9 - 1,)))
    return stem, blocks


def default_out_indices(name: str, backbone_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[int, ...]:
    """``features_only``'s default levels for a model on backbone ``name``: its last five (all five of a CNN's,
    timm's default), or all of them when it has fewer (Swin's four stages); read on the ``meta`` device."""
    with torch.device('meta'):
        levels = len(timm.create_model(name, num_classes=0, **(backbone_kwargs or {})).feature_info)
    return tuple(range(max(0, levels - 5), levels))
