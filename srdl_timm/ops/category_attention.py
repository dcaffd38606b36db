"""Kernels behind the CAR head's two per-category, per-position computations.

Both are sums or maxima over a ``B x C x P x d`` product (batch, categories, positions, channels) that the
paper writes with tensor repetition. Computed directly they materialise that product; here each has

* a ``*_reference`` function: the direct broadcast, readable, used for tests, TorchScript/ONNX export and
  under ``torch.compile`` (Inductor fuses the broadcast into a reduction);
* a memory-lean autograd function that walks over blocks of categories, keeps at most one block of the
  product alive, and recomputes it in backward instead of storing it. Peak extra memory is one block
  (``block_elements``) plus ``O(B*C*P + B*C*d)`` saved tensors: linear in C, with no ``B*C*P*d`` term.

Layout: feature maps are passed flattened as ``[B, P, d]`` (P = h*w positions).

The selection between them is :func:`select_impl`; the equations themselves live in ``layers/car.py``.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    'spatial_attention_logits', 'spatial_attention_logits_reference',
    'attention_max_pool', 'attention_max_pool_reference',
    'ATTENTION_IMPLS', 'select_impl', 'DEFAULT_BLOCK_ELEMENTS',
]

ATTENTION_IMPLS = ('auto', 'reference', 'chunked')

#: Elements of one ``[B, C_block, P, d]`` block (2**24 fp32 = 64 MiB) in the chunked path.
DEFAULT_BLOCK_ELEMENTS = 1 << 24


def select_impl(impl: str) -> str:
    """Resolve ``'auto'`` to a concrete implementation for the current execution context.

    TorchScript, tracing (ONNX export) and ``torch.compile`` get the reference (the compilers fuse it);
    eager execution gets the memory-lean chunked path.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f'Unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}')
    if impl != 'auto':
        return impl
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return 'reference'
    if torch.compiler.is_compiling():
        return 'reference'
    return 'chunked'


def _block_size(batch: int, positions: int, channels: int, num_classes: int, block_elements: int) -> int:
    per_class = max(1, batch * positions * channels)
    return max(1, min(num_classes, block_elements // per_class))


# ----------------------------------------------------------------------------------------------------------
# eq. 5 inner term:  z[b, c, p] = sum_k w[k] * tanh(s[b, p, k] * e[c, k])
# ----------------------------------------------------------------------------------------------------------

def spatial_attention_logits_reference(s: Tensor, e: Tensor, w: Tensor) -> Tensor:
    """Direct broadcast of ``sum_k w[k] tanh(s[b,p,k] e[c,k])``; builds ``[B, C, P, d]``.

    Args:
        s: ``f_sa(F)`` per position, ``[B, P, d]``.
        e: ``f_w(x_c)`` per category, ``[C, d]``.
        w: weight of ``f_s`` (d -> 1), ``[d]``.
    Returns:
        ``[B, C, P]`` pre-bias logits of the spatial attention.
    """
    return torch.matmul(torch.tanh(s.unsqueeze(1) * e.unsqueeze(0).unsqueeze(2)), w)


class _SpatialAttentionLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor, e: Tensor, w: Tensor, block_elements: int) -> Tensor:
        batch, positions, channels = s.shape
        num_classes = e.shape[0]
        step = _block_size(batch, positions, channels, num_classes, block_elements)
        out = s.new_empty((batch, num_classes, positions))
        s_b = s.unsqueeze(1)
        for c0 in range(0, num_classes, step):
            e_blk = e[c0:c0 + step].unsqueeze(0).unsqueeze(2)
            out[:, c0:c0 + step] = torch.matmul(torch.tanh(s_b * e_blk), w)
        ctx.save_for_backward(s, e, w)
        ctx.step = step
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        s, e, w = ctx.saved_tensors
        step = ctx.step
        need_s, need_e, need_w = ctx.needs_input_grad[:3]
        grad_s = torch.zeros_like(s) if need_s else None
        grad_e = torch.empty_like(e) if need_e else None
        grad_w = torch.zeros_like(w) if need_w else None
        s_b = s.unsqueeze(1)
        for c0 in range(0, e.shape[0], step):
            e_blk = e[c0:c0 + step]
            t = torch.tanh(s_b * e_blk.unsqueeze(0).unsqueeze(2))  # [B, Cb, P, d]
            g = grad[:, c0:c0 + step].unsqueeze(-1)  # [B, Cb, P, 1]
            if need_w:
                grad_w += (g * t).sum(dim=(0, 1, 2))
            if need_s or need_e:
                d_pre = g * (1 - t * t) * w  # gradient wrt the tanh argument
                if need_s:
                    grad_s += torch.einsum('bcpk,ck->bpk', d_pre, e_blk)
                if need_e:
                    grad_e[c0:c0 + step] = torch.einsum('bcpk,bpk->ck', d_pre, s)
        return grad_s, grad_e, grad_w, None


@torch.fx.wrap
def spatial_attention_logits(
        s: Tensor, e: Tensor, w: Tensor, impl: str = 'auto', block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> Tensor:
    """``sum_k w[k] tanh(s[b,p,k] e[c,k])`` -> ``[B, C, P]`` with the implementation ``impl`` selects."""
    if select_impl(impl) == 'reference':
        return spatial_attention_logits_reference(s, e, w)
    return _SpatialAttentionLogits.apply(s, e, w, block_elements)


# ----------------------------------------------------------------------------------------------------------
# eq. 6 + GMP:  f[b, c, k] = max_p F[b, p, k] * (sa_weight * SA[b, c, p] + ca_weight * CA[b, c, k])
# ----------------------------------------------------------------------------------------------------------

def attention_max_pool_reference(
        feat: Tensor, sa: Optional[Tensor], ca: Optional[Tensor], sa_weight: float = 0.5, ca_weight: float = 0.5,
) -> Tensor:
    """Direct broadcast of eq. 6 followed by global max pooling; builds ``[B, C, P, d]``.

    Args:
        feat: feature map ``[B, P, d]``.
        sa: spatial attention ``[B, C, P]`` or None.
        ca: channel attention ``[B, C, d]`` or None.
    Returns:
        Category features ``[B, C, d]``. The gradient of the max goes to the first maximal position, as in
        the chunked path.
    """
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


class _AttentionMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float, ca_weight: float,
                block_elements: int) -> Tensor:
        batch, positions, channels = feat.shape
        num_classes = sa.shape[1]
        step = _block_size(batch, positions, channels, num_classes, block_elements)
        out = feat.new_empty((batch, num_classes, channels))
        index = torch.empty((batch, num_classes, channels), dtype=torch.int64, device=feat.device)
        feat_b = feat.unsqueeze(1)
        for c0 in range(0, num_classes, step):
            weight = sa_weight * sa[:, c0:c0 + step].unsqueeze(-1)
            if ca is not None:
                weight = weight + ca_weight * ca[:, c0:c0 + step].unsqueeze(2)
            torch.max(feat_b * weight, dim=2, out=(out[:, c0:c0 + step], index[:, c0:c0 + step]))
        ctx.save_for_backward(feat, sa, ca, index)
        ctx.weights = (sa_weight, ca_weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        feat, sa, ca, index = ctx.saved_tensors
        sa_weight, ca_weight = ctx.weights
        batch, positions, channels = feat.shape
        num_classes = sa.shape[1]
        # values at the argmax position: F[b, idx[b,c,k], k] and SA[b, c, idx[b,c,k]]
        feat_at = torch.gather(feat.unsqueeze(1).expand(batch, num_classes, positions, channels), 2,
                               index.unsqueeze(2)).squeeze(2)
        sa_at = torch.gather(sa, 2, index)
        grad_feat = grad_sa = grad_ca = None
        if ctx.needs_input_grad[0]:
            weight_at = sa_weight * sa_at
            if ca is not None:
                weight_at = weight_at + ca_weight * ca
            # grad_feat[b, idx[b,c,k], k] += grad[b,c,k] * weight_at[b,c,k], summed over c
            grad_feat = torch.zeros_like(feat).scatter_add_(1, index, grad * weight_at)
        if ctx.needs_input_grad[1]:
            grad_sa = torch.zeros_like(sa).scatter_add_(2, index, grad * feat_at * sa_weight)
        if ca is not None and ctx.needs_input_grad[2]:
            grad_ca = grad * feat_at * ca_weight
        return grad_feat, grad_sa, grad_ca, None, None, None


@torch.fx.wrap
def attention_max_pool(
        feat: Tensor, sa: Optional[Tensor], ca: Optional[Tensor], sa_weight: float = 0.5, ca_weight: float = 0.5,
        impl: str = 'auto', block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> Tensor:
    """Eq. 6 + GMP -> ``[B, C, d]`` with the implementation ``impl`` selects (see module docstring)."""
    if sa is None or select_impl(impl) == 'reference':
        return attention_max_pool_reference(feat, sa, ca, sa_weight, ca_weight)
    return _AttentionMaxPool.apply(feat, sa, ca, sa_weight, ca_weight, block_elements)
