"""timm 1.0 training task for SRDL: the multi-label task with OE and ``L = L_ori + L_era`` (eqs. 11-13)."""
import logging
from typing import Dict, Optional

import torch
from torch import Tensor, nn
from timm.task import MultiLabelClassificationTask

from .loss import SRDLLoss

__all__ = ['SRDLTask']

_logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, 'module') and isinstance(model.module, nn.Module):  # DDP
        model = model.module
    return getattr(model, '_orig_mod', model)  # torch.compile


class SRDLTask(MultiLabelClassificationTask):
    """``timm.task.MultiLabelClassificationTask`` that trains SRDL with object erasing.

    Switches OE on in the model (``object_erasing=True``), so the training forward yields
    ``(logits, erased_logits)``; the criterion is :class:`~srdl_timm.loss.SRDLLoss`. Evaluation (model in
    eval mode) returns logits only, so timm's multi-label evaluator works unchanged. ``output`` in the
    result dict is always the original logits.

    Example::

        task = SRDLTask(timm.create_model('srdl_resnet50', num_classes=20))
        result = task(images, targets)   # {'loss', 'output', 'loss_ori', 'loss_era'}
        result['loss'].backward()
    """

    def __init__(
            self,
            model: nn.Module,
            object_erasing: bool = True,
            criterion: Optional[nn.Module] = None,
            threshold: float = 0.5,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        inner = _unwrap(model)
        if not hasattr(inner, 'set_object_erasing'):
            raise TypeError(f'SRDLTask needs an SRDL model, got {type(inner).__name__}')
        inner.set_object_erasing(object_erasing)
        super().__init__(
            model, criterion=criterion if criterion is not None else SRDLLoss(), threshold=threshold,
            device=device, dtype=dtype, verbose=verbose)

    def forward(self, input: Tensor, target: Tensor) -> Dict[str, Tensor]:
        if target.ndim != 2 or not target.is_floating_point():
            raise ValueError('SRDLTask expects dense floating-point targets shaped (batch, num_classes).')
        output = self.trainable_module(input)
        loss = self.criterion(output, target)
        logits = output[0] if isinstance(output, (tuple, list)) else output
        return {'loss': loss, 'output': logits}
