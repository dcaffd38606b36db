"""Kernels of the CAR head (eqs. 4-6): shared rules <- one module per implementation <- :mod:`.dispatch`."""
from .common import DEFAULT_BLOCK_ELEMENTS
from .dispatch import ATTENTION_IMPLS, attention_max_pool, select_impl, spatial_attention_logits
from .reference import attention_max_pool_reference, spatial_attention_logits_reference

__all__ = [
    'ATTENTION_IMPLS', 'DEFAULT_BLOCK_ELEMENTS', 'attention_max_pool', 'attention_max_pool_reference', 'select_impl',
    'spatial_attention_logits', 'spatial_attention_logits_reference',
]
