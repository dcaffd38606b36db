"""Which CAR kernel runs, and what the chunked, compiled and Triton paths share: block planning, compute dtypes.

:func:`select_impl` resolves ``impl`` (``'auto'`` and the explicit choices, see
:mod:`.category_attention`); :func:`resolve_block_elements` / ``_plan`` size the chunked path's blocks;
``_compute_dtype`` / ``_result_dtype`` / ``_up`` give every path the same dtype rules (16-bit inputs
computed in float32, the reference's promoted result dtype); :func:`index_dtype` the saved arg-max's dtype; :func:`lean_autograd_applies` when eqs. 2 and 4 may use their
memory-lean autograd functions.
"""
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ['ATTENTION_IMPLS', 'select_impl', 'DEFAULT_BLOCK_ELEMENTS', 'CUDA_BLOCK_ELEMENTS',
           'resolve_block_elements', 'index_dtype', 'autocast_enabled', 'lean_autograd_applies']

ATTENTION_IMPLS = ('auto', 'reference', 'chunked', 'triton', 'compiled')

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


_SHAPE_LIMIT_WARNED = False


def _shape_limit(error: Exception) -> None:
    """The compiled path saw too many shapes in this process: warn once; the caller uses the chunked path."""
    global _SHAPE_LIMIT_WARNED
    if not _SHAPE_LIMIT_WARNED:
        warnings.warn(f'{error}; new shapes of the CAR kernels use the chunked path from here on.')
    _SHAPE_LIMIT_WARNED = True


def select_impl(impl: str, device: Optional[torch.device] = None) -> str:
    """Resolve ``impl`` (one of :data:`ATTENTION_IMPLS`) to a concrete implementation.

    ``'auto'`` gives the reference under TorchScript, tracing (ONNX export) and ``torch.compile`` (the
    compilers fuse it); in eager mode Triton when ``device`` is CUDA and Triton is importable, else the
    chunked path -- which, on CPU, the eager ops may still replace by ``'compiled'`` once a measurement on
    the actual shapes found it faster (:func:`.compiled_category_attention.auto_choice`; that needs the
    inputs, so this function cannot tell). Explicit choices are returned as given (``'triton'`` and
    ``'compiled'`` are checked where they run).

    Args:
        impl: requested implementation.
        device: device of the inputs; ``None`` is treated as CPU.
    Returns:
        ``'reference'``, ``'chunked'``, ``'triton'`` or ``'compiled'``.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f'Unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}')
    if impl not in ('auto', 'compiled'):
        return impl
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return 'reference'  # ('compiled' too: an eager kernel; the outer compiler fuses the reference itself)
    if impl == 'compiled':
        return impl
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


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type (False for types autocast does not know, e.g. ``meta``)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:
        return False


def lean_autograd_applies(*tensors: Optional[Tensor]) -> bool:
    """Whether a memory-lean custom autograd function may stand in for autograd ops on ``tensors`` (eqs. 2 and 4
    in training): a gradient is needed, the tensors share one dtype, autocast is off on their device (it picks a
    dtype per op), and nothing is traced or compiled (those need the plain ops)."""
    present = [t for t in tensors if t is not None]
    return (_needs_grad(*present) and all(t.dtype == present[0].dtype for t in present)
            and not autocast_enabled(present[0].device)
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling()))


def _buffer(numel: int, like: Tensor) -> Tensor:
    return torch.empty(numel, dtype=like.dtype, device=like.device)


def index_dtype(positions: int) -> torch.dtype:
    """Smallest integer dtype that holds every position index (the saved arg-max is ``B*C*d`` of them)."""
    if positions <= torch.iinfo(torch.int16).max:
        return torch.int16
    if positions <= torch.iinfo(torch.int32).max:
        return torch.int32
    return torch.int64
