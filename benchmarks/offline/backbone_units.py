""" Units of a timm backbone's ``forward_features``: stem, each stage or block, final part, applied in order

For training only the last units of a backbone on cached outputs of the first (the offline benchmark's
frozen-trunk trainer). Derived from timm's ``feature_info`` (the modules it names are the stages), not from a list
of families; callers check that the units compose to ``forward_features``.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ['backbone_units']

#: top-level children of a timm model that belong to its classifier head, not to ``forward_features``
_HEAD_CHILDREN = frozenset({'global_pool', 'head', 'fc', 'classifier', 'head_drop', 'fc_norm', 'flatten',
                            'pre_logits', 'head_dist', 'norm_head', 'attn_pool', 'pool', 'head_hidden'})


class _TokenStem(nn.Module):
    """Patch embedding, position embedding and prefix tokens of a token backbone plus its first block, through
    timm's ``forward_intermediates(..., return_prefix_tokens=True)``: the raw tokens (prefix first) the second
    block takes. Holds the stem's parameters and the first block (shared), not the rest of the backbone."""

    def __init__(self, backbone: nn.Module, children: Sequence[str], first_block: nn.Module):
        super().__init__()
        object.__setattr__(self, '_backbone', backbone)  # not registered: the later blocks are not this unit's
        for child in children:
            self.add_module(child, getattr(backbone, child))
        self.first_block = first_block
        for pname, param in backbone.named_parameters(recurse=False):
            self.register_parameter(pname, param)

    def forward(self, x: Tensor) -> Tensor:
        out = self._backbone.forward_intermediates(x, indices=[0], norm=False, stop_early=True, output_fmt='NLC',
                                                   intermediates_only=True, return_prefix_tokens=True)[0]
        if isinstance(out, (tuple, list)):
            tokens, prefix = out
            out = tokens if prefix is None else torch.cat([prefix, tokens], dim=1)
        return out


def backbone_units(backbone: nn.Module) -> List[nn.Module]:
    """A timm backbone's ``forward_features`` as a list of units applied in order, sharing its parameters.

    The stages are the top-level modules ``feature_info`` names (a container such as ``blocks``, ``stages`` or
    ``layers`` gives one unit per child): ResNet ``[conv1 + bn1 + act1 + maxpool, layer1, ..., layer4]``,
    EfficientNet ``[conv_stem + bn1, blocks[0], ..., blocks[-1], conv_head + bn2]``, ConvNeXt, Swin, RegNet, ...
    The stem is what comes before the first stage, the last unit what comes after it up to the classifier head.
    A token backbone (parameters of its own, such as a class token and position embedding: ViT, DeiT) starts with
    its stem and first block through timm's ``forward_intermediates``. Callers check that the units compose to
    ``forward_features`` (a backbone whose forward does more than its modules, e.g. EVA's rotary embedding
    passed to every block, does not).

    Raises:
        ValueError: ``backbone`` has no ``feature_info`` naming its stages.
    """
    info = getattr(backbone, 'feature_info', None)
    modules = [i.get('module') for i in info] if isinstance(info, (list, tuple)) else []
    if not modules or not all(isinstance(m, str) for m in modules):
        raise ValueError(f'{type(backbone).__name__} has no feature_info naming its stages, so it cannot be split '
                         'into units')
    children = list(backbone.named_children())
    index = {child: i for i, (child, _) in enumerate(children)}
    stages: Dict[int, Optional[str]] = {}  # child index -> 'expand' (a container of stages) or None (one stage)
    for module in modules:
        top, _, rest = module.partition('.')
        if top not in index:
            continue
        child = dict(children)[top]
        if not any(True for _ in child.parameters()):
            continue  # an activation or pooling named as a feature: glue of the stem
        expand = bool(rest) and '.' not in rest and isinstance(child, (nn.Sequential, nn.ModuleList))
        stages[index[top]] = 'expand' if expand else stages.get(index[top])
    if not stages:
        raise ValueError(f'{type(backbone).__name__}: feature_info names no stage module ({modules})')
    first, last = min(stages), max(stages)
    tail = []
    for child, module in children[last + 1:]:
        if child in _HEAD_CHILDREN:
            break
        tail.append(module)
    units: List[nn.Module] = []
    stem_children = [child for child, _ in children[:first]]
    token_stem = any(True for _ in backbone.parameters(recurse=False))
    for i in range(first, last + 1):
        child, module = children[i]
        parts = list(module.children()) if stages.get(i) == 'expand' else [module]
        if token_stem and not units:
            units.append(_TokenStem(backbone, stem_children, parts[0]))
            parts = parts[1:]
        elif not units and stem_children:
            units.append(nn.Sequential(*[getattr(backbone, c) for c in stem_children]))
        units.extend(parts)
    if tail:
        units.append(nn.Sequential(*tail))
    return units
