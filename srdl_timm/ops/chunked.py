"""Chunked kernels of eqs. 5-6 (``impl='chunked'``; eager, any device): one cache-sized block of the ``B x C x P x d``
product alive at a time, recomputed in backward instead of stored; fp32/fp64 values as the reference's, 16-bit inputs
computed in fp32."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .autograd_functions import run_attention_max_pool, run_spatial_attention_logits
from .common import (
    index_dtype, logits_grads_in_compute_dtype, logits_in_compute_dtype, plan_blocks, pool_in_compute_dtype,
)

__all__ = ['spatial_attention_logits_chunked', 'attention_max_pool_chunked', 'attention_max_pool_indexed_chunked',
           'logits_forward', 'logits_backward', 'pool_forward']


def spatial_attention_logits_chunked(s: Tensor, e: Tensor, w: Tensor, block_elements: int) -> Tensor:
    """Eq. 5's inner sum ``sum_k w[k] tanh(s[b,p,k] e[c,k])`` -> ``[B, C, P]`` in blocks of ``block_elements``
    (differentiable; any float dtype)."""

    def forward(s_: Tensor, e_: Tensor, w_: Tensor) -> Tensor:
        return logits_in_compute_dtype(logits_forward, s_, e_, w_, block_elements)

    def backward(s_: Tensor, e_: Tensor, w_: Tensor, grad: Tensor, need_s: bool, need_e: bool, need_w: bool):
        return logits_grads_in_compute_dtype(logits_backward, s_, e_, w_, grad, block_elements, need_s, need_e,
                                             need_w)

    return run_spatial_attention_logits(forward, backward, s, e, w)


def attention_max_pool_chunked(feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float, ca_weight: float,
                               block_elements: int) -> Tensor:
    """Eq. 6 + GMP -> ``[B, C, d]`` in blocks of ``block_elements`` (differentiable; arg-max ties go to the first
    position)."""

    def forward(feat_: Tensor, sa_: Tensor, ca_: Optional[Tensor], a: float, b: float, with_index: bool):
        return pool_in_compute_dtype(pool_forward, feat_, sa_, ca_, a, b, block_elements, with_index)

    return run_attention_max_pool(forward, feat, sa, ca, sa_weight, ca_weight)


def attention_max_pool_indexed_chunked(feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float,
                                       ca_weight: float, block_elements: int) -> Tuple[Tensor, Tensor]:
    """Eq. 6 + GMP ``[B, C, d]`` and its first arg-max position ``[B, C, d]`` (no autograd: for a caller's own
    backward)."""
    out, index = pool_in_compute_dtype(pool_forward, feat, sa, ca, sa_weight, ca_weight, block_elements, True)
    assert index is not None
    return out, index


def _buffer(numel: int, like: Tensor) -> Tensor:
    return torch.empty(numel, dtype=like.dtype, device=like.device)


def logits_forward(s: Tensor, e: Tensor, w: Tensor, block_elements: int) -> Tensor:
    batch, positions, channels = s.shape
    num_classes = e.shape[0]
    step_c, step_p = plan_blocks(num_classes, positions, channels, block_elements)
    out = s.new_empty((batch, num_classes, positions))
    buf = _buffer(step_c * step_p * channels, s)
    e3 = e.unsqueeze(1)  # [C, 1, d]
    # plan_blocks gives one class or whole rows per block, so a block's outputs out[b, c0:c1, p0:p1] are one
    # contiguous run of the flat output
    flat = out.view(-1)
    # (the loop body is a handful of tensor ops per ~1 MiB block: keep Python-side views to a minimum)
    for b in range(batch):
        for p0 in range(0, positions, step_p):
            p1 = min(positions, p0 + step_p)
            n_p = p1 - p0
            s_blk = s[b, p0:p1].unsqueeze(0)  # [1, Pb, d]
            full = buf[:step_c * n_p * channels].view(step_c, n_p, channels)
            for c0 in range(0, num_classes, step_c):
                n_c = min(num_classes - c0, step_c)
                t = full if n_c == step_c else buf[:n_c * n_p * channels].view(n_c, n_p, channels)
                torch.mul(s_blk, e3[c0:c0 + n_c], out=t)
                t.tanh_()
                start = (b * num_classes + c0) * positions + p0
                torch.mv(t.view(-1, channels), w, out=flat[start:start + n_c * n_p])
    return out


def logits_backward(
        s: Tensor, e: Tensor, w: Tensor, grad: Tensor, block_elements: int,
        need_s: bool, need_e: bool, need_w: bool,
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of :func:`logits_forward`, block by block (``t = tanh(s e)``, ``u = 1 - t^2``):
    ``ds = w_k sum_c g u e``, ``de = w_k sum_{b,p} g u s``, ``dw = sum g t``."""
    batch, positions, channels = s.shape
    num_classes = e.shape[0]
    step_c, step_p = plan_blocks(num_classes, positions, channels, block_elements)
    acc_s = torch.zeros_like(s) if need_s else None  # sum_c g u e (w applied at the end)
    acc_e = torch.zeros_like(e) if need_e else None  # sum_{b,p} g u s
    grad_w = torch.zeros_like(w) if need_w else None
    if not (need_s or need_e or need_w):
        return None, None, None
    buf = _buffer(step_c * step_p * channels, s)
    tmp = _buffer(step_c * step_p * channels, s) if (need_s and need_e) else None
    for b in range(batch):
        for p0 in range(0, positions, step_p):
            p1 = min(positions, p0 + step_p)
            s_blk = s[b, p0:p1]  # [Pb, d]
            for c0 in range(0, num_classes, step_c):
                c1 = min(num_classes, c0 + step_c)
                n_c, n_p = c1 - c0, p1 - p0
                e_blk = e[c0:c1].unsqueeze(1)  # [Cb, 1, d]
                g = grad[b, c0:c1, p0:p1]  # [Cb, Pb]
                t = buf[:n_c * n_p * channels].view(n_c, n_p, channels)
                torch.mul(s_blk.unsqueeze(0), e_blk, out=t)
                t.tanh_()
                if grad_w is not None:
                    grad_w.addmv_(t.view(-1, channels).t(), g.reshape(-1))
                if not (need_s or need_e):
                    continue
                t.mul_(t).sub_(1).mul_(g.unsqueeze(-1))  # -g u
                if acc_e is not None:
                    if acc_s is not None:
                        v = tmp[:t.numel()].view_as(t)
                        torch.mul(t, s_blk.unsqueeze(0), out=v)
                    else:
                        v = t.mul_(s_blk.unsqueeze(0))
                    acc_e[c0:c1] -= v.sum(dim=1)
                if acc_s is not None:
                    acc_s[b, p0:p1] -= t.mul_(e_blk).sum(dim=0)
    grad_s = acc_s.mul_(w) if acc_s is not None else None
    grad_e = acc_e.mul_(w) if acc_e is not None else None
    return grad_s, grad_e, grad_w


def pool_forward(
        feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float, ca_weight: float,
        block_elements: int, with_index: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunked eq. 6 + GMP; the values are bitwise those of the reference. Index of the max if asked."""
    batch, positions, channels = feat.shape
    num_classes = sa.shape[1]
    step_c, step_k = plan_blocks(num_classes, channels, positions, block_elements)  # blocks [Cb, P, kb]
    sa_w = sa * sa_weight  # [B, C, P]
    ca_w = ca * ca_weight if ca is not None else None
    out = feat.new_empty((batch, num_classes, channels))
    index = torch.empty((batch, num_classes, channels), dtype=index_dtype(positions), device=feat.device) \
        if with_index else None
    buf = _buffer(step_c * positions * step_k, feat)
    if index is not None:
        ramp = torch.arange(positions, 0, -1, dtype=feat.dtype, device=feat.device).view(1, positions, 1)
    sa4 = sa_w.unsqueeze(-1)  # [B, C, P, 1]
    ca4 = ca_w.unsqueeze(2) if ca_w is not None else None  # [B, C, 1, d]
    if step_k < channels and channels % step_k == 0:
        # channel blocks as contiguous [P, kb] slabs: one copy of F, faster elementwise ops on every block
        feat_blocks = feat.view(batch, positions, channels // step_k, step_k).transpose(1, 2).contiguous()
    else:
        feat_blocks = None
    for b in range(batch):
        for k0 in range(0, channels, step_k):
            k1 = min(channels, k0 + step_k)
            n_k = k1 - k0
            f_blk = (feat_blocks[b, k0 // step_k] if feat_blocks is not None else feat[b, :, k0:k1]).unsqueeze(0)
            full = buf[:step_c * positions * n_k].view(step_c, positions, n_k)
            for c0 in range(0, num_classes, step_c):
                c1 = min(num_classes, c0 + step_c)
                v = full if c1 - c0 == step_c else buf[:(c1 - c0) * positions * n_k].view(c1 - c0, positions, n_k)
                if ca4 is not None:
                    torch.add(sa4[b, c0:c1], ca4[b, c0:c1, :, k0:k1], out=v)
                    v.mul_(f_blk)
                else:
                    torch.mul(f_blk, sa4[b, c0:c1], out=v)
                # one class or whole rows per block (plan_blocks): out[b, c0:c1, k0:k1] is contiguous, written in place
                values = torch.amax(v, dim=1, out=out[b, c0:c1, k0:k1])
                if index is not None:
                    # first arg-max without torch.max(dim)'s slow index path: mark the maxima with the
                    # descending ramp P..1, the largest mark is the first maximum (NaN rows: clamped)
                    torch.eq(v, values.unsqueeze(1), out=v)  # 1.0 / 0.0 in place (bool tensors are slow on CPU)
                    first = torch.amax(v.mul_(ramp), dim=1)
                    index[b, c0:c1, k0:k1] = first.neg_().add_(positions).clamp_(0, positions - 1)
    return out, index
