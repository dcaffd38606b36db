"""SRDL objective (paper §3.4, eqs. 11-13)."""
from typing import Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['SRDLLoss', 'masked_bce_with_logits']


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


class SRDLLoss(nn.Module):
    """``L = L_ori + L_era`` (eq. 13): BCE on the original logits (eq. 11) plus BCE on the erased ones (eq. 12).

    Each term is the mean over the B*C labelled entries (the paper sums over samples; the mean only rescales
    the learning rate and keeps it independent of batch size). Called with a plain logits tensor (OE off or
    evaluation), it is ``L_ori`` alone. ``erased_weight`` scales ``L_era`` (1 in the paper).
    """

    def __init__(self, erased_weight: float = 1.0):
        super().__init__()
        self.erased_weight = erased_weight

    def forward(self, output: Union[Tensor, Tuple[Tensor, Tensor]], target: Tensor) -> Tensor:
        if isinstance(output, (tuple, list)):
            logits, erased_logits = output
            return masked_bce_with_logits(logits, target) + self.erased_weight * masked_bce_with_logits(
                erased_logits, target)
        return masked_bce_with_logits(output, target)
