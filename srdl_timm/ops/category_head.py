"""Eqs. 4, 6 and 2 of the CAR head as one memory-lean autograd function (training, ``attention='paper'``).

``logit_c = <w_c, max_p F_p (a SA_p + b CA_c)>`` with ``CA = sigmoid(f_c(tanh(f_ca(GMP(F)) * f_w(x_c))))``. Run as
separate functions, the training step keeps the pooled features ``f`` ``[B, C, d]`` for eq. 2's backward and builds
two ``[B, C, d]`` gradients (``dL/df``, ``dL/dCA``) in the backward. Here only the ``[B, C, d]`` arg-max index of
eq. 6 is kept (and CA where it is small, :data:`SAVE_CA_MAX_ELEMENTS`); the backward walks the categories in chunks,
recomputing CA (one more ``f_c`` matmul), ``f`` and ``dL/df`` of a chunk from the index, so no ``[B, C, d]`` tensor
is allocated in the backward. The logits are bitwise those of the separate functions (same kernels, same order of
operations).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import dispatch
from .channel_attention import (
    BACKWARD_CHUNK_ELEMENTS, channel_attention_backward_chunk, channel_attention_forward, chunk_size,
)

__all__ = ['category_head_logits', 'CategoryHeadFunction', 'dot_per_category', 'SAVE_CA_MAX_ELEMENTS']

#: CA ``[B, C, d]`` up to this many elements (2**22 fp32 = 16 MiB: C = 80 at batch 2-16 with d = 2,048) is kept for
#: the backward; above it (OpenImages' C = 9,605: 39 M at batch 2) it is recomputed chunk by chunk in the backward,
#: one ``[B*n, d] x [d, d]`` matmul per chunk, instead of holding ``4*B*C*d`` bytes through the backward.
SAVE_CA_MAX_ELEMENTS = 1 << 22


def dot_per_category(features: Tensor, weight: Tensor) -> Tensor:
    """Eq. 2 without its bias: ``[B, C, d] x [C, d] -> [B, C]``, a matmul batched over C on a transposed view."""
    return torch.bmm(features.transpose(0, 1), weight.unsqueeze(-1)).squeeze(-1).t()


class CategoryHeadFunction(torch.autograd.Function):
    """Eq. 4 -> eq. 6 + GMP -> eq. 2's dot products, saving ``a, e, f_c, F, SA, index, w`` (CA only when small; no
    ``f``)."""

    @staticmethod
    def forward(ctx, gate_input: Tensor, embeddings: Tensor, ca_weight_matrix: Tensor, ca_bias: Optional[Tensor],
                feat: Tensor, sa: Tensor, weight: Tensor, weights: Tuple[float, float], impl: str,
                chunk_elements: int) -> Tensor:
        step = chunk_size(gate_input.shape[0], embeddings.shape[0], gate_input.shape[1], chunk_elements)
        ca = channel_attention_forward(gate_input, embeddings, ca_weight_matrix, ca_bias, step)
        features, index = dispatch.attention_max_pool_indexed(feat, sa, ca, weights[0], weights[1], impl)
        kept_ca = ca if ca.numel() <= SAVE_CA_MAX_ELEMENTS else None
        ctx.save_for_backward(gate_input, embeddings, ca_weight_matrix, ca_bias, feat, sa, kept_ca, index, weight)
        ctx.has_bias, ctx.step, ctx.weights = ca_bias is not None, step, weights
        return dot_per_category(features, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        gate_input, embeddings, ca_matrix, ca_bias, feat, sa, ca, index, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads = [torch.zeros_like(gate_input) if needs[0] else None,
                 torch.empty_like(embeddings) if needs[1] else None,
                 torch.zeros_like(ca_matrix) if needs[2] else None,
                 ca_matrix.new_zeros(ca_matrix.shape[0]) if (ctx.has_bias and needs[3]) else None,
                 torch.zeros_like(feat) if needs[4] else None,
                 torch.zeros_like(sa) if needs[5] else None,
                 torch.empty_like(weight) if needs[6] else None]
        grad = grad.contiguous()
        for c0 in range(0, embeddings.shape[0], ctx.step):
            c1 = min(embeddings.shape[0], c0 + ctx.step)
            _backward_chunk(c0, c1, grad, (gate_input, embeddings, ca_matrix, ca_bias, feat, sa, ca, index, weight),
                            ctx.weights, grads)
        return tuple(grads) + (None, None, None)


def _backward_chunk(c0: int, c1: int, grad: Tensor, saved: Tuple[Tensor, ...], weights: Tuple[float, float],
                    grads: list) -> None:
    """Gradients of the categories ``c0:c1``: eq. 2 (``dw``, ``df = g w``), eq. 6 + GMP at the arg-max (``dF``,
    ``dSA``, ``dCA``), then eq. 4 (``da``, ``de``, ``dW_c``, ``db_c``); accumulated into ``grads``."""
    gate_input, embeddings, ca_matrix, ca_bias, feat, sa, ca, index, weight = saved
    grad_a, grad_e, grad_wc, grad_bc, grad_feat, grad_sa, grad_weight = grads
    sa_weight, ca_weight = weights
    batch, positions, channels = feat.shape
    idx = index[:, c0:c1].long()  # [B, n, d]
    g = grad[:, c0:c1].unsqueeze(-1)  # [B, n, 1]
    gate = torch.tanh(gate_input.unsqueeze(1) * embeddings[c0:c1])  # eq. 4's gate, recomputed
    # CA of the chunk as the forward computed it (same chunk, same ops), where it was not kept
    ca_c = torch.sigmoid_(F.linear(gate, ca_matrix, ca_bias)) if ca is None else ca[:, c0:c1]
    # F[b, idx[b,c,k], k] from a broadcast view (no [B, n, P, d] copy); the eq. 6 weight at the arg-max
    feat_at = torch.gather(feat.unsqueeze(1).expand(batch, c1 - c0, positions, channels), 2,
                           idx.unsqueeze(2)).squeeze(2)
    weight_at = torch.gather(sa[:, c0:c1], 2, idx).mul_(sa_weight).add_(ca_c, alpha=ca_weight)
    if grad_weight is not None:  # dw_c = sum_b g f_c, f recomputed at the arg-max
        grad_weight[c0:c1] = (feat_at * weight_at).mul_(g).sum(0)
    grad_f = g * weight[c0:c1]  # [B, n, d]
    if grad_feat is not None:
        grad_feat.scatter_add_(1, idx, weight_at.mul_(grad_f))
    g_feat = feat_at.mul_(grad_f)
    if grad_sa is not None:
        grad_sa[:, c0:c1].scatter_add_(2, idx, g_feat * sa_weight)
    if grad_a is None and grad_e is None and grad_wc is None and grad_bc is None:
        return
    grad_e_chunk = channel_attention_backward_chunk(
        g_feat.mul_(ca_weight), ca_c, gate_input, embeddings[c0:c1], ca_matrix, grad_a, grad_wc, grad_bc,
        grad_e is not None, gate)
    if grad_e is not None:
        grad_e[c0:c1] = grad_e_chunk


@torch.jit.unused
def category_head_logits(gate_input: Tensor, embeddings: Tensor, ca_weight_matrix: Tensor, ca_bias: Optional[Tensor],
                         feat: Tensor, sa: Tensor, weight: Tensor, sa_weight: float = 0.5, ca_weight: float = 0.5,
                         impl: str = 'auto', chunk_elements: int = BACKWARD_CHUNK_ELEMENTS) -> Tensor:
    """Eq. 2's ``<w_c, f_c>`` ``[B, C]`` (bias not added) of eq. 6's ``f`` with eq. 4's CA, for training.

    Args:
        gate_input: ``f_ca(GMP(F))`` ``[B, d]``; embeddings: ``f_w(x_c)`` ``[C, d]``; ca_weight_matrix, ca_bias:
            ``f_c``; feat: ``F`` ``[B, P, d]``; sa: eq. 5's SA ``[B, C, P]``; weight: eq. 2's ``w`` ``[C, d]``.
        sa_weight, ca_weight: eq. 6's weights; impl: eq. 6's kernel (:data:`.dispatch.ATTENTION_IMPLS`).
        chunk_elements: elements of one ``[B, n, d]`` chunk of categories (forward CA and backward).
    """
    return CategoryHeadFunction.apply(gate_input, embeddings, ca_weight_matrix, ca_bias, feat.contiguous(),
                                      sa.contiguous(), weight, (float(sa_weight), float(ca_weight)), impl,
                                      chunk_elements)
