"""Compiled CPU kernels of eqs. 5-6 (``impl='compiled'``): ``torch.compile`` (Inductor) loops with the ``B x C x P x d``
product in registers, forward and backward, compiled once per shape and dtype. fp32 uses :func:`_tanh_fp32` (a rational
approximation, error below 4e-7); when no compiler works :func:`available` is False and ``'auto'`` keeps the chunked
path."""
import logging
import threading
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from .autograd_functions import run_attention_max_pool, run_spatial_attention_logits
from .common import (
    index_dtype, logits_grads_in_compute_dtype, logits_in_compute_dtype, one_time_work, pool_in_compute_dtype,
    shape_key,
)

_logger = logging.getLogger(__name__)

__all__ = [
    'spatial_attention_logits_compiled', 'attention_max_pool_compiled', 'logits_forward', 'logits_backward',
    'pool_forward', 'attention_max_pool_indexed_compiled', 'available', 'unavailable_reason', 'disable', 'reset',
    'ShapeLimitError', 'MAX_SHAPES',
]

#: Shapes (with dtype and flags) compiled per kernel in one process, within Dynamo's default recompile limit (past
#: it Dynamo would run the function eagerly, materialising the product); later new shapes use the chunked path.
#: Each is compiled with static sizes (symbolic sizes made Inductor's eq. 5 loop much slower).
MAX_SHAPES = 8

# fp32 tanh: Eigen's generic_fast_tanh_float (also XLA's), odd numerator / even denominator in x
_CLAMP = 7.90531110763549805  # tanh of it rounds to 1 in float32
_ALPHA = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
          -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_BETA = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)


def _tanh_fp32(x: Tensor) -> Tensor:
    """Rational approximation of ``tanh`` for float32 (multiplies, adds and one division: fast once vectorised)."""
    x = x.clamp(-_CLAMP, _CLAMP)
    x2 = x * x
    p = x2 * _ALPHA[6] + _ALPHA[5]
    for a in _ALPHA[4::-1]:
        p = p * x2 + a
    q = x2 * _BETA[3] + _BETA[2]
    for b in _BETA[1::-1]:
        q = q * x2 + b
    return x * p / q


def _tanh(x: Tensor) -> Tensor:
    return torch.tanh(x) if x.dtype == torch.float64 else _tanh_fp32(x)


def _logits_fwd(s: Tensor, e: Tensor, w: Tensor) -> Tensor:
    """``[B,P,d], [C,d], [d] -> [B,C,P]``: one reduction over ``d`` per output, the product never stored."""
    return (_tanh(s.unsqueeze(1) * e.unsqueeze(0).unsqueeze(2)) * w).sum(-1)


def _logits_bwd(s: Tensor, e: Tensor, w: Tensor, g: Tensor, need_s: bool, need_ew: bool):
    """Gradients of :func:`_logits_fwd`; ``u = 1 - t^2``: ``ds = w sum_c g u e``, ``de = w sum_{b,p} g u s``,
    ``dw = sum_{b,c,p} g t`` (the last two in one pass over ``(c, k)``, summed over ``c`` afterwards)."""
    t = _tanh(s.unsqueeze(1) * e.unsqueeze(0).unsqueeze(2))  # [B, C, P, d], fused away
    gu = g.unsqueeze(-1) * (1 - t * t)
    grad_s = (gu * e.unsqueeze(0).unsqueeze(2)).sum(1) * w if need_s else None
    if need_ew:
        grad_e = (gu * s.unsqueeze(1)).sum((0, 2)) * w
        grad_w = (g.unsqueeze(-1) * t).sum((0, 2)).sum(0)
    else:
        grad_e = grad_w = None
    return grad_s, grad_e, grad_w


def _pool_fwd(feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float, ca_weight: float,
              with_index: bool, index_dtype: torch.dtype):
    """Eq. 6 + GMP ``[B,C,d]`` as the reference computes it; with ``with_index`` also the first arg-max over
    ``p`` (a second pass: the first ``p`` whose product equals the max; NaN columns get ``P - 1``)."""
    weight = sa_weight * sa.unsqueeze(-1)
    if ca is not None:
        weight = weight + ca_weight * ca.unsqueeze(2)
    product = feat.unsqueeze(1) * weight  # [B, C, P, d], fused away
    out = product.amax(2)
    if not with_index:
        return out, None
    positions = feat.shape[1]
    # in index_dtype throughout: an int64 arg-min would be a [B, C, d] temporary 4x the int16 result
    ramp = torch.arange(positions, dtype=index_dtype, device=feat.device).view(1, 1, positions, 1)
    last = torch.full((), positions - 1, dtype=index_dtype, device=feat.device)
    return out, torch.where(product == out.unsqueeze(2), ramp, last).amin(2)


_LOCK = threading.Lock()
_COMPILED: Dict[Callable, Callable] = {}
_SEEN: Dict[Callable, set] = {}  # keys compiled per function
_UNAVAILABLE: Optional[str] = None  # reason, once compiling failed


def unavailable_reason() -> Optional[str]:
    """Why the compiled path is off in this process (None while it works or was not tried)."""
    return _UNAVAILABLE


def available() -> bool:
    """False once a compile failed in this process (reason: :func:`unavailable_reason`)."""
    return _UNAVAILABLE is None


def disable(reason: str) -> None:
    """Turn the compiled path off in this process (a compile failed: ``reason``), logging that once."""
    global _UNAVAILABLE
    if _UNAVAILABLE is None:
        _UNAVAILABLE = reason
        _logger.warning('srdl_timm: fused CPU kernels for the CAR head are off in this process (%s); '
                        "attention_impl='auto' uses the chunked path. Pass attention_impl='compiled' to see "
                        'the error.', reason)


def reset() -> None:
    """Forget compiled kernels and a recorded failure (tests; the on-disk cache stays)."""
    global _UNAVAILABLE
    with _LOCK:
        _COMPILED.clear()
        _SEEN.clear()
        _UNAVAILABLE = None
    torch.compiler.reset()


class ShapeLimitError(RuntimeError):
    """More distinct shapes than :data:`MAX_SHAPES` for one kernel in this process."""


def _run(fn: Callable, key: tuple, *args):
    """Call ``fn`` compiled (Dynamo compiles once per ``key``: shapes, dtypes, flags), the first call of a ``key`` in
    a :func:`~.common.one_time_work` thread."""
    with _LOCK:
        seen = _SEEN.setdefault(fn, set())
        first_use = key not in seen
        if first_use and len(seen) >= MAX_SHAPES:
            raise ShapeLimitError(f'compiled CAR kernel {fn.__name__}: more than MAX_SHAPES={MAX_SHAPES} '
                                  'shapes in one process')
        seen.add(key)
        if fn not in _COMPILED:
            _COMPILED[fn] = torch.compile(fn, dynamic=False, fullgraph=True)
    compiled = _COMPILED[fn]
    # detached: Dynamo guards on requires_grad, and these kernels never record autograd themselves
    args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)

    def call():
        with torch.autocast('cpu', enabled=False), torch.no_grad():
            return compiled(*args)
    return one_time_work(call) if first_use else call()


def _check(t: Tensor) -> Tensor:
    if t.device.type != 'cpu' or t.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"attention_impl='compiled' runs on CPU float tensors, got {t.dtype} on {t.device}; "
                         "use 'auto' (or 'triton' on CUDA)")
    return t.contiguous()


def logits_forward(s: Tensor, e: Tensor, w: Tensor) -> Tensor:
    """Eq. 5 inner sum ``[B, C, P]`` (inputs ``[B,P,d], [C,d], [d]``, one CPU float dtype)."""
    s, e, w = _check(s), _check(e), _check(w)
    return _run(_logits_fwd, shape_key(s, e, w), s, e, w)


def logits_backward(s: Tensor, e: Tensor, w: Tensor, grad: Tensor, need_s: bool, need_e: bool, need_w: bool
                    ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of :func:`logits_forward` w.r.t. ``s, e, w`` (None where not needed)."""
    s, e, w, grad = _check(s), _check(e), _check(w), _check(grad)
    if not (need_s or need_e or need_w):
        return None, None, None
    grads = _run(_logits_bwd, shape_key(s, e, w) + (need_s, need_e or need_w), s, e, w, grad, need_s, need_e or need_w)
    return grads[0], grads[1] if need_e else None, grads[2] if need_w else None


def pool_forward(feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float, ca_weight: float,
                 with_index: bool, index_dtype: torch.dtype = torch.int16) -> Tuple[Tensor, Optional[Tensor]]:
    """Eq. 6 + GMP ``[B, C, d]`` and, with ``with_index``, the first arg-max position ``[B, C, d]``."""
    feat, sa = _check(feat), _check(sa)
    ca = None if ca is None else _check(ca)
    key = shape_key(feat, sa, ca) + (float(sa_weight), float(ca_weight), with_index, index_dtype)
    return _run(_pool_fwd, key, feat, sa, ca, float(sa_weight), float(ca_weight), with_index, index_dtype)


def spatial_attention_logits_compiled(s: Tensor, e: Tensor, w: Tensor) -> Tensor:
    """Eq. 5 inner sum with the compiled kernels, forward and backward (CPU; any float dtype)."""

    def forward(s_: Tensor, e_: Tensor, w_: Tensor) -> Tensor:
        return logits_in_compute_dtype(logits_forward, s_, e_, w_)

    def backward(s_: Tensor, e_: Tensor, w_: Tensor, grad: Tensor, need_s: bool, need_e: bool, need_w: bool):
        return logits_grads_in_compute_dtype(logits_backward, s_, e_, w_, grad, need_s, need_e, need_w)

    return run_spatial_attention_logits(forward, backward, s, e, w)


def attention_max_pool_compiled(feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float,
                                ca_weight: float) -> Tensor:
    """Eq. 6 + GMP with the compiled kernels (CPU); in training the arg-max is kept for the backward."""

    def forward(feat_: Tensor, sa_: Tensor, ca_: Optional[Tensor], a: float, b: float, with_index: bool):
        if not with_index:
            return pool_in_compute_dtype(pool_forward, feat_, sa_, ca_, a, b, False)
        return pool_in_compute_dtype(pool_forward, feat_, sa_, ca_, a, b, True, index_dtype(feat_.shape[1]))

    return run_attention_max_pool(forward, feat, sa, ca, sa_weight, ca_weight)


def attention_max_pool_indexed_compiled(feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float,
                                        ca_weight: float) -> Tuple[Tensor, Tensor]:
    """Eq. 6 + GMP ``[B, C, d]`` and its first arg-max position (no autograd: for a caller's own backward)."""
    out, index = pool_in_compute_dtype(pool_forward, feat, sa, ca, sa_weight, ca_weight, True,
                                       index_dtype(feat.shape[1]))
    assert index is not None
    return out, index
