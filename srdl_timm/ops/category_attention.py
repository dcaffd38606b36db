"""Kernels behind the CAR head's two per-category, per-position computations.

Both are sums or maxima over a ``B x C x P x d`` product (batch, categories, positions, channels) that the
paper writes with tensor repetition:

* eq. 5's inner sum ``z[b, c, p] = sum_k w[k] tanh(s[b, p, k] e[c, k])`` (:func:`spatial_attention_logits`);
* eq. 6 + GMP ``f[b, c, k] = max_p F[b, p, k] (a SA[b, c, p] + b CA[b, c, k])`` (:func:`attention_max_pool`).

Computed directly they materialise that product. Implementations (``impl``):

``'reference'``
    The direct broadcast: readable, used by tests, TorchScript/ONNX export and ``torch.compile`` (Inductor
    fuses each op into one reduction loop, so nothing of size ``B*C*P*d`` is stored; on the CPU measured,
    Inductor's fused max-pool ran about 2x faster than the chunked one, its fused tanh sum about 3x slower).
``'chunked'``
    Eager, any device. Walks over cache-sized blocks of (batch item, categories, positions or channels),
    keeps one block of the product alive in a reused buffer, and recomputes it in backward instead of
    storing it. Extra memory: one block (``block_elements``) plus ``O(B*C*P + B*C*d)`` saved tensors --
    linear in C, with no ``B*C*P*d`` term. For fp32/fp64 the values come from the same operations in the
    same order as the reference (the max-pool is bitwise equal to it); 16-bit inputs are computed in fp32
    and rounded once.
``'triton'``
    Fused Triton kernels (:mod:`.triton_category_attention`) with their own backward; CUDA (or, for testing
    on CPU, Triton's interpreter when Python was started with ``TRITON_INTERPRET=1``).
``'auto'``
    :func:`select_impl`: reference when scripting, tracing or compiling; Triton on CUDA when importable;
    otherwise chunked.

Layout: feature maps are passed flattened as ``[B, P, d]`` (P = h*w positions).
The equations themselves (biases, sigmoids, weights) live in ``layers/car.py``.
"""
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    'spatial_attention_logits', 'spatial_attention_logits_reference',
    'attention_max_pool', 'attention_max_pool_reference',
    'ATTENTION_IMPLS', 'select_impl', 'DEFAULT_BLOCK_ELEMENTS', 'CUDA_BLOCK_ELEMENTS', 'resolve_block_elements',
    'attention_max_pool_backward',
]

ATTENTION_IMPLS = ('auto', 'reference', 'chunked', 'triton')

#: Elements of one block of the ``B x C x P x d`` product per CPU thread in the chunked path: 2**18 fp32 =
#: 1 MiB, which stays in a core's L2 cache (each op splits a block over the intra-op threads, so a block of
#: ``threads x`` this keeps every thread's share in its own L2). Larger blocks spill to memory and ran 1.4-5x
#: slower per element on the CPU measured (Xeon, 2 MiB L2 per core).
DEFAULT_BLOCK_ELEMENTS = 1 << 18

#: Block of the chunked path on GPUs (few large launches; one block is 64 MiB in fp32).
CUDA_BLOCK_ELEMENTS = 1 << 24


_TRITON_FAILED = False  # set when a Triton launch failed under impl='auto'; auto then stays on chunked


def _triton_usable(device: torch.device) -> bool:
    if _TRITON_FAILED:
        return False
    from . import triton_category_attention as tca
    return tca.is_available(device)


def _auto_triton_failed(error: Exception) -> None:
    """Remember that Triton failed under ``impl='auto'`` (e.g. no compiler for this card) and warn once."""
    global _TRITON_FAILED
    if not _TRITON_FAILED:
        warnings.warn(f'Triton kernels for the CAR head failed ({type(error).__name__}: {error}); '
                      "impl='auto' falls back to the chunked path. Pass impl='triton' to see the error.")
    _TRITON_FAILED = True


def select_impl(impl: str, device: Optional[torch.device] = None) -> str:
    """Resolve ``impl`` (one of :data:`ATTENTION_IMPLS`) to a concrete implementation.

    ``'auto'`` gives the reference under TorchScript, tracing (ONNX export) and ``torch.compile`` (the
    compilers fuse it); in eager mode Triton when ``device`` is CUDA and Triton is importable, else the
    chunked path (always on CPU). Explicit choices are returned as given (``'triton'`` is checked where it
    runs).

    Args:
        impl: requested implementation.
        device: device of the inputs; ``None`` is treated as CPU.
    Returns:
        ``'reference'``, ``'chunked'`` or ``'triton'``.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f'Unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}')
    if impl != 'auto':
        return impl
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return 'reference'
    if torch.compiler.is_compiling():
        return 'reference'
    if device is not None and device.type == 'cuda' and _triton_usable(device):
        return 'triton'
    return 'chunked'


def resolve_block_elements(block_elements: Optional[int], device: torch.device) -> int:
    """Block size of the chunked path: ``block_elements`` if given, else a default for ``device`` (CPU:
    :data:`DEFAULT_BLOCK_ELEMENTS` per intra-op thread, at most 8 threads' worth; other devices:
    :data:`CUDA_BLOCK_ELEMENTS`)."""
    if block_elements is not None:
        if block_elements < 1:
            raise ValueError(f'block_elements must be >= 1, got {block_elements}')
        return block_elements
    if device.type != 'cpu':
        return CUDA_BLOCK_ELEMENTS
    return DEFAULT_BLOCK_ELEMENTS * min(8, max(1, torch.get_num_threads()))


def _split(total: int, max_step: int) -> int:
    """Step that cuts ``range(total)`` into ``ceil(total / max_step)`` near-equal pieces."""
    max_step = max(1, min(total, max_step))
    pieces = -(-total // max_step)
    return -(-total // pieces)


def _plan(num_classes: int, rows: int, cols: int, block_elements: int) -> Tuple[int, int]:
    """Block shape ``(classes, rows)`` for a ``[classes, rows, cols]`` block of at most ``block_elements``.

    Whole rows of ``cols`` elements are kept; when one class's ``rows x cols`` slab is larger than the block,
    rows are split evenly instead (``classes = 1``). So a block always has whole rows or a single class, and
    its slice of a ``[classes, rows]``-major output is contiguous (the chunked kernels write it in place).
    """
    per_class = max(1, rows * cols)
    if per_class <= block_elements:
        return _split(num_classes, block_elements // per_class), rows
    return 1, _split(rows, max(1, block_elements // max(1, cols)))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Chunked math runs in float32 for 16-bit inputs (one rounding at the end, float32 accumulation)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _result_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """Dtype of the reference's result: type promotion over the given tensors (e.g. bf16 F with fp32 SA)."""
    dtype = None
    for t in tensors:
        if t is not None:
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    assert dtype is not None
    return dtype


def _up(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype).contiguous()


def _needs_grad(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd will record an op on ``tensors`` (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _buffer(numel: int, like: Tensor) -> Tensor:
    return torch.empty(numel, dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------------------------------------
# eq. 5 inner term:  z[b, c, p] = sum_k w[k] * tanh(s[b, p, k] * e[c, k])
# ----------------------------------------------------------------------------------------------------------

def spatial_attention_logits_reference(s: Tensor, e: Tensor, w: Tensor) -> Tensor:
    """Direct broadcast of ``sum_k w[k] tanh(s[b,p,k] e[c,k])``; builds ``[B, C, P, d]`` in eager mode.

    Args:
        s: ``f_sa(F)`` per position, ``[B, P, d]``.
        e: ``f_w(x_c)`` per category, ``[C, d]``.
        w: weight of ``f_s`` (d -> 1), ``[d]``.
    Returns:
        ``[B, C, P]`` pre-bias logits of the spatial attention.
    """
    product = torch.tanh(s.unsqueeze(1) * e.unsqueeze(0).unsqueeze(2))
    if not torch.jit.is_scripting() and torch.compiler.is_compiling():
        # a mul + sum is one fused reduction for Inductor; a matmul would be an external kernel on the product
        return (product * w).sum(-1)
    return torch.matmul(product, w)


def _logits_forward(s: Tensor, e: Tensor, w: Tensor, block_elements: int) -> Tensor:
    batch, positions, channels = s.shape
    num_classes = e.shape[0]
    step_c, step_p = _plan(num_classes, positions, channels, block_elements)
    out = s.new_empty((batch, num_classes, positions))
    buf = _buffer(step_c * step_p * channels, s)
    e3 = e.unsqueeze(1)  # [C, 1, d]
    # _plan gives one class or whole rows per block, so a block's outputs out[b, c0:c1, p0:p1] are one
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


def _logits_backward(
        s: Tensor, e: Tensor, w: Tensor, grad: Tensor, block_elements: int,
        need_s: bool, need_e: bool, need_w: bool,
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of :func:`_logits_forward` with the product recomputed block by block.

    With ``t = tanh(s e)`` and ``u = 1 - t^2``: ``ds[b,p,k] = w_k sum_c g[b,c,p] u e[c,k]``,
    ``de[c,k] = w_k sum_{b,p} g[b,c,p] u s[b,p,k]``, ``dw[k] = sum_{b,c,p} g[b,c,p] t``.
    """
    batch, positions, channels = s.shape
    num_classes = e.shape[0]
    step_c, step_p = _plan(num_classes, positions, channels, block_elements)
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


def _logits_chunked(s: Tensor, e: Tensor, w: Tensor, block_elements: int) -> Tensor:
    dtype = _compute_dtype(_result_dtype(s, e, w))
    return _logits_forward(_up(s, dtype), _up(e, dtype), _up(w, dtype), block_elements).to(s.dtype)


class _SpatialAttentionLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor, e: Tensor, w: Tensor, block_elements: int) -> Tensor:
        s, e, w = s.contiguous(), e.contiguous(), w.contiguous()
        ctx.save_for_backward(s, e, w)
        ctx.block_elements = block_elements
        return _logits_chunked(s, e, w, block_elements)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        s, e, w = ctx.saved_tensors
        need_s, need_e, need_w = ctx.needs_input_grad[:3]
        dtype = _compute_dtype(_result_dtype(s, e, w))
        grads = _logits_backward(_up(s, dtype), _up(e, dtype), _up(w, dtype), _up(grad, dtype),
                                 ctx.block_elements, need_s, need_e, need_w)
        grad_s, grad_e, grad_w = (None if g is None else g.to(t.dtype) for g, t in zip(grads, (s, e, w)))
        return grad_s, grad_e, grad_w, None


@torch.fx.wrap
def spatial_attention_logits(
        s: Tensor, e: Tensor, w: Tensor, impl: str = 'auto', block_elements: Optional[int] = None,
) -> Tensor:
    """``sum_k w[k] tanh(s[b,p,k] e[c,k])`` -> ``[B, C, P]`` with the implementation ``impl`` selects.

    Args:
        s: ``[B, P, d]``; e: ``[C, d]``; w: ``[d]`` (same dtype and device).
        impl: one of :data:`ATTENTION_IMPLS`.
        block_elements: block size of the chunked path (elements of the ``B x C x P x d`` product); None
            picks :func:`resolve_block_elements`'s default.
    """
    if torch.jit.is_scripting():
        return spatial_attention_logits_reference(s, e, w)
    return _spatial_attention_logits_eager(s, e, w, impl, block_elements)


@torch.jit.unused
def _spatial_attention_logits_eager(
        s: Tensor, e: Tensor, w: Tensor, impl: str, block_elements: Optional[int]) -> Tensor:
    chosen = select_impl(impl, s.device)
    if chosen == 'reference':
        return spatial_attention_logits_reference(s, e, w)
    if chosen == 'triton':
        from . import triton_category_attention as tca
        if impl != 'auto':
            return tca.spatial_attention_logits_triton(s, e, w)
        try:
            return tca.spatial_attention_logits_triton(s, e, w)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # compile/launch failure: keep the model usable
            _auto_triton_failed(error)
    block_elements = resolve_block_elements(block_elements, s.device)
    if not _needs_grad(s, e, w):
        return _logits_chunked(s, e, w, block_elements)
    return _SpatialAttentionLogits.apply(s, e, w, block_elements)


# ----------------------------------------------------------------------------------------------------------
# eq. 6 + GMP:  f[b, c, k] = max_p F[b, p, k] * (sa_weight * SA[b, c, p] + ca_weight * CA[b, c, k])
# ----------------------------------------------------------------------------------------------------------

def attention_max_pool_reference(
        feat: Tensor, sa: Optional[Tensor], ca: Optional[Tensor], sa_weight: float = 0.5, ca_weight: float = 0.5,
) -> Tensor:
    """Direct broadcast of eq. 6 followed by global max pooling; builds ``[B, C, P, d]`` in eager mode.

    Args:
        feat: feature map ``[B, P, d]``.
        sa: spatial attention ``[B, C, P]`` or None.
        ca: channel attention ``[B, C, d]`` or None.
    Returns:
        Category features ``[B, C, d]``. The gradient of the max goes to one maximal position (the first
        on CPU); the other paths pick the first.
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


def _pool_forward(
        feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float, ca_weight: float,
        block_elements: int, with_index: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunked eq. 6 + GMP; the values are bitwise those of the reference. Index of the max if asked."""
    batch, positions, channels = feat.shape
    num_classes = sa.shape[1]
    step_c, step_k = _plan(num_classes, channels, positions, block_elements)  # blocks [Cb, P, kb]
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
                # one class or whole rows per block (_plan): out[b, c0:c1, k0:k1] is contiguous, written in place
                values = torch.amax(v, dim=1, out=out[b, c0:c1, k0:k1])
                if index is not None:
                    # first arg-max without torch.max(dim)'s slow index path: mark the maxima with the
                    # descending ramp P..1, the largest mark is the first maximum (NaN rows: clamped)
                    torch.eq(v, values.unsqueeze(1), out=v)  # 1.0 / 0.0 in place (bool tensors are slow on CPU)
                    first = torch.amax(v.mul_(ramp), dim=1)
                    index[b, c0:c1, k0:k1] = first.neg_().add_(positions).clamp_(0, positions - 1)
    return out, index


def index_dtype(positions: int) -> torch.dtype:
    """Smallest integer dtype that holds every position index (the saved arg-max is ``B*C*d`` of them)."""
    if positions <= torch.iinfo(torch.int16).max:
        return torch.int16
    if positions <= torch.iinfo(torch.int32).max:
        return torch.int32
    return torch.int64


#: Elements of the ``[B, C_chunk, d]`` temporaries of the max-pool backward (2**22 fp32 = 16 MiB).
BACKWARD_CHUNK_ELEMENTS = 1 << 22


def attention_max_pool_backward(
        grad: Tensor, feat: Tensor, sa: Tensor, ca: Optional[Tensor], index: Tensor,
        sa_weight: float, ca_weight: float, needs: Tuple[bool, bool, bool],
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of eq. 6 + GMP given the arg-max position ``index`` ``[B, C, d]`` (any integer dtype).

    The gradient of each output goes to its recorded position: ``dF[b, i, k] += g w_at``,
    ``dSA[b, c, i] += a g F_at``, ``dCA[b, c, k] = b g F_at`` with ``i = index[b, c, k]``. Categories are
    processed in chunks so the temporaries stay at ``BACKWARD_CHUNK_ELEMENTS``; besides them only the
    gradients themselves are allocated. Shared by the chunked and Triton paths; 16-bit inputs accumulate in
    float32.
    """
    out_dtypes = (feat.dtype, sa.dtype, ca.dtype if ca is not None else None)
    dtype = _compute_dtype(_result_dtype(feat, sa, ca))
    feat, sa, ca, grad = _up(feat, dtype), _up(sa, dtype), _up(ca, dtype), _up(grad, dtype)
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


def _pool_chunked(
        feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float, ca_weight: float,
        block_elements: int, with_index: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    result = _result_dtype(feat, sa, ca)
    dtype = _compute_dtype(result)
    out, index = _pool_forward(_up(feat, dtype), _up(sa, dtype), _up(ca, dtype), sa_weight, ca_weight,
                               block_elements, with_index)
    return out.to(result), index


class _AttentionMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float, ca_weight: float,
                block_elements: int) -> Tensor:
        out, index = _pool_chunked(feat, sa, ca, sa_weight, ca_weight, block_elements, True)
        ctx.save_for_backward(feat, sa, ca, index)
        ctx.weights = (sa_weight, ca_weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        feat, sa, ca, index = ctx.saved_tensors
        sa_weight, ca_weight = ctx.weights
        grads = attention_max_pool_backward(grad, feat, sa, ca, index, sa_weight, ca_weight,
                                            tuple(ctx.needs_input_grad[:3]))
        return grads + (None, None, None)


@torch.fx.wrap
def attention_max_pool(
        feat: Tensor, sa: Optional[Tensor], ca: Optional[Tensor], sa_weight: float = 0.5, ca_weight: float = 0.5,
        impl: str = 'auto', block_elements: Optional[int] = None,
) -> Tensor:
    """Eq. 6 + GMP -> ``[B, C, d]`` with the implementation ``impl`` selects (see module docstring).

    Args:
        feat: ``[B, P, d]``; sa: ``[B, C, P]`` or None; ca: ``[B, C, d]`` or None.
        sa_weight, ca_weight: eq. 6's weights (0.5 each; 1 for the one left when the other is ablated).
        impl: one of :data:`ATTENTION_IMPLS`.
        block_elements: block size of the chunked path; None picks :func:`resolve_block_elements`'s default.
    """
    if torch.jit.is_scripting():
        return attention_max_pool_reference(feat, sa, ca, sa_weight, ca_weight)
    return _attention_max_pool_eager(feat, sa, ca, sa_weight, ca_weight, impl, block_elements)


@torch.jit.unused
def _attention_max_pool_eager(
        feat: Tensor, sa: Optional[Tensor], ca: Optional[Tensor], sa_weight: float, ca_weight: float,
        impl: str, block_elements: Optional[int]) -> Tensor:
    if sa is None:  # O(B*C*d) closed form, no per-position product
        return attention_max_pool_reference(feat, sa, ca, sa_weight, ca_weight)
    chosen = select_impl(impl, feat.device)
    if chosen == 'reference':
        return attention_max_pool_reference(feat, sa, ca, sa_weight, ca_weight)
    if chosen == 'triton':
        from . import triton_category_attention as tca
        if impl != 'auto':
            return tca.attention_max_pool_triton(feat, sa, ca, sa_weight, ca_weight)
        try:
            return tca.attention_max_pool_triton(feat, sa, ca, sa_weight, ca_weight)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # compile/launch failure: keep the model usable
            _auto_triton_failed(error)
    block_elements = resolve_block_elements(block_elements, feat.device)
    if not _needs_grad(feat, sa, ca):  # inference: no argmax, no saved tensors
        return _pool_chunked(feat, sa, ca, sa_weight, ca_weight, block_elements, False)[0]
    return _AttentionMaxPool.apply(feat, sa, ca, sa_weight, ca_weight, block_elements)
