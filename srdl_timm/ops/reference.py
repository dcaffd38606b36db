"""Reference kernels of eqs. 5-6 by direct broadcast (the ``B x C x P x d`` product in eager mode): the tests' oracle,
and what TorchScript, tracing and ``torch.compile`` run."""
from typing import Optional

import torch
from torch import Tensor

__all__ = ['spatial_attention_logits_reference', 'attention_max_pool_reference']


def spatial_attention_logits_reference(s: Tensor, e: Tensor, w: Tensor) -> Tensor:
    """Eq. 5's inner sum ``z[b,c,p] = sum_k w[k] tanh(s[b,p,k] e[c,k])``: ``s`` ``[B, P, d]``, ``e`` ``[C, d]``,
    ``w`` ``[d]`` -> ``[B, C, P]``."""
    product = torch.tanh(s.unsqueeze(1) * e.unsqueeze(0).unsqueeze(2))
    if not torch.jit.is_scripting() and torch.compiler.is_compiling():
        # a mul + sum is one fused reduction for Inductor; a matmul would be an external kernel on the product
        return (product * w).sum(-1)
    return torch.matmul(product, w)


def attention_max_pool_reference(
        feat: Tensor, sa: Optional[Tensor], ca: Optional[Tensor], sa_weight: float = 0.5, ca_weight: float = 0.5,
) -> Tensor:
    """Eq. 6 + GMP ``f[b,c,k] = max_p F[b,p,k] (a SA[b,c,p] + b CA[b,c,k])``: ``feat`` ``[B, P, d]``, ``sa``
    ``[B, C, P]`` or None, ``ca`` ``[B, C, d]`` or None -> ``[B, C, d]``."""
    if sa is None:
        pooled = feat.amax(dim=1)
        if ca is None:
            raise ValueError('attention_max_pool needs at least one of sa, ca')
        # attention > 0 is constant over positions: max_p F * CA == CA * max_p F
        return ca * (ca_weight * pooled).unsqueeze(1)
    weight = sa_weight * sa.unsqueeze(-1)
    if ca is not None:
        weight = weight + ca_weight * ca.unsqueeze(2)
    return torch.max(feat.unsqueeze(1) * weight, dim=2)[0]
