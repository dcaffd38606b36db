"""Eqs. 5-6 of the CAR head with the implementation ``impl`` picks, the top layer of :mod:`srdl_timm.ops`:
eq. 5's inner sum ``z[b,c,p] = sum_k w[k] tanh(s[b,p,k] e[c,k])`` (:func:`spatial_attention_logits`) and eq. 6 +
GMP ``f[b,c,k] = max_p F[b,p,k] (a SA[b,c,p] + b CA[b,c,k])`` (:func:`attention_max_pool`), feature maps passed
flattened as ``[B, P, d]``. ``impl`` is one of :data:`ATTENTION_IMPLS`: ``'reference'`` (:mod:`.reference`),
``'chunked'`` (:mod:`.chunked`), ``'compiled'`` (:mod:`.compiled`, CPU), ``'triton'`` (:mod:`.triton_launch`, CUDA)
or ``'auto'`` (:func:`select_impl`: the reference when scripting, tracing or compiling, Triton on CUDA, else
chunked -- replaced on CPU by compiled where a one-time measurement on this machine found it faster,
:func:`auto_choice`). The equations' biases, sigmoids and weights live in ``layers/car.py``."""
import logging
import time
import warnings
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import chunked, compiled, triton_launch
from .common import (
    compute_dtype, index_dtype, needs_grad, one_time_work, resolve_block_elements, result_dtype, shape_key, upcast,
)
from .reference import attention_max_pool_reference, spatial_attention_logits_reference

_logger = logging.getLogger(__name__)

__all__ = [
    'spatial_attention_logits', 'attention_max_pool', 'ATTENTION_IMPLS', 'select_impl', 'auto_choice',
    'auto_decisions', 'reset', 'AUTO_MIN_ELEMENTS', 'AUTO_MEASURE_ELEMENTS', 'AUTO_BUDGET_S',
]

ATTENTION_IMPLS = ('auto', 'reference', 'chunked', 'triton', 'compiled')

# ----------------------------------------------------------------------------------------------------------
# which implementation runs
# ----------------------------------------------------------------------------------------------------------

_TRITON_FAILED = False  # set when a Triton launch failed under impl='auto'; auto then stays on chunked
_SHAPE_LIMIT_WARNED = False


def _auto_triton_failed(error: Exception) -> None:
    """Remember that Triton failed under ``impl='auto'`` (e.g. no compiler for this card) and warn once."""
    global _TRITON_FAILED
    if not _TRITON_FAILED:
        warnings.warn(f'Triton kernels for the CAR head failed ({type(error).__name__}: {error}); '
                      "impl='auto' falls back to the chunked path. Pass impl='triton' to see the error.")
    _TRITON_FAILED = True


def _shape_limit(error: Exception) -> None:
    """The compiled path saw too many shapes in this process: warn once; the caller uses the chunked path."""
    global _SHAPE_LIMIT_WARNED
    if not _SHAPE_LIMIT_WARNED:
        warnings.warn(f'{error}; new shapes of the CAR kernels use the chunked path from here on.')
    _SHAPE_LIMIT_WARNED = True


def select_impl(impl: str, device: Optional[torch.device] = None) -> str:
    """Resolve ``impl`` (one of :data:`ATTENTION_IMPLS`) to a concrete implementation.

    ``'auto'`` gives the reference under TorchScript, tracing (ONNX export) and ``torch.compile`` (the
    compilers fuse it); in eager mode Triton when ``device`` is CUDA and Triton is usable there, else the
    chunked path -- which, on CPU, the eager ops may still replace by ``'compiled'`` once a measurement on
    the actual shapes found it faster (:func:`auto_choice`; that needs the inputs, so this function cannot
    tell). Explicit choices are returned as given (``'triton'`` and ``'compiled'`` are checked where they run).

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
    if (device is not None and device.type == 'cuda' and not _TRITON_FAILED
            and triton_launch.is_available(device)):
        return 'triton'
    return 'chunked'


# ----------------------------------------------------------------------------------------------------------
# 'auto' on CPU: compiled or chunked, measured once per shape / dtype / thread count / grad mode
# ----------------------------------------------------------------------------------------------------------

#: ``'auto'`` only considers the compiled path when the ``B*C*P*d`` product has at least this many elements
#: (2**24; one 448 px image with 80 classes, 14x14 x 2048, is 1.9 x 2**24). Below it the chunked path takes a
#: few ms and the one-time compile and measurement (seconds) cannot pay off in a short run such as a test.
AUTO_MIN_ELEMENTS = 1 << 24

#: Wall time after which :func:`auto_choice` stops adding measurement rounds (one round always runs).
AUTO_BUDGET_S = 0.5

#: Larger products are measured on their first categories only, about this many elements (both paths cost
#: the same per category): the measurement then takes tens of ms per candidate, not seconds.
AUTO_MEASURE_ELEMENTS = 1 << 26

_DECISIONS: Dict[tuple, Tuple[str, Dict[str, float]]] = {}


def auto_decisions() -> Dict[tuple, Tuple[str, Dict[str, float]]]:
    """The choices ``'auto'`` made in this process: ``key -> (impl, {impl: seconds})`` (a copy)."""
    return dict(_DECISIONS)


def reset() -> None:
    """Forget the compiled path's kernels and recorded failure (:func:`.compiled.reset`) and the ``'auto'``
    decisions (tests; Inductor's on-disk cache stays)."""
    compiled.reset()
    _DECISIONS.clear()


def _measured_classes(num_classes: int, per_class: int) -> int:
    """Categories to measure on: all, or the first ones making about :data:`AUTO_MEASURE_ELEMENTS` elements."""
    return max(1, min(num_classes, -(-AUTO_MEASURE_ELEMENTS // max(1, per_class))))


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def auto_choice(op: str, key: tuple, elements: int, candidates: Dict[str, Callable[[], object]],
                repeats: int = 3) -> str:
    """``'compiled'`` or ``'chunked'`` for one call of ``op`` under ``'auto'`` on CPU.

    Small products (under :data:`AUTO_MIN_ELEMENTS`), a process where compiling failed, or an active dispatch
    mode (fake tensors, ``make_fx``) keep the chunked path without measuring. Otherwise, the first time this
    ``key`` (shapes, dtypes, grad mode; the thread count is added here) is seen, the compiled candidate runs
    once untimed (it compiles), then both run in alternation (on the real inputs, or their first categories
    when the product exceeds :data:`AUTO_MEASURE_ELEMENTS`), up to ``repeats`` rounds while the measurement
    has taken less than :data:`AUTO_BUDGET_S` (at large sizes one round decides); the faster by minimum time
    wins and is remembered for the process (:func:`auto_decisions`). The measurement runs in a
    :func:`~.common.one_time_work` thread.

    Args:
        op: name, for the record. key: what the timing depends on besides the thread count (the first entry
            is whether a backward will follow).
        elements: size of the ``B*C*P*d`` product. candidates: ``{'chunked': fn, 'compiled': fn}``, each
            running the whole computation (forward, plus backward when it will be needed) on the real inputs.
    """
    if elements < AUTO_MIN_ELEMENTS or not compiled.available() or torch._C._len_torch_dispatch_stack() > 0:
        return 'chunked'  # (a dispatch mode is active: fake tensors, make_fx, a memory probe -- no compiling)
    key = (op,) + key + (torch.get_num_threads(),)
    decision = _DECISIONS.get(key)
    if decision is not None:
        return decision[0]
    return one_time_work(lambda: _measure(op, key, candidates, repeats))


def _measure(op: str, key: tuple, candidates: Dict[str, Callable[[], object]], repeats: int) -> str:
    """:func:`auto_choice`'s first time for ``key``: compile, time both candidates, remember the faster."""
    try:
        candidates['compiled']()
    except compiled.ShapeLimitError:
        return 'chunked'
    except Exception as error:  # no compiler, compile error: keep the model usable on the chunked path
        message = str(error).strip()
        compiled.disable(f'{type(error).__name__}: {message.splitlines()[0] if message else ""}')
        return 'chunked'
    times = {name: float('inf') for name in candidates}
    start = time.perf_counter()
    for _ in range(repeats):
        for name, fn in candidates.items():
            times[name] = min(times[name], _best_time(fn, 1))
        if time.perf_counter() - start > AUTO_BUDGET_S:
            break
    choice = 'compiled' if times['compiled'] < times['chunked'] else 'chunked'
    _DECISIONS[key] = (choice, times)
    _logger.info('srdl_timm: %s %s -> %s (compiled %.2f ms, chunked %.2f ms)', op, key, choice,
                 1e3 * times['compiled'], 1e3 * times['chunked'])
    return choice


def _auto_logits(s: Tensor, e: Tensor, w: Tensor, block_elements: int) -> str:
    """:func:`auto_choice` for eq. 5's inner sum on these inputs (measuring forward, + backward in training)."""
    grad = needs_grad(s, e, w)
    elements = s.shape[0] * e.shape[0] * s.shape[1] * s.shape[2]
    if elements < AUTO_MIN_ELEMENTS or not compiled.available():
        return 'chunked'
    dtype = compute_dtype(result_dtype(s, e, w))
    classes = _measured_classes(e.shape[0], s.shape[0] * s.shape[1] * s.shape[2])
    s_, e_, w_ = (upcast(t.detach(), dtype) for t in (s, e[:classes], w))
    cot = torch.ones(s.shape[0], classes, s.shape[1], dtype=dtype)

    def run_chunked():
        out = chunked.logits_forward(s_, e_, w_, block_elements)
        if grad:
            chunked.logits_backward(s_, e_, w_, cot, block_elements, True, True, True)
        return out

    def run_compiled():
        out = compiled.logits_forward(s_, e_, w_)
        if grad:
            compiled.logits_backward(s_, e_, w_, cot, True, True, True)
        return out

    return auto_choice('logits', (grad,) + shape_key(s, e, w), elements,
                       {'chunked': run_chunked, 'compiled': run_compiled})


def _auto_pool(feat: Tensor, sa: Tensor, ca: Optional[Tensor], sa_weight: float, ca_weight: float,
               block_elements: int) -> str:
    """:func:`auto_choice` for eq. 6 + GMP (forward; with the arg-max in training -- the backward is shared)."""
    grad = needs_grad(feat, sa, ca)
    elements = feat.shape[0] * sa.shape[1] * feat.shape[1] * feat.shape[2]
    if elements < AUTO_MIN_ELEMENTS or not compiled.available():
        return 'chunked'
    dtype = compute_dtype(result_dtype(feat, sa, ca))
    classes = _measured_classes(sa.shape[1], feat.shape[0] * feat.shape[1] * feat.shape[2])
    f_, sa_ = upcast(feat.detach(), dtype), upcast(sa.detach()[:, :classes], dtype)
    ca_ = None if ca is None else upcast(ca.detach()[:, :classes], dtype)
    indices = index_dtype(feat.shape[1])
    return auto_choice('pool', (grad, sa_weight, ca_weight) + shape_key(feat, sa, ca), elements, {
        'chunked': lambda: chunked.pool_forward(f_, sa_, ca_, sa_weight, ca_weight, block_elements, grad),
        'compiled': lambda: compiled.pool_forward(f_, sa_, ca_, sa_weight, ca_weight, grad, indices),
    })


# ----------------------------------------------------------------------------------------------------------
# the public ops: one eager dispatcher for both
# ----------------------------------------------------------------------------------------------------------

class _Implementations(NamedTuple):
    """One op under each implementation; the arguments are the op's tensors and weights (``*args``), the
    chunked path and the CPU ``'auto'`` measurement take ``block_elements`` after them."""
    reference: Callable[..., Tensor]
    triton: Callable[..., Tensor]
    compiled: Callable[..., Tensor]
    chunked: Callable[..., Tensor]
    auto_cpu: Callable[..., str]


_LOGITS = _Implementations(spatial_attention_logits_reference, triton_launch.spatial_attention_logits_triton,
                           compiled.spatial_attention_logits_compiled, chunked.spatial_attention_logits_chunked,
                           _auto_logits)
_POOL = _Implementations(attention_max_pool_reference, triton_launch.attention_max_pool_triton,
                         compiled.attention_max_pool_compiled, chunked.attention_max_pool_chunked, _auto_pool)


def _run_eager(op: _Implementations, impl: str, block_elements: Optional[int], *args) -> Tensor:
    """``op(*args)`` under :func:`select_impl`'s choice in eager mode. Under ``'auto'``, a Triton failure other
    than out-of-memory (compile/launch: keep the model usable) and the compiled path's shape limit fall back to
    the chunked path, each warned about once."""
    device = args[0].device
    chosen = select_impl(impl, device)
    if chosen == 'reference':
        return op.reference(*args)
    if chosen == 'triton':
        if impl != 'auto':
            return op.triton(*args)
        try:
            return op.triton(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # compile/launch failure: keep the model usable
            _auto_triton_failed(error)
    block_elements = resolve_block_elements(block_elements, device)
    if chosen == 'chunked' and impl == 'auto' and device.type == 'cpu':
        chosen = op.auto_cpu(*args, block_elements)
    if chosen == 'compiled':
        try:
            return op.compiled(*args)
        except compiled.ShapeLimitError as error:
            _shape_limit(error)
    return op.chunked(*args, block_elements)


@torch.fx.wrap
def spatial_attention_logits(
        s: Tensor, e: Tensor, w: Tensor, impl: str = 'auto', block_elements: Optional[int] = None,
) -> Tensor:
    """Eq. 5's inner sum ``sum_k w[k] tanh(s[b,p,k] e[c,k])`` -> ``[B, C, P]`` with the implementation ``impl``
    selects.

    Args:
        s: ``f_sa(F)`` ``[B, P, d]``; e: ``f_w(x_c)`` ``[C, d]``; w: ``f_s``'s weight ``[d]`` (one device).
        impl: one of :data:`ATTENTION_IMPLS`.
        block_elements: block size of the chunked path (elements of the ``B x C x P x d`` product); None
            picks :func:`~.common.resolve_block_elements`'s default.
    """
    if torch.jit.is_scripting():
        return spatial_attention_logits_reference(s, e, w)
    return _spatial_attention_logits_eager(s, e, w, impl, block_elements)


@torch.jit.unused
def _spatial_attention_logits_eager(
        s: Tensor, e: Tensor, w: Tensor, impl: str, block_elements: Optional[int]) -> Tensor:
    return _run_eager(_LOGITS, impl, block_elements, s, e, w)


@torch.fx.wrap
def attention_max_pool(
        feat: Tensor, sa: Optional[Tensor], ca: Optional[Tensor], sa_weight: float = 0.5, ca_weight: float = 0.5,
        impl: str = 'auto', block_elements: Optional[int] = None,
) -> Tensor:
    """Eq. 6 + GMP ``max_p F[b,p,k] (a SA[b,c,p] + b CA[b,c,k])`` -> ``[B, C, d]`` with the implementation
    ``impl`` selects (without SA, the ``O(B*C*d)`` closed form of the reference).

    Args:
        feat: ``[B, P, d]``; sa: ``[B, C, P]`` or None; ca: ``[B, C, d]`` or None.
        sa_weight, ca_weight: eq. 6's weights (0.5 each; 1 for the one left when the other is ablated).
        impl: one of :data:`ATTENTION_IMPLS`.
        block_elements: block size of the chunked path; None picks :func:`~.common.resolve_block_elements`'s
            default.
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
    return _run_eager(_POOL, impl, block_elements, feat, sa, ca, sa_weight, ca_weight)
