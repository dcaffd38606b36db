"""Triton kernels of eqs. 5-6 (``impl='triton'``): availability, launches, the shared autograd functions and the numeric
check. Compiled on CUDA, interpreted on CPU with ``TRITON_INTERPRET=1``; Triton is imported lazily."""
import functools
import importlib.util
import os
import warnings
from types import ModuleType
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .autograd_functions import run_attention_max_pool, run_spatial_attention_logits
from .reference import attention_max_pool_reference, spatial_attention_logits_reference

__all__ = [
    'is_available', 'interpreting', 'load_kernels', 'spatial_attention_logits_triton', 'attention_max_pool_triton',
    'attention_max_pool_indexed_triton',
    'BLOCK_C', 'BLOCK_P', 'BLOCK_K', 'BLOCK_K_BACKWARD', 'FAST_TANH_16BIT', 'check_against_reference', 'passed_check',
    'CHECK_TOLERANCE',
]

#: Tile of the ``C x P x d`` product one program holds (powers of two, as ``tl.arange`` needs). Not tuned on
#: hardware yet; the backward kernels hold more temporaries per element and use a narrower k tile.
BLOCK_C, BLOCK_P, BLOCK_K = 16, 16, 32
BLOCK_K_BACKWARD = 16
_NUM_WARPS = 4

#: Use the hardware tanh (``tanh.approx.f32``, relative error ~2**-11) for fp16/bf16 inputs on NVIDIA GPUs.
#: fp32 and fp64 always use the exact formula.
FAST_TANH_16BIT = True


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec('triton') is not None


@functools.lru_cache(maxsize=None)
def _cuda_capability_ok(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 7


def interpreting() -> bool:
    """Whether Triton runs in interpreter mode (``TRITON_INTERPRET=1``; Triton reads it when it is imported)."""
    return os.environ.get('TRITON_INTERPRET', '0').lower() in ('1', 'true', 'on', 'yes')


def is_available(device: Optional[torch.device] = None) -> bool:
    """Whether the Triton path can run on ``device`` (CUDA: compute capability >= 7.0; CPU: interpreter mode)."""
    if not _triton_importable():
        return False
    if device is None or device.type == 'cpu':
        return interpreting()
    if device.type != 'cuda' or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_capability_ok(index)


def load_kernels() -> ModuleType:
    """Import :mod:`.triton_kernels` (and so Triton, an optional dependency) on first use; compiled or interpreted
    as Triton was started."""
    from . import triton_kernels
    return triton_kernels


def _kernels_for(t: Tensor) -> ModuleType:
    if t.device.type == 'cuda':
        return load_kernels()
    if t.device.type == 'cpu':
        if not interpreting():
            raise RuntimeError(
                "attention impl 'triton' on CPU tensors needs Triton's interpreter: start Python with "
                "TRITON_INTERPRET=1 (slow; for testing the kernels), or use impl='chunked' on CPU")
        return load_kernels()
    raise RuntimeError(f"attention impl 'triton' runs on CUDA (or CPU through the interpreter), not {t.device}")


def _fast_tanh(t: Tensor) -> bool:
    return (FAST_TANH_16BIT and t.dtype in (torch.float16, torch.bfloat16) and t.device.type == 'cuda'
            and torch.version.hip is None and not interpreting())


def _acc_dtype(t: Tensor):
    import triton.language as tl
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _DeviceGuard:
    """``torch.cuda.device(t.device)`` for CUDA tensors (kernels launch on the current device), else nothing."""

    def __init__(self, t: Tensor):
        self._ctx = torch.cuda.device(t.device) if t.device.type == 'cuda' else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        return False


def _logits_fwd(s: Tensor, e: Tensor, w: Tensor) -> Tensor:
    k = _kernels_for(s)
    s, e, w = s.contiguous(), e.contiguous(), w.contiguous()
    batch, positions, channels = s.shape
    num_classes = e.shape[0]
    out = s.new_empty((batch, num_classes, positions))
    if out.numel() == 0:
        return out.zero_()
    grid = (_cdiv(positions, BLOCK_P), _cdiv(num_classes, BLOCK_C), batch)
    with _DeviceGuard(s):
        k.logits_fwd[grid](s, e, w, out, positions, num_classes, channels, ACC=_acc_dtype(s), FAST=_fast_tanh(s),
                           BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P, BLOCK_K=BLOCK_K, num_warps=_NUM_WARPS)
    return out


def _logits_bwd(
        s: Tensor, e: Tensor, w: Tensor, grad: Tensor, need_s: bool, need_e: bool, need_w: bool,
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    k = _kernels_for(s)
    batch, positions, channels = s.shape
    num_classes = e.shape[0]
    acc = torch.float64 if s.dtype == torch.float64 else torch.float32
    grad_s = grad_e = grad_w = None
    with _DeviceGuard(s):
        if need_s or need_w:
            num_pb = _cdiv(positions, BLOCK_P)
            gs = torch.empty_like(s) if need_s else s.new_empty(1)
            gw = torch.empty((batch, num_pb, channels), dtype=acc, device=s.device) if need_w else s.new_empty(1)
            grid = (num_pb, _cdiv(channels, BLOCK_K_BACKWARD), batch)
            k.logits_bwd_s[grid](s, e, w, grad, gs, gw, positions, num_classes, channels, num_pb,
                                 ACC=_acc_dtype(s), FAST=_fast_tanh(s), NEED_S=need_s, NEED_W=need_w,
                                 BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P, BLOCK_K=BLOCK_K_BACKWARD, num_warps=_NUM_WARPS)
            grad_s = gs if need_s else None
            grad_w = gw.sum(dim=(0, 1)).to(w.dtype) if need_w else None
        if need_e:
            ge = torch.empty((batch, num_classes, channels), dtype=acc, device=s.device)
            grid = (_cdiv(num_classes, BLOCK_C), _cdiv(channels, BLOCK_K_BACKWARD), batch)
            k.logits_bwd_e[grid](s, e, w, grad, ge, positions, num_classes, channels, ACC=_acc_dtype(s),
                                 FAST=_fast_tanh(s), BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P, BLOCK_K=BLOCK_K_BACKWARD,
                                 num_warps=_NUM_WARPS)
            grad_e = ge.sum(dim=0).to(e.dtype)
    return grad_s, grad_e, grad_w


def _logits_bwd_or_zeros(
        s: Tensor, e: Tensor, w: Tensor, grad: Tensor, need_s: bool, need_e: bool, need_w: bool,
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    if s.numel() == 0 or e.numel() == 0:
        return (torch.zeros_like(s) if need_s else None, torch.zeros_like(e) if need_e else None,
                torch.zeros_like(w) if need_w else None)
    return _logits_bwd(s, e, w, grad.contiguous(), need_s, need_e, need_w)


@torch.compiler.disable
def spatial_attention_logits_triton(s: Tensor, e: Tensor, w: Tensor) -> Tensor:
    """Eq. 5's inner sum -> ``[B, C, P]`` with the Triton kernels (differentiable)."""
    return run_spatial_attention_logits(_logits_fwd, _logits_bwd_or_zeros, s, e, w)


def _pool_fwd(
        feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float, ca_weight: float, with_index: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    k = _kernels_for(feat)
    feat, sa, ca = feat.contiguous(), sa.contiguous(), ca.contiguous() if ca is not None else None
    batch, positions, channels = feat.shape
    num_classes = sa.shape[1]
    dtype = feat.dtype if ca is None else torch.promote_types(feat.dtype, ca.dtype)
    out = feat.new_empty((batch, num_classes, channels), dtype=torch.promote_types(dtype, sa.dtype))
    index = torch.empty((batch, num_classes, channels), dtype=torch.int32, device=feat.device) \
        if with_index else None
    if out.numel() == 0:
        return out, index
    grid = (_cdiv(channels, BLOCK_K), _cdiv(num_classes, BLOCK_C), batch)
    with _DeviceGuard(feat):
        k.pool_fwd[grid](feat, sa, ca if ca is not None else sa, out, index if index is not None else out,
                         positions, num_classes, channels, float(sa_weight), float(ca_weight),
                         ACC=_acc_dtype(feat), HAS_CA=ca is not None, STORE_INDEX=with_index,
                         BLOCK_C=BLOCK_C, BLOCK_P=BLOCK_P, BLOCK_K=BLOCK_K, num_warps=_NUM_WARPS)
    return out, index


@torch.compiler.disable
def attention_max_pool_triton(
        feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float = 0.5, ca_weight: float = 0.5,
) -> Tensor:
    """Eq. 6 + GMP -> ``[B, C, d]`` with the Triton kernel (differentiable)."""
    return run_attention_max_pool(_pool_fwd, feat, sa, ca, sa_weight, ca_weight)


@torch.compiler.disable
def attention_max_pool_indexed_triton(
        feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float = 0.5, ca_weight: float = 0.5,
) -> Tuple[Tensor, Tensor]:
    """Eq. 6 + GMP ``[B, C, d]`` and its arg-max position with the Triton kernel (no autograd)."""
    out, index = _pool_fwd(feat, sa, ca, sa_weight, ca_weight, True)
    assert index is not None
    return out, index


#: Largest error :func:`passed_check` accepts, relative to the largest reference value, per input dtype (16-bit
#: inputs may use the hardware ``tanh``).
CHECK_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}
_CHECKED: Dict[tuple, bool] = {}


def check_against_reference(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """Largest error of eqs. 5-6 with these kernels, forward and every gradient, relative to the largest value of
    the reference's (in float32, or float64 for float64 inputs, on the same device); the inputs' sizes are no
    multiples of the tiles, so the masked edges are checked too."""
    g = torch.Generator().manual_seed(0)
    sizes = ((2, 37, 45), (19, 45), (45,), (2, 37, 45), (2, 19, 37), (2, 19, 45))  # s, e, w, F, SA, CA
    base = [torch.randn(*size, generator=g).to(device, dtype) for size in sizes]
    base[4], base[5] = base[4].sigmoid(), base[5].sigmoid()
    cotangents = (torch.randn(2, 19, 37, generator=g).to(device), torch.randn(2, 19, 45, generator=g).to(device))
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def run(logits_fn, pool_fn, as_dtype):
        inputs = [t.to(as_dtype).requires_grad_() for t in base]
        outs = (logits_fn(*inputs[:3]), pool_fn(*inputs[3:], 0.5, 0.5))
        loss = sum((o.to(ref_dtype) * c.to(ref_dtype)).sum() for o, c in zip(outs, cotangents))
        return [t.to(ref_dtype) for t in (*outs, *torch.autograd.grad(loss, inputs))]

    got = run(spatial_attention_logits_triton, attention_max_pool_triton, dtype)
    want = run(spatial_attention_logits_reference, attention_max_pool_reference, ref_dtype)
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-6)) for a, b in zip(got, want))


def passed_check(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernels run on ``device`` and :func:`check_against_reference` for ``dtype`` stays within
    :data:`CHECK_TOLERANCE`: checked once per device and dtype in this process, a failure warned about once.
    ``impl='auto'`` uses the kernels only where this is True."""
    index = device.index if device.index is not None or device.type != 'cuda' else torch.cuda.current_device()
    key = (device.type, index, dtype)
    if key not in _CHECKED:
        _CHECKED[key] = False
        if is_available(device) and dtype in CHECK_TOLERANCE:
            try:
                error = check_against_reference(torch.device(device.type, index), dtype)
                problem = f'error {error:.3g} against the reference' if error > CHECK_TOLERANCE[dtype] else None
            except Exception as e:  # noqa: BLE001  (compile/launch failure: keep the model usable)
                problem = f'{type(e).__name__}: {e}'
            _CHECKED[key] = problem is None
            if problem:
                warnings.warn(f'Triton kernels of the CAR head failed their check on {device} ({dtype}; {problem}): '
                              "impl='auto' uses the chunked path. impl='triton' still runs them.")
    return _CHECKED[key]
