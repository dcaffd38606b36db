"""Rules every kernel path of eqs. 4-6 follows: dtypes, block sizes, when a memory-lean autograd function may stand in
for autograd ops, and the thread for one-time work."""
import threading
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..utils import release_free_heap

__all__ = [
    'DEFAULT_BLOCK_ELEMENTS', 'CUDA_BLOCK_ELEMENTS', 'resolve_block_elements', 'plan_blocks',
    'compute_dtype', 'result_dtype', 'upcast', 'index_dtype', 'shape_key', 'logits_in_compute_dtype',
    'logits_grads_in_compute_dtype', 'pool_in_compute_dtype',
    'needs_grad', 'autocast_enabled', 'lean_autograd_applies', 'one_time_work',
]

#: Elements of one block of the ``B x C x P x d`` product per CPU thread in the chunked path: 2**18 fp32 =
#: 1 MiB, which stays in a core's L2 cache.
DEFAULT_BLOCK_ELEMENTS = 1 << 18

#: Block of the chunked path on GPUs (few large launches; one block is 64 MiB in fp32).
CUDA_BLOCK_ELEMENTS = 1 << 24


def resolve_block_elements(block_elements: Optional[int], device: torch.device) -> int:
    """Block size of the chunked path: ``block_elements``, else the default for ``device``."""
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


def plan_blocks(num_classes: int, rows: int, cols: int, block_elements: int) -> Tuple[int, int]:
    """Block shape ``(classes, rows)`` of a ``[classes, rows, cols]`` block of at most ``block_elements``: whole
    rows, or one class with its rows split evenly, so each block's output slice is contiguous."""
    per_class = max(1, rows * cols)
    if per_class <= block_elements:
        return _split(num_classes, block_elements // per_class), rows
    return 1, _split(rows, max(1, block_elements // max(1, cols)))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Chunked and compiled math run in float32 for 16-bit inputs (one rounding at the end, float32
    accumulation)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def result_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """Dtype of the reference's result: type promotion over the given tensors (e.g. bf16 F with fp32 SA)."""
    dtype = None
    for t in tensors:
        if t is not None:
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    assert dtype is not None
    return dtype


def upcast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """``t`` in ``dtype``, contiguous (None stays None)."""
    return None if t is None else t.to(dtype).contiguous()


def logits_in_compute_dtype(kernel: Callable[..., Tensor], s: Tensor, e: Tensor, w: Tensor, *args) -> Tensor:
    """``kernel(s, e, w, *args)`` of eq. 5's inner sum on the inputs in their compute dtype; result in ``s``'s."""
    dtype = compute_dtype(result_dtype(s, e, w))
    return kernel(upcast(s, dtype), upcast(e, dtype), upcast(w, dtype), *args).to(s.dtype)


def logits_grads_in_compute_dtype(kernel: Callable[..., tuple], s: Tensor, e: Tensor, w: Tensor, grad: Tensor,
                                  *args) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """``kernel(s, e, w, grad, *args) -> (ds, de, dw)`` on the inputs in their compute dtype; each gradient in its
    input's dtype (None stays None)."""
    dtype = compute_dtype(result_dtype(s, e, w))
    grads = kernel(upcast(s, dtype), upcast(e, dtype), upcast(w, dtype), upcast(grad, dtype), *args)
    return tuple(None if g is None else g.to(t.dtype) for g, t in zip(grads, (s, e, w)))


def pool_in_compute_dtype(kernel: Callable[..., Tuple[Tensor, Optional[Tensor]]], feat: Tensor, sa: Tensor,
                          ca: Optional[Tensor], *args) -> Tuple[Tensor, Optional[Tensor]]:
    """``kernel(feat, sa, ca, *args) -> (out, index)`` of eq. 6 + GMP on the inputs in their compute dtype; ``out``
    in the reference's result dtype."""
    result = result_dtype(feat, sa, ca)
    dtype = compute_dtype(result)
    out, index = kernel(upcast(feat, dtype), upcast(sa, dtype), upcast(ca, dtype), *args)
    return out.to(result), index


def index_dtype(positions: int) -> torch.dtype:
    """Smallest integer dtype that holds every position index (the saved arg-max is ``B*C*d`` of them)."""
    if positions <= torch.iinfo(torch.int16).max:
        return torch.int16
    if positions <= torch.iinfo(torch.int32).max:
        return torch.int32
    return torch.int64


def shape_key(*tensors: Optional[Tensor]) -> tuple:
    """What a compiled kernel specialises on and a measured ``'auto'`` choice depends on: the tensors' shapes,
    dtypes and inference-tensor-ness, plus the intra-op thread count."""
    return tuple(None if t is None else (tuple(t.shape), t.dtype, t.is_inference()) for t in tensors) + (
        torch.get_num_threads(),)


def needs_grad(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd will record an op on ``tensors`` (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type (False for types autocast does not know, e.g. ``meta``)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:
        return False


def lean_autograd_applies(*tensors: Optional[Tensor]) -> bool:
    """Whether a memory-lean autograd function may replace autograd ops on ``tensors``: a gradient is needed,
    one dtype, no autocast, nothing traced or compiled."""
    present = [t for t in tensors if t is not None]
    return (needs_grad(*present) and all(t.dtype == present[0].dtype for t in present)
            and not autocast_enabled(present[0].device)
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling()))


_ONE_TIME_WORK = threading.local()  # .active: this thread is a one-time-work thread (see one_time_work)


def one_time_work(fn: Callable[[], object]) -> object:
    """Run ``fn`` (a compile) in a short-lived thread with the caller's thread count and grad mode, so its
    allocations do not fragment the main heap; nested calls run inline."""
    if getattr(_ONE_TIME_WORK, 'active', False):
        return fn()
    threads, grad, inference = torch.get_num_threads(), torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    result: Dict[str, object] = {}

    def target():
        _ONE_TIME_WORK.active = True
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                result['value'] = fn()
        except BaseException as error:  # re-raised in the caller's thread
            result['error'] = error

    worker = threading.Thread(target=target, name='srdl-timm-compile', daemon=True)
    worker.start()
    worker.join()
    release_free_heap()
    if 'error' in result:
        raise result['error']
    return result['value']
