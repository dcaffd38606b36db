"""Eq. 4, the channel attention ``CA = sigmoid(f_c(tanh(f_ca(GMP(F)) * f_w(x_c))))``.

:func:`channel_attention_reference` uses autograd ops; :class:`_ChannelAttention` (float32/64 training) keeps
only CA and recomputes the tanh gate per chunk of categories in backward, so no ``[B, C, d]`` intermediates are
stored.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import lean_autograd_applies

__all__ = ['channel_attention', 'channel_attention_reference', 'channel_attention_forward',
           'channel_attention_backward_chunk', 'chunk_size', 'BACKWARD_CHUNK_ELEMENTS']

#: Elements of one ``[B, C_chunk, d]`` block in the chunked forward/backward (2**20 fp32 = 4 MiB).
BACKWARD_CHUNK_ELEMENTS = 1 << 20


def channel_attention_reference(gate_input: Tensor, embeddings: Tensor, weight: Tensor, bias: Optional[Tensor],
                                class_index: Optional[Tensor] = None) -> Tensor:
    """Eq. 4 with autograd ops: ``sigmoid(tanh(a_b * e_c) W^T + bias)``.

    Args:
        gate_input: ``a = f_ca(GMP(F))`` ``[B, d]``, or ``[B, K, d]`` with ``class_index``.
        embeddings: ``e = f_w(x_c)`` ``[C, d]``; weight, bias: ``f_c``.
        class_index: ``[B, K]`` categories per image (OE's erased pass), or None for all.

    Returns:
        ``[B, C, d]`` (or ``[B, K, d]``).
    """
    e = embeddings.unsqueeze(0) if class_index is None else embeddings[class_index]
    gate = torch.tanh((gate_input if gate_input.dim() == 3 else gate_input.unsqueeze(1)) * e)
    return torch.sigmoid(F.linear(gate, weight, bias))


def _chunk(batch: int, num_classes: int, channels: int, chunk_elements: int) -> int:
    return max(1, min(num_classes, chunk_elements // max(1, batch * channels)))


def chunk_size(batch: int, num_classes: int, channels: int, chunk_elements: int) -> int:
    """Categories per ``[B, n, d]`` chunk of at most ``chunk_elements`` elements."""
    return _chunk(batch, num_classes, channels, chunk_elements)


def channel_attention_forward(gate_input: Tensor, embeddings: Tensor, weight: Tensor, bias: Optional[Tensor],
                              step: int) -> Tensor:
    """Eq. 4 for all categories ``[B, C, d]``, ``step`` categories at a time (no ``[B, C, d]`` gate)."""
    batch, channels = gate_input.shape
    num_classes = embeddings.shape[0]
    out = gate_input.new_empty(batch, num_classes, channels)
    for c0 in range(0, num_classes, step):
        c1 = min(num_classes, c0 + step)
        gate = torch.tanh(gate_input.unsqueeze(1) * embeddings[c0:c1])
        out[:, c0:c1] = torch.sigmoid_(F.linear(gate, weight, bias))
    return out


def channel_attention_backward_chunk(grad_ca: Tensor, ca: Tensor, gate_input: Tensor, embeddings: Tensor,
                                     weight: Tensor, grad_a: Optional[Tensor], grad_w: Optional[Tensor],
                                     grad_b: Optional[Tensor], need_e: bool, gate: Optional[Tensor] = None
                                     ) -> Optional[Tensor]:
    """Eq. 4's backward for one chunk of categories: ``grad_ca``, ``ca`` ``[B, n, d]`` and their ``embeddings``
    ``[n, d]``; accumulates into ``grad_a``, ``grad_w``, ``grad_b`` and returns ``dL/de`` ``[n, d]`` (if
    ``need_e``). The tanh ``gate`` is recomputed unless given."""
    channels = gate_input.shape[1]
    if gate is None:
        gate = torch.tanh(gate_input.unsqueeze(1) * embeddings)  # [B, n, d], recomputed
    grad_z = (grad_ca * ca).mul_(1 - ca)  # through the sigmoid
    rows_z, rows_gate = grad_z.reshape(-1, channels), gate.reshape(-1, channels)
    if grad_w is not None:
        grad_w.addmm_(rows_z.t(), rows_gate)
    if grad_b is not None:
        grad_b += rows_z.sum(0)
    if grad_a is None and not need_e:
        return None
    grad_p = torch.mm(rows_z, weight).view_as(gate).mul_(1 - gate * gate)  # through f_c and tanh
    if grad_a is not None:
        grad_a += (grad_p * embeddings).sum(1)
    return (grad_p * gate_input.unsqueeze(1)).sum(0) if need_e else None


class _ChannelAttention(torch.autograd.Function):
    """Eq. 4 for all categories, saving ``(a, e, W, CA)`` only; gate recomputed per chunk in backward."""

    @staticmethod
    def forward(ctx, gate_input: Tensor, embeddings: Tensor, weight: Tensor, bias: Optional[Tensor],
                chunk_elements: int) -> Tensor:
        step = _chunk(gate_input.shape[0], embeddings.shape[0], gate_input.shape[1], chunk_elements)
        out = channel_attention_forward(gate_input, embeddings, weight, bias, step)
        ctx.save_for_backward(gate_input, embeddings, weight, out)
        ctx.has_bias = bias is not None
        ctx.step = step
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        gate_input, embeddings, weight, out = ctx.saved_tensors
        needs = ctx.needs_input_grad
        num_classes = embeddings.shape[0]
        grad_a = torch.zeros_like(gate_input) if needs[0] else None
        grad_e = torch.empty_like(embeddings) if needs[1] else None
        grad_w = torch.zeros_like(weight) if needs[2] else None
        grad_b = weight.new_zeros(weight.shape[0]) if (ctx.has_bias and needs[3]) else None
        for c0 in range(0, num_classes, ctx.step):
            c1 = min(num_classes, c0 + ctx.step)
            grad_e_chunk = channel_attention_backward_chunk(
                grad[:, c0:c1], out[:, c0:c1], gate_input, embeddings[c0:c1], weight, grad_a, grad_w, grad_b,
                grad_e is not None)
            if grad_e is not None:
                grad_e[c0:c1] = grad_e_chunk
        return grad_a, grad_e, grad_w, grad_b, None


@torch.fx.wrap
def channel_attention(gate_input: Tensor, embeddings: Tensor, weight: Tensor, bias: Optional[Tensor],
                      class_index: Optional[Tensor] = None,
                      chunk_elements: int = BACKWARD_CHUNK_ELEMENTS) -> Tensor:
    """Eq. 4 (see :func:`channel_attention_reference` for the arguments): the chunked autograd function when a
    gradient is needed for all categories in float32/float64 eager mode without autocast, else the reference."""
    if torch.jit.is_scripting():
        return channel_attention_reference(gate_input, embeddings, weight, bias, class_index)
    return _channel_attention_eager(gate_input, embeddings, weight, bias, class_index, chunk_elements)


@torch.jit.unused
def _channel_attention_eager(gate_input: Tensor, embeddings: Tensor, weight: Tensor, bias: Optional[Tensor],
                             class_index: Optional[Tensor], chunk_elements: int) -> Tensor:
    lean = (class_index is None and gate_input.dtype in (torch.float32, torch.float64)
            and lean_autograd_applies(gate_input, embeddings, weight, bias))
    if not lean:
        return channel_attention_reference(gate_input, embeddings, weight, bias, class_index)
    return _ChannelAttention.apply(gate_input, embeddings, weight, bias, chunk_elements)
