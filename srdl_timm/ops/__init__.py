"""Kernels of the CAR head (eqs. 4-6), layered: :mod:`.common` and :mod:`.autograd_functions` (shared rules and
autograd functions) <- one module per implementation (:mod:`.reference`, :mod:`.chunked`, :mod:`.compiled`,
:mod:`.triton_launch` with :mod:`.triton_kernels`; eq. 4: :mod:`.channel_attention`) <- :mod:`.dispatch` (which
implementation runs)."""
from .common import DEFAULT_BLOCK_ELEMENTS
from .dispatch import ATTENTION_IMPLS, attention_max_pool, select_impl, spatial_attention_logits
from .reference import attention_max_pool_reference, spatial_attention_logits_reference

__all__ = [
    'ATTENTION_IMPLS', 'DEFAULT_BLOCK_ELEMENTS', 'attention_max_pool', 'attention_max_pool_reference', 'select_impl',
    'spatial_attention_logits', 'spatial_attention_logits_reference',
]
