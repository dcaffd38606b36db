"""timm 1.0 training task for SRDL: the multi-label task with OE and ``L = L_ori + L_era`` (eqs. 11-13)."""
from typing import Dict, Optional

import torch
from torch import Tensor, nn
from timm.task import MultiLabelClassificationTask
from timm.utils import unwrap_model

from ..loss import SRDLLoss

__all__ = ['SRDLTask']


class SRDLTask(MultiLabelClassificationTask):
    """``timm.task.MultiLabelClassificationTask`` that trains SRDL with object erasing.

    With ``object_erasing=True`` the training forward yields ``(logits, erased_logits)`` and ``loss``
    (:class:`~srdl_timm.loss.SRDLLoss`, eq. 13) adds the erased term; with False any timm classifier trains with the
    masked BCE of eq. 11. DDP, compile, EMA and ``no_sync`` are timm's. The result holds ``loss``, ``output`` and,
    detached for logging, ``loss_ori`` and ``loss_era``.
    """

    def __init__(
            self,
            model: nn.Module,
            object_erasing: bool = True,
            loss: Optional[SRDLLoss] = None,
            threshold: float = 0.5,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        inner = unwrap_model(model)
        if hasattr(inner, 'set_object_erasing'):
            inner.set_object_erasing(bool(object_erasing))
        elif object_erasing:
            raise TypeError(f'object erasing needs an SRDL model, got {type(inner).__name__}; '
                            'pass object_erasing=False to train it as a plain multi-label baseline')
        super().__init__(
            model, criterion=loss if loss is not None else SRDLLoss(), threshold=threshold,
            device=device, dtype=dtype, verbose=verbose)

    @property
    def loss(self) -> nn.Module:
        """The criterion (:class:`~srdl_timm.loss.SRDLLoss` unless another was given)."""
        return self.criterion

    def forward(self, input: Tensor, target: Tensor) -> Dict[str, Tensor]:
        if target.ndim != 2 or not target.is_floating_point():
            raise ValueError('SRDLTask expects dense floating-point targets shaped (batch, num_classes).')
        output = self.trainable_module(input)
        loss = self.criterion(output, target)
        if not isinstance(output, (tuple, list)):
            return {'loss': loss, 'output': output, 'loss_ori': loss.detach()}
        logits = output[0]
        with torch.no_grad():
            loss_ori = self.criterion(logits, target)  # a plain logits tensor: L_ori (eq. 11) alone
        return {'loss': loss, 'output': logits, 'loss_ori': loss_ori, 'loss_era': loss.detach() - loss_ori}
