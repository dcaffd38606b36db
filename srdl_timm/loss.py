"""SRDL objective (paper §3.4, eqs. 11-13)."""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers.oe import select_erased_classes

__all__ = ['SRDLLoss', 'ERA_SCOPES', 'REDUCTIONS', 'masked_bce_with_logits']

#: how eqs. 11-12 reduce over the labelled entries of a mini-batch: 'mean' (over them) or 'sum' (the paper's sum)
REDUCTIONS = ('mean', 'sum')


def masked_bce_with_logits(logits: Tensor, target: Tensor, reduction: str = 'mean') -> Tensor:
    """Binary cross-entropy (eqs. 11/12, as a loss: the negated log-likelihood) over the labelled entries.

    ``target`` is 1 (present), 0 (absent) or -1 (ignored, e.g. VOC difficult-only). ``reduction='mean'`` averages
    over the entries that are not ignored (B*C when none are); ``'sum'`` adds them up, as eqs. 11-12 write it (for a
    mini-batch: the sum over its images and classes). Computed in float32 from logits.
    """
    if logits.shape != target.shape:
        raise ValueError(f'logits {tuple(logits.shape)} and target {tuple(target.shape)} shapes differ')
    if reduction not in REDUCTIONS:
        raise ValueError(f'reduction must be one of {REDUCTIONS}, got {reduction!r}')
    logits = logits.float()
    target = target.float()
    valid = target >= 0
    loss = (F.binary_cross_entropy_with_logits(logits, target.clamp(min=0), reduction='none') * valid).sum()
    return loss if reduction == 'sum' else loss / valid.sum().clamp(min=1)


ERA_SCOPES = ('all', 'erased')


class SRDLLoss(nn.Module):
    """``L = L_ori + L_era`` (eq. 13): BCE on the original logits (eq. 11) plus BCE on the erased ones (eq. 12).

    ``reduction``: each term is the mean over its labelled entries (``'mean'``, the default) or their sum
    (``'sum'``, eqs. 11-12 as written, over the mini-batch). Under SGD the two differ by a learning-rate factor
    of B*C. Under Adam a constant loss scale leaves the data part of the step unchanged, but *not* the L2 weight
    decay that ``torch.optim.Adam(weight_decay=...)`` adds to the gradient: with the mean the decay weighs B*C times
    more against the data gradient than with the sum (MODEL_CARD.md, "Loss reduction"). Called with a plain logits
    tensor (OE off or evaluation), it is ``L_ori`` alone. ``erased_weight`` scales ``L_era`` (1 in the paper).

    ``era_scope`` says which entries eq. 12 covers. ``'all'`` (default, the paper as written): all B*C entries of
    the erased pass, where the C-K classes that were not erased keep their original logits (so their BCE counts
    twice in eq. 13 and the K erased entries carry K/(2C) of the loss). ``'erased'``: only the B*K erased entries,
    the top-``topk`` classes of the detached original logits, selected by
    :func:`srdl_timm.layers.oe.select_erased_classes` -- the same function the model's OE uses, so ``topk`` must
    be the model's ``oe_topk``.
    """

    def __init__(self, erased_weight: float = 1.0, era_scope: str = 'all', topk: Optional[int] = None,
                 reduction: str = 'mean'):
        super().__init__()
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

    def erased_term(self, logits: Tensor, erased_logits: Tensor, target: Tensor) -> Tensor:
        """``L_era`` (eq. 12) over the entries of ``era_scope``."""
        if self.era_scope == 'all':
            return masked_bce_with_logits(erased_logits, target, self.reduction)
        index = select_erased_classes(logits, self.topk)
        return masked_bce_with_logits(torch.gather(erased_logits, 1, index), torch.gather(target, 1, index),
                                      self.reduction)

    def forward(self, output: Union[Tensor, Tuple[Tensor, Tensor]], target: Tensor) -> Tensor:
        if isinstance(output, (tuple, list)):
            logits, erased_logits = output
            return masked_bce_with_logits(logits, target, self.reduction) + self.erased_weight * self.erased_term(
                logits, erased_logits, target)
        return masked_bce_with_logits(output, target, self.reduction)

    def extra_repr(self) -> str:
        return (f'erased_weight={self.erased_weight}, era_scope={self.era_scope!r}, topk={self.topk}, '
                f'reduction={self.reduction!r}')
