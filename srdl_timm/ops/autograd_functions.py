"""The autograd functions of eqs. 5-6 shared by the chunked, compiled and Triton paths: each saves the inputs only (no
``B x C x P x d`` product) and takes the path's own forward (and backward) as arguments."""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .common import compute_dtype, needs_grad, result_dtype, upcast

__all__ = ['run_spatial_attention_logits', 'run_attention_max_pool', 'SpatialAttentionLogitsFunction',
           'AttentionMaxPoolFunction', 'attention_max_pool_backward', 'BACKWARD_CHUNK_ELEMENTS']

#: ``(s, e, w) -> [B, C, P]``: a path's forward of eq. 5's inner sum (contiguous inputs).
LogitsForward = Callable[[Tensor, Tensor, Tensor], Tensor]
#: ``(s, e, w, grad, need_s, need_e, need_w) -> (ds, de, dw)``: its backward, recomputing the product.
LogitsBackward = Callable[[Tensor, Tensor, Tensor, Tensor, bool, bool, bool],
                          Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]]
#: ``(feat, sa, ca, sa_weight, ca_weight, with_index) -> (out [B, C, d], first arg-max position [B, C, d] or
#: None without with_index)``: a path's forward of eq. 6 + GMP.
PoolForward = Callable[[Tensor, Tensor, Optional[Tensor], float, float, bool], Tuple[Tensor, Optional[Tensor]]]


def run_spatial_attention_logits(forward_fn: LogitsForward, backward_fn: LogitsBackward, s: Tensor, e: Tensor,
                                 w: Tensor) -> Tensor:
    """Eq. 5's inner sum with a path's kernels: ``forward_fn`` alone when no gradient is needed, else through
    :class:`SpatialAttentionLogitsFunction`."""
    if not needs_grad(s, e, w):
        return forward_fn(s, e, w)
    return SpatialAttentionLogitsFunction.apply(forward_fn, backward_fn, s, e, w)


def run_attention_max_pool(forward_fn: PoolForward, feat: Tensor, sa: Tensor, ca: Optional[Tensor],
                           sa_weight: float, ca_weight: float) -> Tensor:
    """Eq. 6 + GMP with a path's kernel: without a gradient no arg-max and nothing saved, else through
    :class:`AttentionMaxPoolFunction`."""
    if not needs_grad(feat, sa, ca):
        return forward_fn(feat, sa, ca, sa_weight, ca_weight, False)[0]
    return AttentionMaxPoolFunction.apply(forward_fn, feat, sa, ca, sa_weight, ca_weight)


class SpatialAttentionLogitsFunction(torch.autograd.Function):
    """Eq. 5's inner sum with a path's ``forward_fn`` / ``backward_fn``, saving ``s, e, w`` only."""

    @staticmethod
    def forward(ctx, forward_fn: LogitsForward, backward_fn: LogitsBackward, s: Tensor, e: Tensor, w: Tensor
                ) -> Tensor:
        s, e, w = s.contiguous(), e.contiguous(), w.contiguous()
        ctx.save_for_backward(s, e, w)
        ctx.backward_fn = backward_fn
        return forward_fn(s, e, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        s, e, w = ctx.saved_tensors
        need_s, need_e, need_w = ctx.needs_input_grad[2:5]
        return (None, None) + tuple(ctx.backward_fn(s, e, w, grad, need_s, need_e, need_w))


class AttentionMaxPoolFunction(torch.autograd.Function):
    """Eq. 6 + GMP with a path's ``forward_fn``, saving the inputs and the ``[B, C, d]`` arg-max index."""

    @staticmethod
    def forward(ctx, forward_fn: PoolForward, feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float,
                ca_weight: float) -> Tensor:
        out, index = forward_fn(feat, sa, ca, sa_weight, ca_weight, True)
        ctx.save_for_backward(feat, sa, ca, index)
        ctx.weights = (sa_weight, ca_weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        feat, sa, ca, index = ctx.saved_tensors
        grads = attention_max_pool_backward(grad, feat, sa, ca, index, *ctx.weights,
                                            tuple(ctx.needs_input_grad[1:4]))
        return (None,) + grads + (None, None)


#: Elements of the ``[B, C_chunk, d]`` temporaries of the max-pool backward (2**20 fp32 = 4 MiB; a handful
#: are alive at once, among them an int64 copy of the arg-max chunk, at the training step's memory peak).
BACKWARD_CHUNK_ELEMENTS = 1 << 20


def attention_max_pool_backward(
        grad: Tensor, feat: Tensor, sa: Tensor, ca: Optional[Tensor], index: Tensor,
        sa_weight: float, ca_weight: float, needs: Tuple[bool, bool, bool],
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of eq. 6 + GMP at the arg-max ``index`` ``[B, C, d]``: ``dF[b, i, k] += g w_at``,
    ``dSA[b, c, i] += a g F_at``, ``dCA[b, c, k] = b g F_at``; in category chunks, 16-bit accumulated in float32."""
    out_dtypes = (feat.dtype, sa.dtype, ca.dtype if ca is not None else None)
    dtype = compute_dtype(result_dtype(feat, sa, ca))
    feat, sa, ca, grad = upcast(feat, dtype), upcast(sa, dtype), upcast(ca, dtype), upcast(grad, dtype)
    batch, positions, channels = feat.shape
    num_classes = sa.shape[1]
    grad_feat = torch.zeros_like(feat) if needs[0] else None
    grad_sa = torch.zeros_like(sa) if needs[1] else None
    grad_ca = torch.empty_like(ca) if (ca is not None and needs[2]) else None
    step = max(1, min(num_classes, BACKWARD_CHUNK_ELEMENTS // max(1, batch * channels)))
    for c0 in range(0, num_classes, step):
        c1 = min(num_classes, c0 + step)
        idx = index[:, c0:c1].long()  # [B, n, d]
        g = grad[:, c0:c1]
        # F[b, idx[b,c,k], k]: gather from a broadcast view (no [B, n, P, d] copy)
        feat_at = torch.gather(feat.unsqueeze(1).expand(batch, c1 - c0, positions, channels), 2,
                               idx.unsqueeze(2)).squeeze(2)
        if grad_feat is not None:
            weight_at = torch.gather(sa[:, c0:c1], 2, idx).mul_(sa_weight)
            if ca is not None:
                weight_at.add_(ca[:, c0:c1], alpha=ca_weight)
            grad_feat.scatter_add_(1, idx, weight_at.mul_(g))
        if grad_sa is not None or grad_ca is not None:
            g_feat = feat_at.mul_(g)
            if grad_sa is not None:
                grad_sa[:, c0:c1].scatter_add_(2, idx, g_feat * sa_weight)
            if grad_ca is not None:
                torch.mul(g_feat, ca_weight, out=grad_ca[:, c0:c1])
    return tuple(None if g is None else g.to(t) for g, t in zip((grad_feat, grad_sa, grad_ca), out_dtypes))
