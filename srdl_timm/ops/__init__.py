from .category_attention import (
    ATTENTION_IMPLS, attention_max_pool, attention_max_pool_reference, select_impl,
    spatial_attention_logits, spatial_attention_logits_reference,
)
