"""SRDL objective (paper §3.4, eqs. 11-13), with binary cross-entropy as in the paper or the asymmetric loss (ASL)."""
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timm.loss import AsymmetricLossMultiLabel

from .layers.oe import select_erased_classes

__all__ = ['SRDLLoss', 'ERA_SCOPES', 'REDUCTIONS', 'LOSSES', 'ASL_DEFAULTS', 'masked_bce_with_logits',
           'masked_asl_with_logits']

#: how eqs. 11-12 reduce over the labelled entries of a mini-batch: 'mean' (over them) or 'sum' (the paper's sum)
REDUCTIONS = ('mean', 'sum')


def masked_bce_with_logits(logits: Tensor, target: Tensor, reduction: str = 'mean') -> Tensor:
    """Binary cross-entropy (eqs. 11/12) over the labelled entries (target -1 ignored), in float32; ``'mean'``
    over those entries or ``'sum'`` as eqs. 11-12 write it."""
    return _reduce_labelled(lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction='none'),
                            logits, target, reduction)


#: the asymmetric loss's hyper-parameters of the ASL paper (Ben-Baruch et al. 2020, MS-COCO: gamma- 4, gamma+ 0,
#: probability margin 0.05)
ASL_DEFAULTS: Dict[str, float] = {'gamma_neg': 4.0, 'gamma_pos': 0.0, 'clip': 0.05}


def masked_asl_with_logits(logits: Tensor, target: Tensor, reduction: str = 'mean', gamma_neg: float = 4.0,
                           gamma_pos: float = 0.0, clip: float = 0.05) -> Tensor:
    """The asymmetric loss (ASL, Ben-Baruch et al. 2020) per entry as timm's ``AsymmetricLossMultiLabel``, over
    the labelled entries and reduced like :func:`masked_bce_with_logits`."""
    asl = AsymmetricLossMultiLabel(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction='none')
    return _reduce_labelled(asl, logits, target, reduction)


def _reduce_labelled(per_entry: Callable[[Tensor, Tensor], Tensor], logits: Tensor, target: Tensor,
                     reduction: str) -> Tensor:
    if logits.shape != target.shape:
        raise ValueError(f'logits {tuple(logits.shape)} and target {tuple(target.shape)} shapes differ')
    if reduction not in REDUCTIONS:
        raise ValueError(f'reduction must be one of {REDUCTIONS}, got {reduction!r}')
    logits = logits.float()
    target = target.float()
    valid = target >= 0
    loss = (per_entry(logits, target.clamp(min=0)) * valid).sum()
    return loss if reduction == 'sum' else loss / valid.sum().clamp(min=1)


#: the per-entry multi-label losses eqs. 11-12 can use: binary cross-entropy (the paper) or ASL
LOSSES = ('bce', 'asl')


ERA_SCOPES = ('all', 'erased')


class SRDLLoss(nn.Module):
    """``L = L_ori + L_era`` (eq. 13): BCE on the original logits (eq. 11) plus BCE on the erased ones (eq. 12).

    ``loss='asl'``: the asymmetric loss for both terms. ``reduction``: mean or sum over the labelled entries (under
    Adam this changes how strongly weight decay acts). ``erased_weight`` scales ``L_era``. ``era_scope='all'``: eq. 12
    over all entries (the paper); ``'erased'``: only the top-``topk`` erased classes
    (:func:`srdl_timm.layers.oe.select_erased_classes`). A plain logits tensor gives ``L_ori`` alone.
    """

    def __init__(self, erased_weight: float = 1.0, era_scope: str = 'all', topk: Optional[int] = None,
                 reduction: str = 'mean', loss: str = 'bce', asl: Optional[Dict[str, float]] = None):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f'SRDLLoss loss must be one of {LOSSES}, got {loss!r}')
        unknown = set(asl or {}) - set(ASL_DEFAULTS)
        if unknown:
            raise ValueError(f'SRDLLoss asl= takes {sorted(ASL_DEFAULTS)}, got {sorted(unknown)}')
        if reduction not in REDUCTIONS:
            raise ValueError(f'SRDLLoss reduction must be one of {REDUCTIONS}, got {reduction!r}')
        if era_scope not in ERA_SCOPES:
            raise ValueError(f'SRDLLoss era_scope must be one of {ERA_SCOPES}, got {era_scope!r}')
        if era_scope == 'erased' and (topk is None or topk < 1):
            raise ValueError("SRDLLoss(era_scope='erased') needs topk=<the model's oe_topk> (>= 1), "
                             f'got {topk!r}')
        self.erased_weight = erased_weight
        self.era_scope = era_scope
        self.topk = topk
        self.reduction = reduction
        self.loss = loss
        self.asl = dict(ASL_DEFAULTS, **(asl or {})) if loss == 'asl' else None

    def entry_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """One term (eq. 11 or 12) with this loss's per-entry function and reduction."""
        if self.loss == 'asl':
            return masked_asl_with_logits(logits, target, self.reduction, **self.asl)
        return masked_bce_with_logits(logits, target, self.reduction)

    def erased_term(self, logits: Tensor, erased_logits: Tensor, target: Tensor) -> Tensor:
        """``L_era`` (eq. 12) over the entries of ``era_scope``."""
        if self.era_scope == 'all':
            return self.entry_loss(erased_logits, target)
        index = select_erased_classes(logits, self.topk)
        return self.entry_loss(torch.gather(erased_logits, 1, index), torch.gather(target, 1, index))

    def forward(self, output: Union[Tensor, Tuple[Tensor, Tensor]], target: Tensor) -> Tensor:
        if isinstance(output, (tuple, list)):
            logits, erased_logits = output
            return self.entry_loss(logits, target) + self.erased_weight * self.erased_term(logits, erased_logits, target)
        return self.entry_loss(output, target)

    def extra_repr(self) -> str:
        return (f'loss={self.loss!r}, erased_weight={self.erased_weight}, era_scope={self.era_scope!r}, '
                f'topk={self.topk}, reduction={self.reduction!r}' + (f', asl={self.asl}' if self.asl else ''))
