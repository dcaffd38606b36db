"""SRDL objective (paper §3.4, eqs. 11-13)."""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers.oe import select_erased_classes

__all__ = ['SRDLLoss', 'ERA_SCOPES', 'masked_bce_with_logits']


def masked_bce_with_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy (eqs. 11/12, as a loss: the negated log-likelihood) averaged over labelled entries.

    ``target`` is 1 (present), 0 (absent) or -1 (ignored, e.g. VOC difficult-only); the mean is over the
    entries that are not ignored (B*C when none are). Computed in float32 from logits.
    """
    if logits.shape != target.shape:
        raise ValueError(f'logits {tuple(logits.shape)} and target {tuple(target.shape)} shapes differ')
    logits = logits.float()
    target = target.float()
    valid = target >= 0
    loss = F.binary_cross_entropy_with_logits(logits, target.clamp(min=0), reduction='none')
    return (loss * valid).sum() / valid.sum().clamp(min=1)


ERA_SCOPES = ('all', 'erased')


class SRDLLoss(nn.Module):
    """``L = L_ori + L_era`` (eq. 13): BCE on the original logits (eq. 11) plus BCE on the erased ones (eq. 12).

    Each term is the mean over its labelled entries (the paper sums over samples; the mean only rescales the
    learning rate and keeps it independent of batch size). Called with a plain logits tensor (OE off or
    evaluation), it is ``L_ori`` alone. ``erased_weight`` scales ``L_era`` (1 in the paper).

    ``era_scope`` says which entries eq. 12 covers. ``'all'`` (default, the paper as written): all B*C entries of
    the erased pass, where the C-K classes that were not erased keep their original logits (so their BCE counts
    twice in eq. 13 and the K erased entries carry K/(2C) of the loss). ``'erased'``: only the B*K erased entries,
    the top-``topk`` classes of the detached original logits, selected by
    :func:`srdl_timm.layers.oe.select_erased_classes` -- the same function the model's OE uses, so ``topk`` must
    be the model's ``oe_topk``.
    """

    def __init__(self, erased_weight: float = 1.0, era_scope: str = 'all', topk: Optional[int] = None):
        super().__init__()
        if era_scope not in ERA_SCOPES:
            raise ValueError(f'SRDLLoss era_scope must be one of {ERA_SCOPES}, got {era_scope!r}')
        if era_scope == 'erased' and (topk is None or topk < 1):
            raise ValueError("SRDLLoss(era_scope='erased') needs topk=<the model's oe_topk> (>= 1), "
                             f'got {topk!r}')
        self.erased_weight = erased_weight
        self.era_scope = era_scope
        self.topk = topk

    def erased_term(self, logits: Tensor, erased_logits: Tensor, target: Tensor) -> Tensor:
        """``L_era`` (eq. 12) over the entries of ``era_scope``."""
        if self.era_scope == 'all':
            return masked_bce_with_logits(erased_logits, target)
        index = select_erased_classes(logits, self.topk)
        return masked_bce_with_logits(torch.gather(erased_logits, 1, index), torch.gather(target, 1, index))

    def forward(self, output: Union[Tensor, Tuple[Tensor, Tensor]], target: Tensor) -> Tensor:
        if isinstance(output, (tuple, list)):
            logits, erased_logits = output
            return masked_bce_with_logits(logits, target) + self.erased_weight * self.erased_term(
                logits, erased_logits, target)
        return masked_bce_with_logits(output, target)

    def extra_repr(self) -> str:
        return f'erased_weight={self.erased_weight}, era_scope={self.era_scope!r}, topk={self.topk}'
