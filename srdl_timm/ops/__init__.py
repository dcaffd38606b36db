"""Kernels of the CAR head's per-category attention (eqs. 5-6): reference, chunked, compiled (CPU)
and Triton paths."""
from .category_attention import (
    ATTENTION_IMPLS, DEFAULT_BLOCK_ELEMENTS, attention_max_pool, attention_max_pool_reference, select_impl,
    spatial_attention_logits, spatial_attention_logits_reference,
)

__all__ = [
    'ATTENTION_IMPLS', 'DEFAULT_BLOCK_ELEMENTS', 'attention_max_pool', 'attention_max_pool_reference', 'select_impl',
    'spatial_attention_logits', 'spatial_attention_logits_reference',
]
